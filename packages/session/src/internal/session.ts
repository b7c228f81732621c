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
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as SessionError from "../SessionError.js"
import {
  badBindValue,
  BaseConnection,
  type Command,
  type EngineImpl,
  type Isolation,
  sessionErrorsAsSqlError,
  toSqlError
} from "./engine.js"
import type { PooledConn } from "./pool.js"
import { defaultTracer, makeClient } from "./statement.js"
import { Lock, type Restore } from "./lock.js"
import * as metrics from "./metrics.js"

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
}

/** @internal */
export interface SessionService {
  readonly sql: Client.SqlClient
  readonly connectionId: number
  readonly isolation: Isolation | undefined
  readonly readOnly: boolean
  readonly savepoint: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E | SessionError.SessionError, R>
  readonly afterCommit: (effect: Effect.Effect<void>) => Effect.Effect<void>
  readonly setRollbackOnly: Effect.Effect<void>
  readonly isOpen: Effect.Effect<boolean>
}

/** The Context tag of the Session service; set by Session.ts. @internal */
export const SessionTag = Context.GenericTag<SessionService>("@sessionfx/session/Session")

const abortsTransaction = (e: SessionError.SessionError) =>
  e._tag === "Deadlock" || e._tag === "ConnectionLost" || e._tag === "SerializationFailure"

/**
 * The state of one unit of work. It is also the `Session` service itself (methods on the prototype, nothing
 * allocated per unit beyond this object and its root frame).
 *
 * @internal
 */
export class SessionState implements SessionService {
  open = true
  aborted: SessionError.SessionError | undefined = undefined
  rollbackOnly: boolean
  hooks: Array<Effect.Effect<void>> | undefined = undefined
  seq = 0
  readonly root: Frame
  readonly startedAt = Date.now()
  private boundClient: Client.SqlClient | undefined

  /**
   * The transaction starts with the session's first statement: START TRANSACTION travels in the same round trip
   * (a multi-statement text query), and a unit that ran no statement never costs a BEGIN or a COMMIT.
   */
  begun = false

  /**
   * The fiber that opened the session and runs its unit: its statements need no interruption hook (`Frame.exec`).
   * Cleared when the session ends.
   */
  owner: Fiber.RuntimeFiber<any, any> | undefined = undefined

  constructor(
    readonly engine: EngineImpl,
    readonly pc: PooledConn,
    readonly options: UnitOptions,
    readonly beginText: string,
    readonly beginCount: number
  ) {
    this.rollbackOnly = options.rollbackOnly === true
    this.root = new Frame(engine, this, undefined)
  }

  /** Built on first use: most units use the SqlClient from the context (the engine's, following the fiber). */
  get sql(): Client.SqlClient {
    return this.client()
  }
  get connectionId(): number {
    return this.pc.threadId
  }
  get isolation(): Isolation | undefined {
    return this.options.isolation ?? this.engine.options.defaults.isolation
  }
  get readOnly(): boolean {
    return this.options.readOnly === true || this.options.consistentSnapshot === true
  }
  savepoint<A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | SessionError.SessionError, R> {
    return Effect.withFiberRuntime((fiber) => savepoint(this.frameOf(fiber), effect, fiber))
  }
  afterCommit(effect: Effect.Effect<void>): Effect.Effect<void> {
    return Effect.suspend(() => {
      if (!this.open) return Effect.dieMessage("afterCommit called after the session ended")
      ;(this.hooks ??= []).push(effect)
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

  /** The statements that open the transaction, the first time they are asked for; afterwards `undefined`. */
  takeBegin(): string | undefined {
    if (this.begun) return undefined
    this.begun = true
    return this.beginText
  }

  /** The frame of this session the fiber is in (a savepoint), or the root. */
  frameOf(fiber: Fiber.RuntimeFiber<any, any>): Frame {
    const f = fiber.currentContext.unsafeMap.get(this.engine.currentTag.key)
    return f instanceof Frame && f.state === this ? f : this.root
  }

  /** A client bound to this session: used after the session ended, it fails with SessionClosed. */
  client(): Client.SqlClient {
    return (this.boundClient ??= makeClient(
      this.engine,
      (fiber) => this.frameOf(fiber),
      ((effect: Effect.Effect<any, any, any>) =>
        Effect.withFiberRuntime<any, any, any>((fiber) =>
          Effect.mapError(savepoint(this.frameOf(fiber), effect, fiber), sessionErrorsAsSqlError)
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

const countPlaceholders = (sql: string): number => {
  let n = 0
  for (let i = sql.indexOf("?"); i !== -1; i = sql.indexOf("?", i + 1)) n++
  return n
}

const interruptedError = () =>
  new SqlError({ message: "the statement was stopped before it ran: the fiber that issued it was interrupted" })

const closedError = () =>
  new SessionError.SessionClosed({
    message:
      "this session has already committed or rolled back; a fiber outlived its unit of work (forkDaemon, a stored reference). Run the code in a unit of work of its own"
  })

/** A savepoint level of a session: statements in one frame run one at a time. @internal */
export class Frame extends BaseConnection {
  readonly lock = new Lock()
  closed = false
  constructor(
    engine: EngineImpl,
    readonly state: SessionState,
    readonly parent: Frame | undefined
  ) {
    super(engine)
  }

  private check(): SessionError.SessionError | undefined {
    if (this.closed || !this.state.open) return closedError()
    return this.state.aborted
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
   * One statement in this frame, in one `Effect.async`: wait for the frame (FIFO), check the session is open and
   * not aborted, run it, give the frame back from the driver's callback. Interruption while it waits leaves the
   * queue; while it runs, KILL QUERY (`Command.cancel`).
   *
   * The fiber that opened the session (its owner) finding the frame free needs no interruption hook: if it is
   * interrupted while its statement runs, whatever it does next in this session — end it (`finishSession`), end a
   * savepoint, open one, run another statement — first stops that statement (`reclaim`), since a fiber that runs
   * something new has given up on what it ran before. `Effect.async` with a canceler costs an `onInterrupt` frame
   * per statement; this keeps it off the common path. Other fibers (forked in the unit, `Effect.timeout`, racing)
   * and waiting statements keep the canceler.
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
    return Effect.async<any, SqlError>((resume) => {
      let command: Command | undefined
      let tracked = false
      const state = this.state
      const onDone = (err: SessionError.SessionError | undefined, result: unknown, skip: number) => {
        if (tracked) {
          this.running = undefined
          this.runningFiber = undefined
        }
        this.lock.unsafeRelease()
        // drop the results of the transaction's opening statements; keep a multi-statement's own results
        const rest = skip > 0 && Array.isArray(result) ? result.slice(skip) : undefined
        const rows = rest === undefined ? result : rest.length === 1 ? rest[0] : rest
        if (err !== undefined) {
          if (abortsTransaction(err) && state.aborted === undefined) state.aborted = err
          resume(Effect.fail(toSqlError(err)))
        } else if (raw) {
          resume(Effect.succeed(rows))
        } else {
          const list = Array.isArray(rows) ? rows : []
          resume(Effect.succeed(transform ? transform(list) : list))
        }
      }
      const run = (
        how: "query" | "execute",
        text: string,
        values: ReadonlyArray<unknown> | undefined,
        skip: number
      ) => {
        command = this.engine.startCommand(state.pc, how, text, values, rowsAsArray, (err, rows) =>
          onDone(err, rows, skip)
        )
        if (tracked) this.running = command !== undefined && !command.settled ? command : undefined
      }
      const refuse = (error: SqlError) => {
        this.lock.unsafeRelease()
        resume(Effect.fail(error))
      }
      const start = () => {
        const bad = this.check()
        if (bad !== undefined) return refuse(toSqlError(bad))
        // refused before the transaction's opening statements are taken: they must travel with a statement that runs
        const refused = badBindValue(params)
        if (refused !== undefined) return refuse(new SqlError({ cause: refused, message: refused.message }))
        const begin = state.takeBegin()
        if (begin === undefined) return run(method, sql, params, 0)
        if (countPlaceholders(sql) === params.length) return run("query", `${begin};\n${sql}`, params, state.beginCount)
        // a literal "?" in the text: the text protocol's client-side formatting would misplace the values
        const first = this.engine.startCommand(state.pc, "query", begin, undefined, false, (err) => {
          if (err !== undefined) return onDone(err, undefined, 0)
          if (first!.cancelled) return onDone(interruptedError(), undefined, 0)
          run(method, sql, params, 0)
        })
        command = first
        if (tracked) this.running = first !== undefined && !first.settled ? first : this.running
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
        return command === undefined ? Effect.void : command.cancel()
      })
    })
  }

  /** Runs a control statement (SAVEPOINT, COMMIT, …) while the caller already holds the relevant lock. */
  control(sql: string): Effect.Effect<void, SessionError.SessionError> {
    const begin = this.state.takeBegin()
    const text = begin === undefined ? sql : `${begin};\n${sql}`
    return Effect.asVoid(this.engine.run(this.state.pc, "query", text, undefined, false, false))
  }
}

const seconds = (d: Duration.DurationInput) => Duration.toMillis(Duration.decode(d)) / 1000

/** The statements that open a transaction with the requested characteristics, in one round trip. @internal */
export const beginSql = (engine: EngineImpl, options: UnitOptions): { sql: string; count: number; dirty: boolean } => {
  const defaults = engine.options.defaults
  const parts: Array<string> = []
  const vars: Array<string> = []
  const lockWait = options.lockWaitTimeout !== undefined ? seconds(options.lockWaitTimeout) : undefined
  const lw = lockWait ?? defaults.lockWaitTimeoutSeconds
  if (lw !== undefined) vars.push(`innodb_lock_wait_timeout = ${Math.max(1, Math.ceil(lw))}`)
  const stMs =
    options.statementTimeout !== undefined
      ? Duration.toMillis(Duration.decode(options.statementTimeout))
      : defaults.statementTimeoutMs
  if (stMs !== undefined) {
    vars.push(
      engine.flavor === "mariadb"
        ? `max_statement_time = ${(stMs / 1000).toFixed(3)}`
        : `max_execution_time = ${Math.max(1, Math.round(stMs))}`
    )
  }
  if (vars.length > 0) parts.push(`SET SESSION ${vars.join(", ")}`)
  const isolation = options.isolation ?? defaults.isolation
  if (isolation !== undefined) parts.push(`SET TRANSACTION ISOLATION LEVEL ${isolation}`)
  const chars: Array<string> = []
  if (options.consistentSnapshot) chars.push("WITH CONSISTENT SNAPSHOT")
  if (options.readOnly || options.consistentSnapshot) chars.push("READ ONLY")
  parts.push(chars.length > 0 ? `START TRANSACTION ${chars.join(", ")}` : "START TRANSACTION")
  return { sql: parts.join("; "), count: parts.length, dirty: vars.length > 0 }
}

/**
 * Borrows a connection and opens the transaction. Call it inside `uninterruptibleMask`: waiting (through `restore`)
 * is interruptible, and once it has a connection no interruption can lose it.
 *
 * @internal
 */
export const openSession = (
  engine: EngineImpl,
  options: UnitOptions,
  restore: Restore
): Effect.Effect<SessionState, SessionError.SessionError> =>
  Effect.map(engine.borrow(restore), (pc) => newSession(engine, pc, options))

/** The opening statements of a unit that sets none of its own: the engine's defaults, built once per engine. */
const defaultBegins = new WeakMap<EngineImpl, ReturnType<typeof beginSql>>()

const beginOf = (engine: EngineImpl, options: UnitOptions): ReturnType<typeof beginSql> => {
  if (
    options.isolation !== undefined ||
    options.readOnly !== undefined ||
    options.consistentSnapshot !== undefined ||
    options.lockWaitTimeout !== undefined ||
    options.statementTimeout !== undefined
  ) {
    return beginSql(engine, options)
  }
  let begin = defaultBegins.get(engine)
  if (begin === undefined) {
    begin = beginSql(engine, options)
    defaultBegins.set(engine, begin)
  }
  return begin
}

const newSession = (engine: EngineImpl, pc: PooledConn, options: UnitOptions): SessionState => {
  const begin = beginOf(engine, options)
  if (begin.dirty) pc.dirty = true
  return new SessionState(engine, pc, options, begin.sql, begin.count)
}

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

const causeLabel = (exit: Exit.Exit<unknown, unknown>): string =>
  Exit.isSuccess(exit)
    ? "rollbackOnly"
    : Cause.isInterruptedOnly(exit.cause)
      ? "interrupt"
      : Cause.isFailure(exit.cause)
        ? "failure"
        : "defect"

/**
 * Ends a session with the exit of its unit of work: COMMIT on success, ROLLBACK otherwise, and gives the connection
 * back in a known-clean state. A failing COMMIT is a typed error. Runs uninterruptibly, in one `Effect.async` when
 * a round trip is needed.
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

const endSession = <A, E>(
  state: SessionState,
  exit: Exit.Exit<A, E>,
  passThrough: boolean
): Effect.Effect<any, any> => {
  const { engine, pc, root } = state
  state.open = false
  state.owner = undefined
  root.closed = true
  // statements queued behind the close now see a closed session and fail with SessionClosed
  root.lock.unsafeRelease()
  metrics.sessionDuration.unsafeUpdate(Date.now() - state.startedAt, engine.labels)
  const outcome: Effect.Effect<any, any> = passThrough ? Exit.mapError(exit, unwrapError) : Effect.void

  const rollback = (label: string, after: Effect.Effect<any, any>): Effect.Effect<any, any> => {
    metrics.rollbacks.unsafeUpdate(1, engine.labelsWith("cause", label))
    if (!state.begun) {
      engine.release(pc, pc.dirty)
      return after
    }
    if (pc.broken || pc.closed) {
      engine.release(pc, false, "broken")
      return after
    }
    return Effect.async<any, any>((resume) => {
      // a ROLLBACK that does not answer is cut short: closing the connection rolls back on the server too
      engine.startCommand(
        pc,
        "query",
        "ROLLBACK",
        undefined,
        false,
        (err) => {
          if (err !== undefined) engine.release(pc, false, pc.broken ? "broken" : "resetFailed")
          else engine.release(pc, pc.dirty)
          resume(after)
        },
        Math.max(5_000, engine.options.killGraceMs)
      )
    })
  }

  if (Exit.isSuccess(exit) && state.aborted !== undefined) {
    return rollback("aborted", Effect.fail(state.aborted))
  }
  if (Exit.isFailure(exit) || state.rollbackOnly) {
    return rollback(causeLabel(exit), outcome)
  }
  const committed = (): Effect.Effect<any, any> => {
    metrics.commits.unsafeUpdate(1, engine.labels)
    return state.hooks === undefined ? outcome : Effect.zipRight(runHooks(state.hooks), outcome)
  }
  if (!state.begun) {
    engine.release(pc, pc.dirty)
    return committed()
  }
  if (pc.broken || pc.closed) {
    engine.release(pc, false, "broken")
    return Effect.fail(
      new SessionError.ConnectionLost({
        message:
          "the connection was lost before COMMIT was sent: the server rolled the transaction back; the unit can be retried"
      })
    )
  }
  // with a unit `timeout`, COMMIT gets what is left of it: no answer by then is an unknown outcome
  const timeoutMs =
    state.options.timeout === undefined ? undefined : Duration.toMillis(Duration.decode(state.options.timeout))
  const commitDeadline = timeoutMs === undefined ? undefined : Math.max(50, state.startedAt + timeoutMs - Date.now())
  return Effect.async<any, any>((resume) => {
    engine.startCommand(
      pc,
      "query",
      "COMMIT",
      undefined,
      false,
      (e) => {
        if (e === undefined) {
          engine.release(pc, pc.dirty)
          return resume(committed())
        }
        if (e._tag === "ConnectionLost" || pc.broken) {
          engine.release(pc, false, "broken")
          return resume(
            Effect.fail(
              new SessionError.CommitOutcomeUnknown({
                cause: e,
                message: `the connection was lost while COMMIT was in flight: the transaction may or may not be committed (${e.message}); it is not retried automatically — check with an idempotency key`
              })
            )
          )
        }
        engine.release(pc, true)
        metrics.rollbacks.unsafeUpdate(1, engine.labelsWith("cause", "commitFailed"))
        resume(
          Effect.fail(
            new SessionError.CommitFailed({
              cause: e,
              retryable: SessionError.isRetryable(e),
              errno: (e as { errno?: number }).errno,
              code: (e as { code?: string }).code,
              message: `COMMIT failed and the transaction was rolled back: ${e.message}`
            })
          )
        )
      },
      commitDeadline
    )
  })
}

/** @internal */
export interface OpenSavepoint {
  readonly parent: Frame
  readonly child: Frame
  readonly name: string
}

/** Takes the parent frame (siblings wait), then SAVEPOINT. Call inside `uninterruptibleMask`. @internal */
export const openSavepoint = (
  parent: Frame,
  restore: Restore,
  fiber: Fiber.RuntimeFiber<any, any>
): Effect.Effect<OpenSavepoint, SessionError.SessionError> =>
  Effect.zipRight(
    // a statement this fiber left running when it was interrupted (see `Frame.exec`): stop it first
    parent.runningFiber === fiber
      ? Effect.zipRight(parent.reclaim(), parent.lock.acquire(restore))
      : parent.lock.acquire(restore),
    Effect.suspend(() => {
      const state = parent.state
      if (parent.closed || !state.open) {
        parent.lock.unsafeRelease()
        return Effect.fail(closedError())
      }
      if (state.aborted) {
        parent.lock.unsafeRelease()
        return Effect.fail(state.aborted)
      }
      const name = `sfx_sp_${++state.seq}`
      const child = new Frame(state.engine, state, parent)
      return parent.control(`SAVEPOINT ${name}`).pipe(
        Effect.tapError((e) =>
          Effect.sync(() => {
            if (abortsTransaction(e) && state.aborted === undefined) state.aborted = e
            parent.lock.unsafeRelease()
          })
        ),
        Effect.as({ parent, child, name })
      )
    })
  )

/** RELEASE on success, ROLLBACK TO on failure, then lets siblings in. @internal */
export const closeSavepoint = (
  sp: OpenSavepoint,
  exit: Exit.Exit<unknown, unknown>
): Effect.Effect<void, SessionError.SessionError> =>
  Effect.uninterruptible(
    Effect.zipRight(
      // a statement the fiber left running in the savepoint when it was interrupted: stop it first
      sp.child.running !== undefined ? Effect.zipRight(sp.child.reclaim(), sp.child.lock.take) : sp.child.lock.take,
      Effect.suspend(() => {
        sp.child.closed = true
        const state = sp.parent.state
        const end: Effect.Effect<void, SessionError.SessionError> =
          state.aborted !== undefined
            ? Exit.isSuccess(exit)
              ? Effect.fail(state.aborted)
              : Effect.void
            : Exit.isSuccess(exit)
              ? sp.parent.control(`RELEASE SAVEPOINT ${sp.name}`)
              : sp.parent.control(`ROLLBACK TO SAVEPOINT ${sp.name}`)
        return end.pipe(
          Effect.tapError((e) =>
            Effect.sync(() => {
              if (state.aborted === undefined) state.aborted = e
            })
          ),
          Effect.ensuring(
            Effect.sync(() => {
              sp.child.lock.unsafeRelease()
              sp.parent.lock.unsafeRelease()
            })
          )
        )
      })
    )
  )

/** Unwraps a `SqlError` that carries a classified `SessionError`, so `catchTag("Deadlock")` works outside. @internal */
export const unwrapError = <E>(e: E): E | SessionError.SessionError =>
  e instanceof SqlError && SessionError.isSessionError(e.cause) && !(e.cause instanceof SqlError)
    ? (e.cause as SessionError.SessionError)
    : e

/** Runs `effect` in a savepoint of `parent`. @internal */
export const savepoint = <A, E, R>(
  parent: Frame,
  effect: Effect.Effect<A, E, R>,
  fiber: Fiber.RuntimeFiber<any, any>
): Effect.Effect<A, E | SessionError.SessionError, R> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(openSavepoint(parent, restore, fiber), (sp) =>
      Effect.flatMap(Effect.exit(restore(parent.state.provide(effect, sp.child))), (exit) =>
        Effect.zipRight(closeSavepoint(sp, exit), exit)
      )
    )
  )

/** The open frame of `engine` the fiber is in, if any: a unit started there nests as a savepoint. @internal */
const openFrameOf = (engine: EngineImpl, fiber: Fiber.RuntimeFiber<any, any>): Frame | undefined => {
  const f = fiber.currentContext.unsafeMap.get(engine.currentTag.key)
  return f instanceof Frame && f.state.open && !f.closed ? f : undefined
}

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

const runOnce = <A, E, R>(
  engine: EngineImpl,
  options: UnitOptions,
  effect: Effect.Effect<A, E, R>
): Effect.Effect<A, E | SessionError.SessionError, R> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(engine.borrow(restore), (pc) =>
      Effect.withFiberRuntime<A, E | SessionError.SessionError, R>((fiber) => {
        const state = newSession(engine, pc, options)
        state.owner = fiber
        let body: Effect.Effect<A, E | SessionError.SessionError, R> = effect
        if (options.timeout !== undefined) {
          const d = options.timeout
          body = Effect.timeoutFail(body, {
            duration: d,
            onTimeout: () =>
              new SessionError.TransactionTimeout({
                message: `the unit of work ran longer than ${Duration.format(Duration.decode(d))} and was rolled back`
              })
          })
        }
        // what `Effect.locally(currentContext)` does, without its acquire/use/release: we are uninterruptible here,
        // and both exits below put the outer context back before anything else runs
        const f = fiber as unknown as { setFiberRef: <X>(ref: FiberRef.FiberRef<X>, value: X) => void }
        const outer = fiber.getFiberRef(FiberRef.currentContext)
        f.setFiberRef(FiberRef.currentContext, state.contextFrom(outer, state.root))
        return Effect.matchCauseEffect(restore(body), {
          onFailure: (cause) => {
            f.setFiberRef(FiberRef.currentContext, outer)
            return finishNow(state, Exit.failCause(cause), true)
          },
          onSuccess: (a) => {
            f.setFiberRef(FiberRef.currentContext, outer)
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
      : `rollback:${(Option.getOrUndefined(Cause.failureOption(exit.cause)) as { _tag?: string } | undefined)?._tag ?? "defect"}`

/** The unit of work as a combinator: nested (savepoint) inside an open session, else a session of its own. @internal */
export const transact = <A, E, R>(
  engine: EngineImpl,
  effect: Effect.Effect<A, E, R>,
  options: UnitOptions
): Effect.Effect<A, E | SessionError.SessionError, R> =>
  Effect.withFiberRuntime((fiber) => {
    const frame = openFrameOf(engine, fiber)
    if (frame !== undefined && options.propagation !== "new") {
      return Effect.mapError(savepoint(frame, effect, fiber), unwrapError)
    }
    let attempts = 1
    const retrying = options.retry !== undefined && options.retry !== false
    const traced = fiber.currentTracer !== defaultTracer || options.name !== undefined
    const first = runOnce(engine, options, effect)
    // the retry machinery is built only after a first retryable failure: the common path pays nothing for it
    const unit = retrying
      ? Effect.catchIf(first, SessionError.isRetryable, () =>
          Effect.retry(
            Effect.suspend(() => {
              // every attempt after the first is a retry
              attempts++
              metrics.retries.unsafeUpdate(1, engine.labels)
              return runOnce(engine, options, effect)
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
  options: UnitOptions
): Effect.Effect<Context.Context<never>, SessionError.SessionError, Scope.Scope> =>
  Effect.withFiberRuntime((fiber) => {
    const frame = openFrameOf(engine, fiber)
    if (frame !== undefined && options.propagation !== "new") {
      return Effect.uninterruptibleMask((restore) =>
        Effect.flatMap(openSavepoint(frame, restore, fiber), (sp) =>
          Effect.as(
            // a failed RELEASE must reach the caller as a typed error: the scope's close carries it as a failure
            Effect.addFinalizer((exit) => closeSavepoint(sp, exit) as Effect.Effect<void>),
            sp.parent.state.layerContext(sp.child)
          )
        )
      )
    }
    return Effect.uninterruptibleMask((restore) =>
      Effect.flatMap(openSession(engine, options, restore), (state) => {
        state.owner = fiber
        return Effect.as(
          // a failed COMMIT must reach the caller as a typed error: the scope's close carries it as a failure
          Effect.addFinalizer((exit) => finishSession(state, exit, false) as Effect.Effect<void>),
          state.layerContext(state.root)
        )
      })
    )
  })
