/**
 * A frame: one savepoint level of a unit (or its root). Statements of a frame run one at a time, inside the unit's
 * transaction or not at all; each command's outcome goes to the unit's state machine (`UnitState.apply`).
 *
 * @internal
 */
import { SqlError } from "@effect/sql/SqlError"
import type * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import * as Stream from "effect/Stream"
import * as SessionError from "../SessionError.js"
import { eachStatement } from "./autocommit.js"
import { BaseConnection, shapeRows, type StatementRequest, toSqlError } from "./connection.js"
import { type Command, type CommandSpec, type EngineImpl, interruptedError, type Want, type Watched } from "./engine.js"
import type { Dialect } from "./driver/types.js"
import type { Holding } from "./holding.js"
import { Lock } from "./lock.js"
import type { PooledConn } from "./pool.js"
import { frameStream, type Target as StreamTarget } from "./stream.js"
import type * as Unit from "./unit.js"
import type { UnitOptions } from "./unitOptions.js"
import { closedError, poisonError, sharedError, spawnedError } from "./unitErrors.js"

/** What a frame needs of its unit (implemented by `SessionState`). @internal */
export interface UnitState extends Holding {
  readonly engine: EngineImpl
  readonly pc: PooledConn
  readonly options: UnitOptions
  readonly root: Frame
  readonly beginSql: string
  /** The unit's transaction may be opened by its first statement (autocommit off): a plain read-write one. */
  readonly implicitBegin: boolean
  readonly dialect: Dialect
  readonly startedAt: number
  readonly phase: Unit.Phase
  rollbackOnly: boolean
  seq: number
  owner: Fiber.RuntimeFiber<unknown, unknown> | undefined
  watched: Watched | undefined
  readonly open: boolean
  readonly begun: boolean
  readonly abortError: SessionError.SessionError | undefined
  readonly readOnly: boolean
  isolationName(): string
  /** Feeds a command's outcome to the unit's state machine. */
  apply(event: Unit.Event): void
  /** Runs `effect` inside the unit, in `frame`. */
  provide<A, E, R>(effect: Effect.Effect<A, E, R>, frame?: Frame): Effect.Effect<A, E, never>
  /** The first statement of a keyed unit: its key, in its transaction (see `keys.ts`). */
  recordKey(key: string): Effect.Effect<void, SessionError.SessionError>
  /** What the Layer spelling provides: the unit's services, in `frame`. */
  layerContext(frame: Frame): Context.Context<never>
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
    readonly state: UnitState,
    readonly parent: Frame | undefined,
    readonly want: Want
  ) {
    super(engine)
  }

  /** The unit this frame belongs to. */
  get unit(): UnitState {
    return this.state
  }
  get detached(): boolean {
    return false
  }
  /** This frame as a fiber sees it that is not one of its unit's (see `EngineImpl.current`). */
  detach(): Frame {
    return new DetachedFrame(this, false)
  }
  /** This frame as a fiber sees it that was started from inside the unit without it (see `Held.spawned`). */
  spawn(): Frame {
    return new DetachedFrame(this, true)
  }
  /** Seen from a fiber started from inside the unit without it: no unit of its own yet, and none to join. */
  get spawned(): boolean {
    return false
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
  ): Stream.Stream<unknown, SqlError> {
    return frameStream(this, frameTarget(this), { sql, params, transform: transformRows })
  }

  /** The command the lock holder runs without an interruption hook, and its fiber (see `exec`), while it runs. */
  running: Command | undefined = undefined
  runningFiber: Fiber.RuntimeFiber<unknown, unknown> | undefined = undefined

  runStatement(
    method: "query" | "execute",
    sql: string,
    params: ReadonlyArray<unknown>,
    rowsAsArray: boolean
  ): Effect.Effect<unknown, SqlError> {
    return Effect.withFiberRuntime((fiber) =>
      this.exec(fiber, { method, sql, params, rowsAsArray, raw: true, transform: undefined })
    )
  }

  /** Stops the command a fiber left behind when it was interrupted while it ran (see `exec`); done when it ended. */
  reclaim(): Effect.Effect<void> {
    return Effect.suspend(() =>
      this.running === undefined ? Effect.void : Effect.zipRight(this.running.cancel(), this.reclaim())
    )
  }

  /**
   * What must precede a statement of this frame, then `next`: the frame's settings (a SET, only when the connection
   * does not have them yet) and the transaction (START TRANSACTION, when none is open). If either fails, the unit
   * is aborted: a unit's statements run inside its transaction or not at all. `track` sees each command in flight.
   *
   * With `mayOpen` (a statement of the unit's own, not SAVEPOINT: that opens nothing with autocommit off), no START
   * TRANSACTION is sent when the server said autocommit is off and no transaction is open: the server opens it at
   * the statement itself, and `next(true)` says so (the caller feeds `Opening` to the state machine as it sends).
   */
  prepareThen(
    next: (opening: boolean) => void,
    fail: (e: SessionError.SessionError) => void,
    track: (c: Command | undefined) => void,
    mayOpen = false
  ) {
    const state = this.state
    const engine = state.engine
    const pc = state.pc
    const ready = this.ready(mayOpen)
    if (ready !== undefined) return next(ready)
    // stopped by the interruption of the statement it was opening, nothing was opened (the next statement opens
    // it); any other failure aborts the unit (`Unit.step`)
    const openFailed = (e: SessionError.SessionError, cancelled: boolean) => {
      state.apply({ _tag: "OpenFailed", cause: e, cancelled, lost: e._tag === "ConnectionLost" })
      fail(e)
    }
    const begin = () => {
      if (state.begun) return next(false)
      if (this.opensItself(mayOpen)) return next(true)
      track(
        engine.controlStatement(pc, state.beginSql, (err, cancelled) => {
          if (err !== undefined) return openFailed(err, cancelled)
          state.apply({ _tag: "Began" })
          if (cancelled) return fail(interruptedError())
          next(false)
        })
      )
    }
    const set = engine.applySettings(pc, this.want, begin, openFailed)
    if (set !== undefined) track(set)
  }

  /**
   * The common case of `prepareThen`, which allocates nothing: the settings are in place and the transaction is open
   * (`false`) or opened by the statement itself (`true`). `undefined`: something must be sent first.
   */
  ready(mayOpen: boolean): boolean | undefined {
    const state = this.state
    if (state.engine.settingsSql(state.pc, this.want) !== undefined) return undefined
    if (state.begun) return false
    if (this.opensItself(mayOpen)) return true
    return undefined
  }

  /**
   * Whether the next statement opens the unit's transaction by itself: one of the unit's own statements (`mayOpen`)
   * of a plain read-write unit, on a connection whose server said in its last reply that autocommit is off and no
   * transaction is open. The one place that decides to send no START TRANSACTION.
   */
  private opensItself(mayOpen: boolean): boolean {
    const pc = this.state.pc
    return mayOpen && this.state.implicitBegin && pc.autocommit === false && !pc.inTrans
  }

  /**
   * After a statement failed inside the transaction, or failed opening it (`Opening`): is a transaction open now?
   * The status flags of an OK packet say so; an error packet has none, so ask (`DO 0`, on the error path only). A
   * transaction the server ended in failure (deadlock, lock wait timeout with `innodb_rollback_on_timeout`, …)
   * aborts the unit; a failed opening statement may have opened one all the same (it holds its locks).
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
      state.apply({
        _tag: "Failed",
        cause: err,
        inTransaction: probeError !== undefined ? undefined : pc.inTrans,
        rollsBack: err._tag === "Deadlock" || err._tag === "LockWaitTimeout" || err._tag === "SerializationFailure"
      })
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
    fiber: Fiber.RuntimeFiber<unknown, unknown> | undefined,
    req: StatementRequest
  ): Effect.Effect<unknown, SqlError> {
    const early = this.check()
    if (early !== undefined) return Effect.fail(toSqlError(early))
    if (fiber !== undefined && this.runningFiber === fiber) {
      // interrupted while its statement ran, the fiber now runs another (a finalizer): stop the first one
      return Effect.zipRight(
        this.reclaim(),
        Effect.suspend(() => this.exec(fiber, req))
      )
    }
    const owner = fiber !== undefined && fiber === this.state.owner ? fiber : undefined
    // a statement the unit may stop while it goes on: on a database where its failure fails the transaction, it
    // runs under a savepoint of its own (`Run.underGuard`)
    const run = new Run(this, req, owner === undefined && this.state.dialect.failedStatementFailsTransaction)
    const statement = Effect.async<unknown, SqlError>((resume) => run.begin(resume, owner))
    if (owner !== undefined) return statement
    // interrupted after the statement took effect — also when the interruption lands after the server answered,
    // before the fiber went on (nothing left to cancel): its effect is in the transaction, so the frame rolls back
    return Effect.onInterrupt(statement, () =>
      Effect.sync(() => {
        if (run.applied) this.poisoned ??= poisonError()
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
        state.engine.startCommand(state.pc, state.engine.control(sql), (err) =>
          err !== undefined ? fail(err) : resume(Effect.void)
        )
      }
      if (begin) this.prepareThen(run, fail, () => undefined)
      else run()
    })
  }
}

/**
 * A frame seen from a fiber that is not one of its unit's: every statement, stream, savepoint and hook fails with
 * `SharedSession`, before anything is sent. @internal
 */
export class DetachedFrame extends Frame {
  constructor(
    readonly of: Frame,
    readonly fromInside: boolean
  ) {
    super(of.engine, of.state, of.parent, of.want)
  }
  override get detached(): boolean {
    return true
  }
  override get spawned(): boolean {
    return this.fromInside
  }
  override detach(): Frame {
    return this
  }
  override check(): SessionError.SessionError | undefined {
    return this.fromInside ? spawnedError() : sharedError()
  }
  override executeStream(): Stream.Stream<unknown, SqlError> {
    return Stream.fail(toSqlError(this.check()!))
  }
}

const OPENING: Unit.Event = { _tag: "Opening" }
const NOT_SENT: Unit.Event = { _tag: "NotSent" }
const IN_TRANSACTION: Unit.Event = { _tag: "StatementDone", inTransaction: true }
const NO_TRANSACTION: Unit.Event = { _tag: "StatementDone", inTransaction: false }

/** A statement ended: what the server said of the transaction goes to the unit's state machine. */
const statementDone = (state: UnitState, inTransaction: boolean | undefined): void =>
  state.apply((inTransaction ?? state.pc.inTrans) ? IN_TRANSACTION : NO_TRANSACTION)

/**
 * One statement of a frame, from waiting for the frame to giving it back (see `Frame.exec`). The fiber that
 * opened the unit (its owner) finding the frame free runs it at once without an interruption hook (`tracked`: a
 * finalizer of that fiber stops it first, `Frame.reclaim`).
 */
class Run implements CommandSpec {
  command: Command | undefined = undefined
  tracked = false
  /** Interrupted: no further statement of a multi-statement text starts. */
  stopped = false
  /** Some statement of this call took effect on the server. */
  applied = false
  private resume: ((effect: Effect.Effect<unknown, SqlError>) => void) | undefined = undefined
  // the command this call sends when its text is one statement (the common case): the Run itself
  readonly method: "query" | "execute"
  readonly sql: string
  readonly rowsAsArray: boolean
  values: ReadonlyArray<unknown> | undefined = undefined

  constructor(
    readonly frame: Frame,
    readonly req: StatementRequest,
    /** Runs under a savepoint of its own (`underGuard`). */
    readonly guarded: boolean
  ) {
    this.method = req.method
    this.sql = req.sql
    this.rowsAsArray = req.rowsAsArray
  }

  begin(
    resume: (effect: Effect.Effect<unknown, SqlError>) => void,
    owner: Fiber.RuntimeFiber<unknown, unknown> | undefined
  ): Effect.Effect<void> | undefined {
    this.resume = resume
    const frame = this.frame
    if (owner !== undefined && !frame.lock.locked) {
      frame.lock.locked = true
      this.tracked = true
      frame.runningFiber = owner
      this.start()
      if (frame.running === undefined) frame.runningFiber = undefined
      return undefined
    }
    const waiter = frame.lock.enqueue(() => this.start())
    return Effect.suspend(() => {
      if (waiter !== undefined && !waiter.granted) {
        frame.lock.cancel(waiter)
        return Effect.void
      }
      this.stopped = true
      return this.command === undefined ? Effect.void : this.command.cancel()
    })
  }

  track(c: Command | undefined): void {
    this.command = c
    if (this.tracked) this.frame.running = c !== undefined && !c.settled ? c : undefined
  }

  /** The statement has ended: nothing of the caller's is left to stop (`Frame.reclaim`). */
  private untrack(): void {
    if (this.tracked) {
      this.frame.running = undefined
      this.frame.runningFiber = undefined
    }
  }

  fail(e: SessionError.SessionError): void {
    this.finish(e, undefined)
  }

  private finish(err: SessionError.SessionError | undefined, rows: unknown): void {
    this.untrack()
    this.frame.lock.unsafeRelease()
    this.resume!(err !== undefined ? Effect.fail(toSqlError(err)) : Effect.succeed(shapeRows(this.req, rows)))
  }

  /** Holding the frame: check, bind (refused before anything is sent), then each statement of the text. */
  private start(): void {
    const frame = this.frame
    const bad = frame.check()
    if (bad !== undefined) return this.fail(bad)
    const driver = frame.state.engine.options.driver
    const bound = driver.bind(this.req.params)
    if (bound instanceof SessionError.BindError) return this.fail(bound)
    if (bound instanceof Error) return this.fail(new SessionError.BindError({ index: 0, message: bound.message }))
    this.values = bound
    // a prepared statement is one statement; a text query may hold several
    if (this.method === "execute") return this.prepare(this, undefined)
    eachStatement(
      driver,
      this,
      (part, next) => this.prepare(part, next),
      (rows) => this.finish(undefined, rows)
    )
  }

  /** The settings and the transaction for `part`, then `part` itself; `next` (if any) takes over after it. */
  private prepare(part: CommandSpec, next: ((rows: unknown) => void) | undefined): void {
    const ready = this.frame.ready(true)
    if (ready !== undefined) return this.runOne(part, next, ready)
    this.frame.prepareThen(
      (opening) => this.runOne(part, next, opening),
      (e) => this.fail(e),
      (c) => this.track(c),
      true
    )
  }

  private runOne(part: CommandSpec, next: ((rows: unknown) => void) | undefined, opening: boolean): void {
    if (this.stopped) return this.fail(interruptedError())
    if (this.guarded && this.frame.state.begun) return this.underGuard(part, next)
    const frame = this.frame
    const state = frame.state
    if (opening) state.apply(OPENING)
    // `main` stays undefined when the command settles at once (a connection already gone calls back synchronously)
    let main: Command | undefined = undefined
    main = state.engine.startCommand(state.pc, part, (err, rows) => {
      if (err === undefined) {
        statementDone(state, main?.inTransaction)
        // stopped too late: the server finished it, so its effect is in the transaction
        this.applied = true
        if (main?.cancelled || this.stopped) frame.poisoned ??= poisonError()
        return next === undefined ? this.finish(undefined, rows) : next(rows)
      }
      if (main !== undefined && !main.sent) {
        if (opening) state.apply(NOT_SENT)
        return this.fail(err)
      }
      // while sessionfx asks the server whether the transaction survived, the frame stays taken
      this.untrack()
      frame.afterFailure(err, () => this.fail(err))
    })
    this.track(main)
  }

  /**
   * A statement of another fiber than the unit's own, on a database where a failed statement fails the whole
   * transaction (PostgreSQL): it runs under a savepoint of its own, so that its interruption — the statement stopped
   * on the server, or answered after its fiber was interrupted — undoes it alone and the unit goes on, as KILL QUERY
   * does on MySQL (guarantee 13). Any other failure is the database's own: the transaction is failed, as after a
   * statement of the unit's own fiber. The savepoint's statements are sessionfx's, never cancelled; if one fails,
   * the unit is aborted.
   */
  private underGuard(part: CommandSpec, next: ((rows: unknown) => void) | undefined): void {
    const state = this.frame.state
    const dialect = state.dialect
    this.track(undefined)
    this.guardStatement(dialect.savepoint(GUARD), () => {
      if (this.stopped) return this.undoGuard(interruptedError())
      let main: Command | undefined = undefined
      main = state.engine.startCommand(state.pc, part, (err, rows) => {
        this.track(undefined)
        if (main?.cancelled || this.stopped) return this.undoGuard(err ?? interruptedError())
        if (err !== undefined) return this.frame.afterFailure(err, () => this.fail(err))
        // from here an interruption is too late to undo it: the frame is poisoned instead (`Frame.exec`)
        this.applied = true
        this.guardStatement(dialect.releaseSavepoint(GUARD), () => {
          statementDone(state, undefined)
          return next === undefined ? this.finish(undefined, rows) : next(rows)
        })
      })
      this.track(main)
    })
  }

  /** The interrupted statement undone: back to its savepoint, which is released; the unit goes on. */
  private undoGuard(err: SessionError.SessionError): void {
    const dialect = this.frame.state.dialect
    this.guardStatement(dialect.rollbackToSavepoint(GUARD), () =>
      this.guardStatement(dialect.releaseSavepoint(GUARD), () => this.fail(err))
    )
  }

  /** One of the savepoint's statements; if it fails, the unit is aborted and the statement fails with it. */
  private guardStatement(sql: string, next: () => void): void {
    const state = this.frame.state
    state.engine.controlStatement(state.pc, sql, (err) => {
      if (err === undefined) return next()
      state.apply({ _tag: "ControlFailed", cause: err })
      this.fail(err)
    })
  }
}

const GUARD = "sfx_statement"

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
    statementDone(state, command.inTransaction)
  }
})
