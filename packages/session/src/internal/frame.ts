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
import { BaseConnection, type StatementRequest, toSqlError } from "./connection.js"
import { type Command, type EngineImpl, interruptedError, type Want, type Watched } from "./engine.js"
import type { Dialect } from "./driver/types.js"
import type { Holding } from "./holding.js"
import { Lock } from "./lock.js"
import type { PooledConn } from "./pool.js"
import { Run, statementDone } from "./run.js"
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
