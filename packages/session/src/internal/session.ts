import * as Client from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberRef from "effect/FiberRef"
import type * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Request from "effect/Request"
import * as Runtime from "effect/Runtime"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import type * as Stream from "effect/Stream"
import * as SessionError from "../SessionError.js"
import {
  BaseConnection,
  type Command,
  type EngineImpl,
  interruptedError,
  type Isolation,
  sessionErrorsAsSqlError,
  toSqlError,
  type Want,
  type Watched,
  wantOf
} from "./engine.js"
import type { Dialect } from "./driver/types.js"
import type { DestroyReason, PooledConn } from "./pool.js"
import { defaultTracer, makeClient } from "./statement.js"
import { Lock, type Restore } from "./lock.js"
import * as metrics from "./metrics.js"
import { unitSites } from "./sites.js"
import { bindValues, splitStatements } from "./driver/mysql/values.js"
import * as keys from "./keys.js"
import { frameStream, type Target as StreamTarget } from "./stream.js"
import * as Unit from "./unit.js"
import { type Consistency, mergeTokens, type Route, TOKEN_PATTERN, WRITE } from "./tokens.js"

/** @internal */
export interface UnitOptions {
  readonly isolation?: Isolation | undefined
  readonly readOnly?: boolean | undefined
  readonly consistentSnapshot?: boolean | undefined
  readonly lockWaitTimeout?: Duration.DurationInput | undefined
  readonly statementTimeout?: Duration.DurationInput | undefined
  readonly timeout?: Duration.DurationInput | undefined
  readonly propagation?: "nested" | "new" | undefined
  readonly retry?: boolean | Schedule.Schedule<unknown, SessionError.SessionError> | undefined
  readonly name?: string | undefined
  readonly rollbackOnly?: boolean | undefined
  readonly key?: string | undefined
  /** Read-only units of an engine with replicas: where they read (see `Consistency`). */
  readonly consistency?: Consistency | undefined
  /** A causality token the unit must see (a commit made elsewhere). */
  readonly after?: string | undefined
  /** `@sessionfx/testing`'s SessionTest: every unit below runs inside this one (nothing can escape it). */
  readonly containAll?: boolean | undefined
}

/** @internal */
export interface SessionService {
  readonly sql: Client.SqlClient
  readonly connectionId: number
  readonly isolation: Isolation | undefined
  readonly readOnly: boolean
  readonly server: string
  readonly savepoint: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E | SessionError.SessionError, R>
  readonly afterCommit: (effect: Effect.Effect<void>) => Effect.Effect<void, SessionError.SessionClosed>
  readonly setRollbackOnly: Effect.Effect<void>
  readonly isOpen: Effect.Effect<boolean>
}

/** The Context tag of the Session service; set by Session.ts. @internal */
export const SessionTag = Context.GenericTag<SessionService>("@sessionfx/session/Session")

// ---------------------------------------------------------------------------------------------------------------
// options
// ---------------------------------------------------------------------------------------------------------------

/** The largest `innodb_lock_wait_timeout` the server accepts (seconds). */
const MAX_LOCK_WAIT = 1_073_741_824
const ISOLATIONS: ReadonlyArray<string> = ["READ UNCOMMITTED", "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"]

const invalid = (option: string, message: string) =>
  new SessionError.InvalidOption({ option, message: `${option}: ${message}. Nothing was sent to the server` })

/** A duration option in milliseconds (`Infinity` for `Duration.infinity`), or the reason it is not one. */
const durationMs = (option: string, d: Duration.DurationInput): number | SessionError.InvalidOption => {
  let ms: number
  try {
    ms = Duration.toMillis(Duration.decode(d))
  } catch {
    return invalid(
      option,
      `${JSON.stringify(String(d))} is not a duration (e.g. "5 seconds", 5000, Duration.seconds(5))`
    )
  }
  if (Number.isNaN(ms) || ms <= 0) return invalid(option, `must be a positive duration, got ${String(d)}`)
  return ms
}

/** A unit's options checked and in the server's units, before anything is sent. @internal */
export interface Checked {
  readonly lockWaitSeconds: number | undefined
  readonly statementTimeMs: number | undefined
  readonly timeoutMs: number | undefined
}

/** @internal */
export const checkOptions = (options: UnitOptions): Checked | SessionError.InvalidOption => {
  let lockWaitSeconds: number | undefined
  let statementTimeMs: number | undefined
  let timeoutMs: number | undefined
  if (options.lockWaitTimeout !== undefined) {
    const ms = durationMs("lockWaitTimeout", options.lockWaitTimeout)
    if (typeof ms !== "number") return ms
    // the server counts whole seconds, at least 1; Duration.infinity is its maximum
    lockWaitSeconds = Number.isFinite(ms) ? Math.min(MAX_LOCK_WAIT, Math.max(1, Math.ceil(ms / 1000))) : MAX_LOCK_WAIT
  }
  if (options.statementTimeout !== undefined) {
    const ms = durationMs("statementTimeout", options.statementTimeout)
    if (typeof ms !== "number") return ms
    // 0 is the server's "no limit"
    statementTimeMs = Number.isFinite(ms) ? Math.max(1, ms) : 0
  }
  if (options.timeout !== undefined) {
    const ms = durationMs("timeout", options.timeout)
    if (typeof ms !== "number") return ms
    timeoutMs = Number.isFinite(ms) ? ms : undefined
  }
  if (options.isolation !== undefined && !ISOLATIONS.includes(options.isolation)) {
    return invalid("isolation", `must be one of ${ISOLATIONS.join(", ")}, got ${JSON.stringify(options.isolation)}`)
  }
  if (options.propagation !== undefined && options.propagation !== "nested" && options.propagation !== "new") {
    return invalid("propagation", `must be "nested" or "new", got ${JSON.stringify(options.propagation)}`)
  }
  if (options.key !== undefined) {
    const bad = keys.checkKey(options.key)
    if (bad !== undefined) return invalid("key", bad)
  }
  if (
    options.consistency !== undefined &&
    options.consistency !== "read-your-writes" &&
    options.consistency !== "replica" &&
    options.consistency !== "primary"
  ) {
    return invalid(
      "consistency",
      `must be "read-your-writes", "replica" or "primary", got ${JSON.stringify(options.consistency)}`
    )
  }
  if (options.after !== undefined && (typeof options.after !== "string" || !TOKEN_PATTERN.test(options.after))) {
    return invalid(
      "after",
      `expected a causality token (a GTID list such as "0-1-42", from Session.causalityToken), got ${JSON.stringify(options.after)}`
    )
  }
  return { lockWaitSeconds, statementTimeMs, timeoutMs }
}

/** The settings a root unit wants: its options, else the engine's defaults. */
const rootWant = (engine: EngineImpl, options: UnitOptions, checked: Checked): Want => {
  const d = engine.options.defaults
  return wantOf(engine, {
    lockWaitSeconds:
      checked.lockWaitSeconds ??
      (d.lockWaitTimeoutSeconds === undefined
        ? undefined
        : Number.isFinite(d.lockWaitTimeoutSeconds)
          ? Math.min(MAX_LOCK_WAIT, Math.max(1, Math.ceil(d.lockWaitTimeoutSeconds)))
          : MAX_LOCK_WAIT),
    statementTimeMs:
      checked.statementTimeMs ??
      (d.statementTimeoutMs === undefined
        ? undefined
        : Number.isFinite(d.statementTimeoutMs)
          ? d.statementTimeoutMs
          : 0),
    isolation: options.isolation ?? d.isolation
  })
}

/** A nested unit's settings: its own where it sets them, else its parent's. */
const nestedWant = (engine: EngineImpl, parent: Want, checked: Checked): Want => {
  if (checked.lockWaitSeconds === undefined && checked.statementTimeMs === undefined) return parent
  const own = wantOf(engine, {
    lockWaitSeconds: checked.lockWaitSeconds,
    statementTimeMs: checked.statementTimeMs,
    isolation: undefined
  })
  return {
    lockWait: own.lockWait ?? parent.lockWait,
    statementTime: own.statementTime ?? parent.statementTime,
    isolation: parent.isolation
  }
}

/** What a nested unit cannot honour inside `frame`'s transaction. */
const refuseNested = (frame: Frame, options: UnitOptions): SessionError.InvalidOption | undefined => {
  const state = frame.state
  const contained = state.options.containAll === true
  const where = contained
    ? "inside SessionTest every unit runs in the test's transaction; test this unit with a session of its own"
    : 'use propagation: "new" for a unit with a connection and transaction of its own'
  if (!contained && options.retry !== undefined && options.retry !== false) {
    return invalid(
      "retry",
      "a nested unit cannot be retried on its own: a deadlock rolls back the whole transaction. Put retry on the outermost unit, or " +
        where
    )
  }
  if (!contained && (options.after !== undefined || options.consistency !== undefined)) {
    return invalid(
      options.after !== undefined ? "after" : "consistency",
      `a nested unit runs in its enclosing transaction, on the server that one chose; put it on the outermost unit, or ${where}`
    )
  }
  if (!contained && options.key !== undefined) {
    return invalid("key", `a key belongs to the outermost unit, whose COMMIT it records; put it there, or ${where}`)
  }
  if ((options.readOnly === true || options.consistentSnapshot === true) && !state.readOnly) {
    return invalid(
      options.consistentSnapshot === true ? "consistentSnapshot" : "readOnly",
      `the enclosing transaction is read-write and the server cannot make part of it read-only; ${where}`
    )
  }
  if (options.consistentSnapshot === true && state.options.consistentSnapshot !== true) {
    return invalid("consistentSnapshot", `the enclosing transaction has already started without one; ${where}`)
  }
  if (options.isolation !== undefined && options.isolation !== state.isolationName()) {
    return invalid(
      "isolation",
      `the enclosing transaction runs at ${state.isolationName()} and the server cannot change it mid-transaction; ${where}`
    )
  }
  return undefined
}

// ---------------------------------------------------------------------------------------------------------------
// state
// ---------------------------------------------------------------------------------------------------------------

const closedError = () =>
  new SessionError.SessionClosed({
    message:
      "this session has already committed or rolled back; a fiber outlived its unit of work (forkDaemon, a stored reference). Run the code in a unit of work of its own"
  })

const poisonError = () =>
  new SessionError.StatementInterrupted({
    message:
      "a statement of this unit was interrupted after it had been sent and the server finished it anyway (Effect.race / Effect.timeout around a statement inside a unit): its effect is in the transaction, so the unit was rolled back instead of committed; the unit can be retried"
  })

/**
 * The state of one unit of work. It is also the `Session` service itself (methods on the prototype, nothing
 * allocated per unit beyond this object and its root frame).
 *
 * Its lifecycle is one field, `phase` (see `unit.ts`), changed only by `Unit.step` with the outcomes of its commands:
 * open until it ends; aborted on the way when the server ended its transaction in failure or opening it failed
 * (every statement then fails and the unit ends in a rollback); whether a transaction is open on the server follows
 * the status flags the server reports.
 *
 * @internal
 */
export class SessionState implements SessionService {
  phase: Unit.Phase = Unit.initial
  rollbackOnly: boolean
  seq = 0
  readonly root: Frame
  readonly startedAt = Date.now()
  readonly beginSql: string
  /** Set while the unit is watched for `longUnitThreshold`. */
  watched: Watched | undefined = undefined
  private boundClient: Client.SqlClient | undefined

  /**
   * The fiber that opened the session and runs its unit: its statements need no interruption hook (`Frame.exec`).
   * Cleared when the session ends.
   */
  owner: Fiber.RuntimeFiber<any, any> | undefined = undefined

  constructor(
    readonly engine: EngineImpl,
    readonly pc: PooledConn,
    readonly options: UnitOptions,
    want: Want
  ) {
    this.rollbackOnly = options.rollbackOnly === true
    pc.lastGtid = undefined
    this.root = new Frame(engine, this, undefined, want)
    this.beginSql = this.dialect.begin({
      readOnly: options.readOnly === true,
      consistentSnapshot: options.consistentSnapshot === true
    })
  }

  get sql(): Client.SqlClient {
    return this.client()
  }
  /** The statements of the server the unit runs on. */
  get dialect(): Dialect {
    return ((this.pc.owner as EngineImpl | undefined) ?? this.engine).options.driver.dialect
  }
  get connectionId(): number {
    return this.pc.threadId
  }
  /** The name of the server the unit runs on. */
  get server(): string {
    return ((this.pc.owner as EngineImpl | undefined) ?? this.engine).options.name
  }
  get isolation(): Isolation | undefined {
    return this.options.isolation ?? this.engine.options.defaults.isolation
  }
  /** The isolation the transaction runs at, as the server names it. */
  isolationName(): string {
    return this.isolation ?? this.engine.baseline?.isolation ?? "REPEATABLE READ"
  }
  get readOnly(): boolean {
    return this.options.readOnly === true || this.options.consistentSnapshot === true
  }
  savepoint<A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | SessionError.SessionError, R> {
    return Effect.withFiberRuntime((fiber) => savepoint(this.frameOf(fiber), effect, fiber, {}, noChecks))
  }
  afterCommit(effect: Effect.Effect<void>): Effect.Effect<void, SessionError.SessionClosed> {
    return Effect.withFiberRuntime((fiber) => {
      const frame = this.frameOf(fiber)
      if (!this.open || frame.closed) return Effect.fail(closedError())
      ;(frame.hooks ??= []).push(effect)
      return Effect.void
    })
  }
  get setRollbackOnly(): Effect.Effect<void> {
    return Effect.sync(() => {
      this.rollbackOnly = true
    })
  }
  get isOpen(): Effect.Effect<boolean> {
    return Effect.sync(() => this.open)
  }

  /** Feeds a command's outcome to the unit's state machine: the only way its phase changes. */
  apply(event: Unit.Event): void {
    const before = this.phase
    this.phase = Unit.step(before, event)
    if (this.phase.epoch !== before.epoch) metrics.implicitCommits.unsafeUpdate(1, this.engine.unitLabels)
  }

  /** Statements of the unit may still run. */
  get open(): boolean {
    return Unit.isOpen(this.phase)
  }
  /** A transaction of this unit is open on the server, as far as it has said. */
  get begun(): boolean {
    return Unit.serverOpen(this.phase)
  }
  /** Why the unit can only roll back, if it can. */
  get abortError(): SessionError.SessionError | undefined {
    return Unit.abortCause(this.phase) as SessionError.SessionError | undefined
  }

  /** The frame of this session the fiber is in (a savepoint), or the root. */
  frameOf(fiber: Fiber.RuntimeFiber<any, any>): Frame {
    const f = this.engine.current(fiber)
    return f instanceof Frame && f.state === this ? f : this.root
  }

  /** A client bound to this session: used after the session ended, it fails with SessionClosed. */
  client(): Client.SqlClient {
    return (this.boundClient ??= makeClient(
      this.engine,
      (fiber) => this.frameOf(fiber),
      ((effect: Effect.Effect<any, any, any>) =>
        Effect.withFiberRuntime<any, any, any>((fiber) =>
          Effect.mapError(savepoint(this.frameOf(fiber), effect, fiber, {}, noChecks), sessionErrorsAsSqlError)
        )) as Client.SqlClient["withTransaction"],
      this.engine.reactivity
    ))
  }

  /** What the Layer spelling provides. */
  layerContext(frame: Frame): Context.Context<never> {
    return this.contextFrom(Context.empty(), frame)
  }

  /** Runs `effect` inside this session (frame `frame`): Session, the engine's SqlClient and the frame in context. */
  provide<A, E, R>(effect: Effect.Effect<A, E, R>, frame: Frame = this.root): Effect.Effect<A, E, Exclude<R, any>> {
    return Effect.mapInputContext(effect as Effect.Effect<A, E, never>, (ctx: Context.Context<never>) =>
      this.contextFrom(ctx, frame)
    ) as any
  }

  /** `outer` plus this session's services, in one copy. */
  contextFrom<R>(outer: Context.Context<R>, frame: Frame): Context.Context<R> {
    const map = new Map(outer.unsafeMap)
    map.set(SessionTag.key, this)
    map.set(Client.SqlClient.key, this.engine.client)
    map.set(this.engine.currentTag.key, frame)
    return Context.unsafeMake(map) as Context.Context<R>
  }
}

/** A savepoint level of a session (or its root): statements in one frame run one at a time. @internal */
export class Frame extends BaseConnection {
  readonly lock = new Lock()
  closed = false
  /** `afterCommit` hooks registered in this frame; a released savepoint hands them to its parent. */
  hooks: Array<Effect.Effect<void>> | undefined = undefined
  /** A statement of this frame was interrupted after it had taken effect: the frame rolls back at its end. */
  poisoned: SessionError.SessionError | undefined = undefined
  /** Roll this frame back at its end even when it succeeds (a nested `rollbackOnly`). */
  rollbackOnly = false
  constructor(
    engine: EngineImpl,
    readonly state: SessionState,
    readonly parent: Frame | undefined,
    readonly want: Want
  ) {
    super(engine)
  }

  /** Inside SessionTest, `reserve` hands out the test's own connection: nothing escapes its rollback. */
  get containsReserve(): boolean {
    return this.state.options.containAll === true
  }

  check(): SessionError.SessionError | undefined {
    if (this.closed || !this.state.open) return closedError()
    return this.state.abortError
  }

  /** Rows as the server sends them, holding this frame until the stream ends (see `stream.ts`). */
  override executeStream(
    sql: string,
    params: ReadonlyArray<unknown>,
    transformRows: (<A extends object>(row: ReadonlyArray<A>) => ReadonlyArray<A>) | undefined
  ): Stream.Stream<any, SqlError> {
    return frameStream(this, frameTarget(this), sql, params, transformRows)
  }

  /**
   * The command this frame's lock holder runs without an interruption hook, and the fiber that started it (see
   * `exec`). Set only while it runs.
   */
  running: Command | undefined = undefined
  runningFiber: Fiber.RuntimeFiber<any, any> | undefined = undefined

  runStatement(
    method: "query" | "execute",
    sql: string,
    params: ReadonlyArray<unknown>,
    rowsAsArray: boolean
  ): Effect.Effect<unknown, SqlError> {
    return Effect.withFiberRuntime((fiber) => this.exec(fiber, method, sql, params, rowsAsArray, true, undefined))
  }

  /**
   * Stops the command a fiber left behind when it was interrupted while the command ran (see `exec`), and
   * completes when it has ended.
   */
  reclaim(): Effect.Effect<void> {
    return Effect.suspend(() =>
      this.running === undefined ? Effect.void : Effect.zipRight(this.running.cancel(), this.reclaim())
    )
  }

  /**
   * What must precede a statement of this frame, then `next`: the frame's settings (a SET, only when the connection
   * does not have them yet) and the transaction (START TRANSACTION, when none is open). If either fails, the unit
   * is aborted: a unit's statements run inside its transaction or not at all. `track` sees each command in flight.
   */
  prepareThen(next: () => void, fail: (e: SessionError.SessionError) => void, track: (c: Command | undefined) => void) {
    const state = this.state
    const engine = state.engine
    const pc = state.pc
    // stopped by the interruption of the statement it was opening, nothing was opened (the next statement opens
    // it); any other failure aborts the unit (`Unit.step`)
    const openFailed = (e: SessionError.SessionError, cancelled: boolean) => {
      state.apply({ _tag: "OpenFailed", cause: e, cancelled, lost: e._tag === "ConnectionLost" })
      fail(e)
    }
    const begin = () => {
      if (state.begun) return next()
      track(
        engine.controlStatement(pc, state.beginSql, (err, cancelled) => {
          if (err !== undefined) return openFailed(err, cancelled)
          state.apply({ _tag: "Began" })
          if (cancelled) return fail(interruptedError())
          next()
        })
      )
    }
    const set = engine.applySettings(pc, this.want, begin, openFailed)
    if (set !== undefined) track(set)
  }

  /**
   * After a statement failed inside the transaction: did the server end the transaction? The status flags of an
   * OK packet say so; an error packet has none, so ask (`DO 0`, on the error path only). A transaction the server
   * ended in failure (deadlock, lock wait timeout with `innodb_rollback_on_timeout`, …) aborts the unit.
   */
  afterFailure(err: SessionError.SessionError, done: () => void): void {
    const state = this.state
    if (!state.begun) return done()
    const pc = state.pc
    if (pc.broken || pc.closed || err._tag === "ConnectionLost") {
      state.apply({ _tag: "Lost", cause: err })
      return done()
    }
    state.engine.controlStatement(pc, state.dialect.statusProbe, (probeError) => {
      state.apply({ _tag: "Failed", cause: err, transactionEnded: probeError !== undefined || !pc.inTrans })
      done()
    })
  }

  /**
   * One statement in this frame, in one `Effect.async`: wait for the frame (FIFO), check the session is open and
   * not aborted, bind the values (or refuse them before anything is sent), open the transaction if needed, run it,
   * learn from the server's status flags what it did to the transaction, give the frame back.
   *
   * Interruption while it waits leaves the queue: nothing ran. While it runs: KILL QUERY (`Command.cancel`); if the
   * server finished the statement anyway, its effect is in the transaction and the frame is poisoned (it rolls back
   * at its end). The fiber that opened the session (its owner) finding the frame free needs no interruption hook:
   * if it is interrupted while its statement runs, the whole unit is ending, and whatever it does next in this
   * session first stops that statement (`reclaim`).
   */
  exec(
    fiber: Fiber.RuntimeFiber<any, any> | undefined,
    method: "query" | "execute",
    sql: string,
    params: ReadonlyArray<unknown>,
    rowsAsArray: boolean,
    raw: boolean,
    transform: ((rows: ReadonlyArray<any>) => ReadonlyArray<any>) | undefined
  ): Effect.Effect<any, SqlError> {
    const early = this.check()
    if (early !== undefined) return Effect.fail(toSqlError(early))
    if (fiber !== undefined && this.runningFiber === fiber) {
      // interrupted while its statement ran, the fiber now runs another (a finalizer): stop the first one
      return Effect.zipRight(
        this.reclaim(),
        Effect.suspend(() => this.exec(fiber, method, sql, params, rowsAsArray, raw, transform))
      )
    }
    const owner = fiber !== undefined && fiber === this.state.owner
    /** Some statement of this call took effect on the server. */
    let applied = false
    const statement = Effect.async<any, SqlError>((resume) => {
      let command: Command | undefined
      let tracked = false
      /** Interrupted: no further statement of a multi-statement text starts. */
      let stopped = false
      const state = this.state
      const track = (c: Command | undefined) => {
        command = c
        if (tracked) this.running = c !== undefined && !c.settled ? c : undefined
      }
      const finish = (err: SessionError.SessionError | undefined, rows: unknown) => {
        if (tracked) {
          this.running = undefined
          this.runningFiber = undefined
        }
        this.lock.unsafeRelease()
        if (err !== undefined) {
          resume(Effect.fail(toSqlError(err)))
        } else if (raw) {
          resume(Effect.succeed(rows))
        } else {
          const list = Array.isArray(rows) ? rows : []
          resume(Effect.succeed(transform ? transform(list) : list))
        }
      }
      const start = () => {
        const bad = this.check()
        if (bad !== undefined) return finish(bad, undefined)
        // refused before anything is sent: the transaction's opening waits for a statement that runs
        const bound = bindValues(params)
        if (bound instanceof SessionError.BindError) return finish(bound, undefined)
        const fail = (e: SessionError.SessionError) => finish(e, undefined)
        const runOne = (
          text: string,
          values: ReadonlyArray<unknown>,
          how: "query" | "execute",
          next: (rows: unknown) => void
        ) => {
          if (stopped) return fail(interruptedError())
          let main: Command | undefined = undefined
          main = state.engine.startCommand(state.pc, how, text, values, rowsAsArray, (err, rows) => {
            if (err === undefined) {
              state.apply({ _tag: "StatementDone", inTransaction: main?.inTransaction ?? state.pc.inTrans })
              // stopped too late: the server finished it, so its effect is in the transaction
              applied = true
              if (main?.cancelled || stopped) this.poisoned ??= poisonError()
              return next(rows)
            }
            if (main !== undefined && !main.sent) return fail(err)
            // the statement has ended: nothing of the caller's is left to stop (`reclaim`) while sessionfx asks the
            // server whether the transaction survived; the frame stays taken until that answer
            if (tracked) {
              this.running = undefined
              this.runningFiber = undefined
            }
            this.afterFailure(err, () => fail(err))
          })
          track(main)
        }
        const parts = method === "query" ? splitStatements(sql) : undefined
        if (parts === undefined) {
          return this.prepareThen(() => runOne(sql, bound, method, (rows) => finish(undefined, rows)), fail, track)
        }
        // a multi-statement text: each statement on its own, in order, with its own values
        const results: Array<unknown> = []
        let offset = 0
        const step = (k: number): void => {
          if (k === parts.length) return finish(undefined, results)
          const part = parts[k]!
          const values = bound.slice(offset, offset + part.count)
          offset += part.count
          this.prepareThen(
            () =>
              runOne(part.sql, values, values.length > 0 ? "execute" : "query", (rows) => {
                results.push(rows)
                step(k + 1)
              }),
            fail,
            track
          )
        }
        step(0)
      }
      if (owner && !this.lock.locked) {
        this.lock.locked = true
        tracked = true
        this.runningFiber = fiber
        start()
        if (this.running === undefined) this.runningFiber = undefined
        return
      }
      const waiter = this.lock.enqueue(start)
      return Effect.suspend(() => {
        if (waiter !== undefined && !waiter.granted) {
          this.lock.cancel(waiter)
          return Effect.void
        }
        stopped = true
        return command === undefined ? Effect.void : command.cancel()
      })
    })
    if (owner) return statement
    // interrupted after the statement took effect — also when the interruption lands after the server answered,
    // before the fiber went on (nothing left to cancel): its effect is in the transaction, so the frame rolls back
    return Effect.onInterrupt(statement, () =>
      Effect.sync(() => {
        if (applied) this.poisoned ??= poisonError()
      })
    )
  }

  /**
   * A control statement of sessionfx (SAVEPOINT, RELEASE, ROLLBACK TO) while the caller holds the relevant lock,
   * uninterruptible and bounded. With `begin`, the frame's settings and transaction first. A failure aborts the unit.
   */
  control(sql: string, begin: boolean): Effect.Effect<void, SessionError.SessionError> {
    return Effect.async<void, SessionError.SessionError>((resume) => {
      const state = this.state
      const fail = (e: SessionError.SessionError) => {
        state.apply({ _tag: "ControlFailed", cause: e })
        resume(Effect.fail(e))
      }
      const run = () => {
        state.engine.startCommand(
          state.pc,
          "query",
          sql,
          undefined,
          false,
          (err) => (err !== undefined ? fail(err) : resume(Effect.void)),
          state.engine.controlTimeoutMs,
          true
        )
      }
      if (begin) this.prepareThen(run, fail, () => undefined)
      else run()
    })
  }
}

/** Where a stream of a frame runs: the unit's connection, inside its transaction. */
const frameTarget = (frame: Frame): StreamTarget => ({
  engine: frame.state.engine,
  pc: frame.state.pc,
  check: () => frame.check(),
  prepareThen: (next, fail, track) => frame.prepareThen(next, fail, track),
  afterFailure: (err, done) => frame.afterFailure(err, done),
  afterSuccess: (command) => {
    const state = frame.state
    // a statement the server committed on its own (it is not a SELECT): the unit goes on in a new transaction
    state.apply({ _tag: "StatementDone", inTransaction: command.inTransaction ?? state.pc.inTrans })
  }
})

// ---------------------------------------------------------------------------------------------------------------
// ending a unit
// ---------------------------------------------------------------------------------------------------------------

const runHooks = (hooks: ReadonlyArray<Effect.Effect<void>> | undefined) =>
  hooks === undefined || hooks.length === 0
    ? Effect.void
    : Effect.forEach(
        hooks,
        (hook) =>
          Effect.catchAllCause(hook, (cause) =>
            Effect.logWarning("sessionfx: an afterCommit hook failed; the transaction is committed", cause)
          ),
        { discard: true }
      )

/**
 * Ends a session with the exit of its unit of work: COMMIT on success, ROLLBACK otherwise, and gives the connection
 * back (the pool resets it unless the server said it is clean). A failing COMMIT is a typed error. Runs
 * uninterruptibly, except while COMMIT is in flight: interrupted then, the connection is destroyed and the outcome
 * is unknown (and the fiber's exit is the interruption).
 *
 * With `passThrough`, the result is the unit's own outcome (its value, or its failure with classified errors
 * unwrapped) unless ending it failed; without, it is `void` or the ending's failure (the Layer spelling, where the
 * unit's own outcome is already the scope's).
 *
 * @internal
 */
export const finishSession = <A, E>(
  state: SessionState,
  exit: Exit.Exit<A, E>,
  passThrough: boolean
): Effect.Effect<any, any> => Effect.uninterruptible(Effect.suspend(() => finishNow(state, exit, passThrough)))

/** `finishSession` for a caller that is already uninterruptible. */
const finishNow = <A, E>(state: SessionState, exit: Exit.Exit<A, E>, passThrough: boolean): Effect.Effect<any, any> => {
  // a statement the owner left running when it was interrupted: stop it before ROLLBACK
  if (state.root.running !== undefined) {
    return Effect.zipRight(
      state.root.reclaim(),
      Effect.suspend(() => finishNow(state, exit, passThrough))
    )
  }
  const lock = state.root.lock
  if (!lock.locked) {
    lock.locked = true
    return endSession(state, exit, passThrough)
  }
  return Effect.zipRight(
    lock.take,
    Effect.suspend(() => endSession(state, exit, passThrough))
  )
}

/** How the unit's own effect ended, for `Unit.decide`. */
const exitKind = (exit: Exit.Exit<unknown, unknown>): Unit.Exit =>
  Exit.isSuccess(exit)
    ? "success"
    : Cause.isInterruptedOnly(exit.cause)
      ? "interrupt"
      : Cause.isFailure(exit.cause)
        ? "failure"
        : "defect"

const endSession = <A, E>(
  state: SessionState,
  exit: Exit.Exit<A, E>,
  passThrough: boolean
): Effect.Effect<any, any> => {
  const { engine, pc, root } = state
  const gone = pc.broken || pc.closed
  const decision = Unit.decide(state.phase, {
    exit: exitKind(exit),
    poisoned: root.poisoned !== undefined,
    rollbackOnly: state.rollbackOnly,
    connectionGone: gone
  })
  const sendRollback = Unit.rollbackNeeded(state.phase, gone)
  const aborted = state.abortError
  state.apply({ _tag: "End", disposition: decision.disposition })
  state.owner = undefined
  root.closed = true
  if (state.watched !== undefined) {
    engine.units.delete(state.watched)
    engine.checkUnit(state.watched, Date.now(), true)
  }
  // statements queued behind the close now see a closed session and fail with SessionClosed
  root.lock.unsafeRelease()
  metrics.sessionDuration.unsafeUpdate(Date.now() - state.startedAt, engine.unitLabels)
  const outcome: Effect.Effect<any, any> = passThrough ? Exit.mapError(exit, unwrapError) : Effect.void
  switch (decision.disposition) {
    case "rollback": {
      const reason = decision.reason!
      const after =
        reason === "aborted" ? Effect.fail(aborted) : reason === "interrupted" ? Effect.fail(root.poisoned) : outcome
      return rollbackUnit(state, reason, sendRollback, after)
    }
    case "release": {
      const gtid = pc.lastGtid
      endWith(state, false)
      return committed(state, gtid, outcome)
    }
    case "lost":
      endWith(state, false, "broken")
      return Effect.fail(
        new SessionError.ConnectionLost({
          message:
            "the connection was lost before COMMIT was sent: the server rolled the transaction back; the unit can be retried"
        })
      )
    case "commit":
      return commitUnit(state, outcome)
  }
}

/** Gives the unit's connection back (or destroys it) and ends the unit. */
const endWith = (state: SessionState, reset: boolean, reason?: DestroyReason): void => {
  state.engine.release(state.pc, reset, reason)
  state.apply({ _tag: "Ended" })
}

/** ROLLBACK (when something is open on a working connection), then `after`. */
const rollbackUnit = (
  state: SessionState,
  reason: string,
  send: boolean,
  after: Effect.Effect<any, any>
): Effect.Effect<any, any> => {
  const { engine, pc } = state
  metrics.rollbacks.unsafeUpdate(1, engine.unitLabelsWith("cause", reason))
  if (!send) {
    // nothing open (or the connection is gone, and the server rolls back): the pool decides what the connection
    // needs from what the server last said
    endWith(state, false)
    return after
  }
  return Effect.async<any, any>((resume) => {
    // a ROLLBACK that does not answer is cut short: closing the connection rolls back on the server too
    engine.startCommand(
      pc,
      "query",
      state.dialect.rollback,
      undefined,
      false,
      (err) => {
        if (err !== undefined) endWith(state, false, pc.broken ? "broken" : "resetFailed")
        else endWith(state, false)
        resume(after)
      },
      engine.controlTimeoutMs,
      true
    )
  })
}

/** The unit is committed: its causality token flows on in the fiber (before the hooks: they may read what it wrote). */
const committed = (state: SessionState, gtid: string | undefined, outcome: Effect.Effect<any, any>) => {
  const { engine, pc, root } = state
  metrics.commits.unsafeUpdate(1, engine.unitLabels)
  const after = root.hooks === undefined ? outcome : Effect.zipRight(runHooks(root.hooks), outcome)
  return gtid === undefined ? after : Effect.zipRight(engine.observeCommit(pc, gtid), after)
}

/** COMMIT gets what is left of the unit's timeout, else the engine's commitTimeout. */
const commitDeadline = (state: SessionState): number => {
  const timeoutMs =
    state.options.timeout === undefined ? undefined : Duration.toMillis(Duration.decode(state.options.timeout))
  return timeoutMs === undefined || !Number.isFinite(timeoutMs)
    ? state.engine.commitTimeoutMs
    : Math.max(50, state.startedAt + timeoutMs - Date.now())
}

/**
 * COMMIT, and what its outcome means (`Unit.commitResult`): committed; refused (rolled back, a typed failure);
 * no reply (outcome unknown: a keyed unit asks its key). Interrupted while COMMIT is in flight, the connection is
 * destroyed and the outcome is unknown; before it was sent, nothing is committed.
 */
const commitUnit = (state: SessionState, outcome: Effect.Effect<any, any>): Effect.Effect<any, any> => {
  const { engine, pc } = state
  let command: Command | undefined
  const settle = (o: Unit.CommitOutcome): Effect.Effect<any, any> => {
    switch (Unit.commitResult(o)) {
      case "committed": {
        const gtid = pc.lastGtid
        endWith(state, false)
        return committed(state, gtid, outcome)
      }
      case "unknown":
        endWith(state, false, "broken")
        metrics.unknownOutcomes.unsafeUpdate(1, engine.unitLabels)
        return commitUnknown(state, (o as { cause: SessionError.SessionError }).cause, outcome)
      case "failed":
      case "notSent":
        return commitFailed(state, (o as { cause: SessionError.SessionError }).cause)
    }
  }
  const commit = Effect.async<any, any>((resume) => {
    command = engine.startCommand(
      pc,
      "query",
      state.dialect.commit,
      undefined,
      false,
      (e) =>
        resume(
          settle(
            e === undefined
              ? { _tag: "Done" }
              : e._tag === "ConnectionLost" || pc.broken
                ? { _tag: "Lost", cause: e }
                : { _tag: "Failed", cause: e }
          )
        ),
      commitDeadline(state),
      true
    )
    // interrupted while COMMIT is in flight: stop waiting at once; the outcome is unknown
    return Effect.sync(() => {
      if (command !== undefined && !command.settled) {
        metrics.unknownOutcomes.unsafeUpdate(1, engine.unitLabels)
        engine.destroy(pc, "stateUnknown", "interrupted while COMMIT was in flight")
        state.apply({ _tag: "Ended" })
      }
    })
  })
  return Effect.onInterrupt(Effect.interruptible(commit), () =>
    Effect.sync(() => {
      // interrupted before COMMIT was sent: nothing is committed; the pool rolls the connection back
      if (command === undefined) endWith(state, true)
    })
  )
}

const commitUnknown = (state: SessionState, e: SessionError.SessionError, outcome: Effect.Effect<any, any>) =>
  keys.resolveUnknown(
    state,
    e,
    (gtid) => committed(state, gtid, outcome),
    () =>
      new SessionError.CommitOutcomeUnknown({
        cause: e,
        message: `the connection was lost while COMMIT was in flight: the transaction may or may not be committed (${e.message}); it is not retried automatically — give the unit a key (Session.transact(unit, { key })) to make it safe to retry and to ask Session.outcome(key)`
      })
  )

const commitFailed = (state: SessionState, e: SessionError.SessionError) => {
  endWith(state, true)
  metrics.rollbacks.unsafeUpdate(1, state.engine.unitLabelsWith("cause", "commitFailed"))
  return Effect.fail(
    new SessionError.CommitFailed({
      cause: e,
      retryable: SessionError.isRetryable(e),
      errno: (e as { errno?: number }).errno,
      code: (e as { code?: string }).code,
      message: `COMMIT failed and the transaction was rolled back: ${e.message}`
    })
  )
}

// ---------------------------------------------------------------------------------------------------------------
// savepoints (nested units)
// ---------------------------------------------------------------------------------------------------------------

/** @internal */
export interface OpenSavepoint {
  readonly parent: Frame
  readonly child: Frame
  readonly name: string
  /** `SessionState.epoch` when it was made: a savepoint does not outlive an implicit commit. */
  readonly epoch: number
}

const noChecks: Checked = { lockWaitSeconds: undefined, statementTimeMs: undefined, timeoutMs: undefined }

/** Takes the parent frame (siblings wait), then SAVEPOINT. Call inside `uninterruptibleMask`. @internal */
export const openSavepoint = (
  parent: Frame,
  restore: Restore,
  fiber: Fiber.RuntimeFiber<any, any>,
  options: UnitOptions,
  checked: Checked
): Effect.Effect<OpenSavepoint, SessionError.SessionError> =>
  Effect.zipRight(
    // a statement this fiber left running when it was interrupted (see `Frame.exec`): stop it first
    parent.runningFiber === fiber
      ? Effect.zipRight(parent.reclaim(), parent.lock.acquire(restore))
      : parent.lock.acquire(restore),
    Effect.suspend(() => {
      const state = parent.state
      const bad = parent.check()
      if (bad !== undefined) {
        parent.lock.unsafeRelease()
        return Effect.fail(bad)
      }
      const name = `sfx_sp_${++state.seq}`
      const child = new Frame(state.engine, state, parent, nestedWant(state.engine, parent.want, checked))
      child.rollbackOnly = options.rollbackOnly === true
      return parent.control(state.dialect.savepoint(name), true).pipe(
        Effect.tapError(() => Effect.sync(() => parent.lock.unsafeRelease())),
        Effect.map(() => ({ parent, child, name, epoch: state.phase.epoch }))
      )
    })
  )

/**
 * RELEASE on success, ROLLBACK TO on failure (or `rollbackOnly`, or a poisoned frame), then lets siblings in. Hooks
 * of a released savepoint go to its parent; those of a rolled-back one are dropped. A savepoint that an implicit
 * commit (DDL) ended no longer exists: on success there is nothing to release; on failure what it did since is the
 * whole open transaction, which is rolled back.
 *
 * @internal
 */
export const closeSavepoint = (
  sp: OpenSavepoint,
  exit: Exit.Exit<unknown, unknown>
): Effect.Effect<void, SessionError.SessionError> =>
  Effect.uninterruptible(
    Effect.zipRight(
      // a statement the fiber left running in the savepoint when it was interrupted: stop it first
      sp.child.running !== undefined ? Effect.zipRight(sp.child.reclaim(), sp.child.lock.take) : sp.child.lock.take,
      Effect.suspend(() => {
        const child = sp.child
        child.closed = true
        const state = sp.parent.state
        const undo = Exit.isFailure(exit) || child.rollbackOnly || child.poisoned !== undefined
        if (!undo && child.hooks !== undefined) (sp.parent.hooks ??= []).push(...child.hooks)
        let end: Effect.Effect<void, SessionError.SessionError>
        switch (Unit.decideSavepoint(state.phase, { undo, epochAtStart: sp.epoch })) {
          case "aborted":
            end = Exit.isSuccess(exit) ? Effect.fail(state.abortError!) : Effect.void
            break
          case "nothing":
            end = Effect.void
            break
          case "rollbackAll":
            end = Effect.tap(sp.parent.control(state.dialect.rollback, false), () =>
              state.apply({ _tag: "RolledBack" })
            )
            break
          case "rollbackTo":
            end = sp.parent.control(state.dialect.rollbackToSavepoint(sp.name), false)
            break
          case "release":
            end = sp.parent.control(state.dialect.releaseSavepoint(sp.name), false)
        }
        if (child.poisoned !== undefined && Exit.isSuccess(exit))
          end = Effect.zipRight(end, Effect.fail(child.poisoned))
        return Effect.ensuring(
          end,
          Effect.sync(() => {
            child.lock.unsafeRelease()
            sp.parent.lock.unsafeRelease()
          })
        )
      })
    )
  )

/** Unwraps a `SqlError` that carries a classified `SessionError`, so `catchTag("Deadlock")` works outside. @internal */
export const unwrapError = <E>(e: E): E | SessionError.SessionError =>
  e instanceof SqlError && SessionError.isSessionError(e.cause) && !(e.cause instanceof SqlError)
    ? (e.cause as SessionError.SessionError)
    : e

const withTimeout = <A, E, R>(
  body: Effect.Effect<A, E, R>,
  timeoutMs: number | undefined
): Effect.Effect<A, E | SessionError.TransactionTimeout, R> =>
  timeoutMs === undefined
    ? body
    : Effect.timeoutFail(body, {
        duration: timeoutMs,
        onTimeout: () =>
          new SessionError.TransactionTimeout({
            message: `the unit of work ran longer than ${Duration.format(Duration.millis(timeoutMs))} and was rolled back`
          })
      })

/** Runs `effect` in a savepoint of `parent` (a nested unit with its options). @internal */
export const savepoint = <A, E, R>(
  parent: Frame,
  effect: Effect.Effect<A, E, R>,
  fiber: Fiber.RuntimeFiber<any, any>,
  options: UnitOptions,
  checked: Checked
): Effect.Effect<A, E | SessionError.SessionError, R> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(openSavepoint(parent, restore, fiber, options, checked), (sp) => {
      const inner = options.key === undefined ? effect : Effect.zipRight(recordKey(options.key), effect)
      const body: Effect.Effect<A, E | SessionError.SessionError, R> = Effect.locally(
        parent.state.provide(inner, sp.child),
        parent.engine.currentRef,
        sp.child
      )
      return Effect.flatMap(Effect.exit(restore(withTimeout(body, checked.timeoutMs))), (exit) =>
        Effect.zipRight(closeSavepoint(sp, exit), exit)
      )
    })
  )

// ---------------------------------------------------------------------------------------------------------------
// units
// ---------------------------------------------------------------------------------------------------------------

/** The frame of `engine` in the fiber's context, open or ended. */
const frameIn = (engine: EngineImpl, fiber: Fiber.RuntimeFiber<any, any>): Frame | undefined => {
  const f = engine.current(fiber)
  return f instanceof Frame ? f : undefined
}

/** The first statement of a keyed unit: its key, in its transaction (see `keys.ts`). */
const recordKey = (key: string): Effect.Effect<void, SessionError.SessionError> =>
  Effect.withFiberRuntime((fiber) => {
    const state = fiber.currentContext.unsafeMap.get(SessionTag.key) as SessionState
    return Effect.asVoid(
      Effect.mapError(
        state.frameOf(fiber).exec(fiber, "execute", keys.sql.insert, [key], false, true, undefined),
        (e) => keys.recordError(key, unwrapError(e) as SessionError.SessionError)
      )
    )
  })

/** @internal */
export const defaultRetry: Schedule.Schedule<unknown, SessionError.SessionError> = Schedule.exponential(
  "10 millis",
  2
).pipe(
  Schedule.either(Schedule.spaced("1 second")),
  Schedule.jittered,
  Schedule.intersect(Schedule.recurs(5)),
  Schedule.asVoid
) as any

/**
 * Requests (`Effect.request`, `SqlResolver`) made inside a unit run inside it: a batch never gathers requests of
 * two units, and never runs outside the unit's transaction.
 */
const containRequests = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.flatMap(Effect.step(effect), (step: any) =>
    step._op === "Blocked"
      ? Effect.zipRight(Effect.runRequestBlock(step.effect_instruction_i0), containRequests(step.effect_instruction_i1))
      : step
  )

/** Frames of sessionfx and Effect themselves: the long-unit warning shows the user's code. */
const OWN_FRAME = /[\\/](?:session[\\/](?:src|dist)|effect[\\/](?:src|dist)|node:internal)[\\/]|\(node:/

/**
 * Where a unit is opened, for the long-unit warning: the caller's stack when `Session.transact` / `Session.layer`
 * is called (the unit's effect runs later, from Effect's run loop), formatted only if it is ever needed.
 *
 * @internal
 */
export const captureSite = (label: string, caller: (...args: Array<any>) => unknown): (() => string) => {
  if (!unitSites.capture) {
    return () =>
      `${label} (set the Engine option longUnitThreshold to also record where units are opened; give the unit a name to tell it apart)`
  }
  const site: { stack?: string } = {}
  // a short stack from the caller of Session.transact / Session.layer: a capture costs microseconds per unit
  const limit = Error.stackTraceLimit
  Error.stackTraceLimit = 4
  Error.captureStackTrace(site, caller)
  Error.stackTraceLimit = limit
  return () => {
    const frames = (site.stack ?? "").split("\n").slice(1)
    const own = frames.filter((line) => !OWN_FRAME.test(line))
    return `${label} opened at:\n${(own.length > 0 ? own : frames).join("\n")}`
  }
}

const watch = (state: SessionState, fiber: Fiber.RuntimeFiber<any, any>, site: () => string): void => {
  const engine = state.engine
  if (engine.longUnitThresholdMs <= 0) return
  const w: Watched = {
    startedAt: state.startedAt,
    warned: false,
    describe: site,
    log: (message) => {
      const runtime = Runtime.make({
        context: fiber.currentContext,
        fiberRefs: fiber.getFiberRefs(),
        runtimeFlags: Runtime.defaultRuntimeFlags
      })
      Runtime.runFork(runtime)(Effect.logWarning(message))
    }
  }
  state.watched = w
  engine.units.add(w)
}

const newSession = (engine: EngineImpl, pc: PooledConn, options: UnitOptions, checked: Checked): SessionState =>
  new SessionState(engine, pc, options, rootWant(engine, options, checked))

/** Where a root unit may run: decided by the engine's topology (read-only units may go to a replica). */
const routeOf = (engine: EngineImpl, options: UnitOptions, fiber: Fiber.RuntimeFiber<any, any>): Route => {
  if (engine.topology === undefined) return WRITE
  const readOnly = options.readOnly === true || options.consistentSnapshot === true
  return {
    readOnly,
    consistency: options.consistency ?? "read-your-writes",
    // replicas: only read-only units can run anywhere but the primary; nodes: every unit may land on a node that
    // has not applied the fiber's commits yet
    token:
      readOnly || engine.topology.multiPrimary
        ? mergeTokens(fiber.getFiberRef(engine.tokenRef), options.after)
        : undefined
  }
}

const runOnce = <A, E, R>(
  engine: EngineImpl,
  options: UnitOptions,
  checked: Checked,
  effect: Effect.Effect<A, E, R>,
  site: () => string,
  route: Route
): Effect.Effect<A, E | SessionError.SessionError, R> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(engine.borrow(restore, route), (pc) =>
      Effect.withFiberRuntime<A, E | SessionError.SessionError, R>((fiber) => {
        const state = newSession(engine, pc, options, checked)
        state.owner = fiber
        watch(state, fiber, site)
        let body: Effect.Effect<A, E | SessionError.SessionError, R> = effect
        if (options.key !== undefined) body = Effect.zipRight(recordKey(options.key), body) as typeof body
        if (checked.timeoutMs !== undefined) {
          // `timeout` runs the body on a child fiber (a race with the clock): that fiber is the unit's owner, so its
          // statements keep the fast path (an interrupted owner's statement is stopped by `finishNow`'s reclaim)
          const inner = body
          body = withTimeout(
            Effect.withFiberRuntime<A, E | SessionError.SessionError, R>((child) => {
              state.owner = child
              return inner
            }),
            checked.timeoutMs
          )
        }
        body = containRequests(body)
        if (fiber.getFiberRef(FiberRef.currentRequestCacheEnabled)) {
          // reads cached inside the unit live and die with it
          const inner = body
          body = Effect.flatMap(Request.makeCache({ capacity: 65_536, timeToLive: "60 seconds" }), (cache) =>
            Effect.withRequestCache(inner, cache)
          )
        }
        // what `Effect.locally(currentContext)` does, without its acquire/use/release: we are uninterruptible here,
        // and both exits below put the outer context back before anything else runs
        const f = fiber as unknown as { setFiberRef: <X>(ref: FiberRef.FiberRef<X>, value: X) => void }
        const outer = fiber.getFiberRef(FiberRef.currentContext)
        const outerRef = fiber.getFiberRef(engine.currentRef)
        f.setFiberRef(FiberRef.currentContext, state.contextFrom(outer, state.root))
        f.setFiberRef(engine.currentRef, state.root)
        return Effect.matchCauseEffect(restore(body), {
          onFailure: (cause) => {
            f.setFiberRef(FiberRef.currentContext, outer)
            f.setFiberRef(engine.currentRef, outerRef)
            return finishNow(state, Exit.failCause(cause), true)
          },
          onSuccess: (a) => {
            f.setFiberRef(FiberRef.currentContext, outer)
            f.setFiberRef(engine.currentRef, outerRef)
            return finishNow(state, Exit.succeed(a), true)
          }
        })
      })
    )
  )

const outcomeOf = (exit: Exit.Exit<unknown, unknown>): string =>
  Exit.isSuccess(exit)
    ? "commit"
    : Exit.isInterrupted(exit)
      ? "interrupted"
      : Cause.isFailure(exit.cause)
        ? `rollback:${(Option.getOrUndefined(Cause.failureOption(exit.cause)) as { _tag?: unknown } | undefined)?._tag ?? "failure"}`
        : "rollback:defect"

/** The unit of work as a combinator: nested (savepoint) inside an open session, else a session of its own. @internal */
export const transact = <A, E, R>(
  engine: EngineImpl,
  effect: Effect.Effect<A, E, R>,
  options: UnitOptions,
  site: () => string = () => `${options.name ?? "a unit of work"} (sql.withTransaction)`
): Effect.Effect<A, E | SessionError.SessionError, R> =>
  Effect.withFiberRuntime((fiber) => {
    const checked = checkOptions(options)
    if (checked instanceof SessionError.InvalidOption) return Effect.fail(checked)
    const frame = frameIn(engine, fiber)
    if (frame !== undefined) {
      const contained = frame.state.options.containAll === true
      if (options.propagation !== "new" || contained) {
        // a fiber whose unit has ended never starts a fresh one by accident
        if (frame.closed || !frame.state.open) return Effect.fail(closedError())
        const refused = refuseNested(frame, options)
        if (refused !== undefined) return Effect.fail(refused)
        return Effect.mapError(savepoint(frame, effect, fiber, options, checked), unwrapError)
      }
    }
    let attempts = 1
    const retrying = options.retry !== undefined && options.retry !== false
    // a span only when a tracer that exports it is installed (a unit's `name` alone does not open one: measured
    // about 8 % of a transfer's CPU in the ledger, for a span nothing reads)
    const traced = fiber.currentTracer !== defaultTracer
    const route = routeOf(engine, options, fiber)
    const first = runOnce(engine, options, checked, effect, site, route)
    // the retry machinery is built only after a first retryable failure: the common path pays nothing for it
    const unit = retrying
      ? Effect.catchIf(first, SessionError.isRetryable, () =>
          Effect.retry(
            Effect.suspend(() => {
              // every attempt after the first is a retry
              attempts++
              metrics.retries.unsafeUpdate(1, engine.unitLabels)
              return runOnce(engine, options, checked, effect, site, route)
            }),
            {
              schedule: (options.retry === true ? defaultRetry : options.retry) as Schedule.Schedule<unknown, unknown>,
              while: SessionError.isRetryable
            }
          )
        )
      : first
    // spans only when a tracer that exports them is installed
    if (!traced) return unit
    return Effect.useSpan(
      options.name ?? "sql.session",
      {
        kind: "client",
        captureStackTrace: false,
        attributes: {
          "db.isolation": options.isolation ?? engine.options.defaults.isolation ?? "server default",
          "db.read_only": options.readOnly === true || options.consistentSnapshot === true
        }
      },
      (span) =>
        Effect.onExit(Effect.withParentSpan(unit, span), (exit) =>
          Effect.sync(() => {
            span.attribute("sql.session.attempts", attempts)
            span.attribute("sql.session.outcome", outcomeOf(exit))
          })
        )
    )
  })

/** The Layer spelling: acquire on build, commit or roll back with the scope's exit. @internal */
export const scopedSession = (
  engine: EngineImpl,
  options: UnitOptions,
  site: () => string
): Effect.Effect<Context.Context<never>, SessionError.SessionError, Scope.Scope> =>
  Effect.withFiberRuntime((fiber) => {
    const checked = checkOptions(options)
    if (checked instanceof SessionError.InvalidOption) return Effect.fail(checked)
    if (options.retry !== undefined && options.retry !== false) {
      return Effect.fail(
        invalid("retry", "the Layer spelling cannot re-run the program it provides; use Session.transact")
      )
    }
    if (options.timeout !== undefined) {
      return Effect.fail(
        invalid(
          "timeout",
          "the Layer spelling cannot bound the program it provides; use Session.transact(program, { timeout })"
        )
      )
    }
    const frame = frameIn(engine, fiber)
    if (frame !== undefined && (options.propagation !== "new" || frame.state.options.containAll === true)) {
      if (frame.closed || !frame.state.open) return Effect.fail(closedError())
      const refused = refuseNested(frame, options)
      if (refused !== undefined) return Effect.fail(refused)
      return Effect.uninterruptibleMask((restore) =>
        Effect.flatMap(openSavepoint(frame, restore, fiber, options, checked), (sp) =>
          Effect.as(
            Effect.zipRight(
              // a failed RELEASE must reach the caller as a typed error: the scope's close carries it as a failure
              Effect.addFinalizer((exit) => closeSavepoint(sp, exit) as Effect.Effect<void>),
              Effect.locallyScoped(engine.currentRef, sp.child as BaseConnection | undefined)
            ),
            sp.parent.state.layerContext(sp.child)
          )
        )
      )
    }
    return Effect.uninterruptibleMask((restore) =>
      Effect.flatMap(engine.borrow(restore, routeOf(engine, options, fiber)), (pc) => {
        const state = newSession(engine, pc, options, checked)
        state.owner = fiber
        watch(state, fiber, site)
        const opened = Effect.as(
          Effect.zipRight(
            // a failed COMMIT must reach the caller as a typed error: the scope's close carries it as a failure
            Effect.addFinalizer((exit) => finishSession(state, exit, false) as Effect.Effect<void>),
            Effect.locallyScoped(engine.currentRef, state.root as BaseConnection | undefined)
          ),
          state.layerContext(state.root)
        )
        return options.key === undefined ? opened : Effect.zipLeft(opened, state.provide(recordKey(options.key)))
      })
    )
  })
