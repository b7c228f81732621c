/**
 * One statement of a frame, from waiting for the frame to giving it back: bind, open the transaction if needed, send,
 * feed what the server said to the unit's state machine, and — on a database where a failed statement fails the
 * transaction — a savepoint around a statement of another fiber than the unit's own (`Run.underGuard`).
 *
 * @internal
 */
import type { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import * as SessionError from "../SessionError.js"
import { eachStatement } from "./autocommit.js"
import { shapeRows, type StatementRequest, toSqlError } from "./connection.js"
import { type Command, type CommandSpec, type EngineImpl, interruptedError } from "./engine.js"
import type { Dialect } from "./driver/types.js"
import type { Lock } from "./lock.js"
import type { PooledConn } from "./pool.js"
import type * as Unit from "./unit.js"
import { poisonError } from "./unitErrors.js"

/** What a statement needs of its unit (a `UnitState`). @internal */
export interface RunUnit {
  readonly engine: EngineImpl
  readonly pc: PooledConn
  readonly dialect: Dialect
  readonly begun: boolean
  apply(event: Unit.Event): void
}

/** What a statement needs of its frame (a `Frame`). @internal */
export interface RunFrame {
  readonly lock: Lock
  readonly state: RunUnit
  running: Command | undefined
  runningFiber: Fiber.RuntimeFiber<unknown, unknown> | undefined
  poisoned: SessionError.SessionError | undefined
  check(): SessionError.SessionError | undefined
  ready(mayOpen: boolean): boolean | undefined
  prepareThen(
    next: (opening: boolean) => void,
    fail: (e: SessionError.SessionError) => void,
    track: (c: Command | undefined) => void,
    mayOpen?: boolean
  ): void
  afterFailure(err: SessionError.SessionError, done: () => void): void
}

const OPENING: Unit.Event = { _tag: "Opening" }
const NOT_SENT: Unit.Event = { _tag: "NotSent" }
const IN_TRANSACTION: Unit.Event = { _tag: "StatementDone", inTransaction: true }
const NO_TRANSACTION: Unit.Event = { _tag: "StatementDone", inTransaction: false }

/** A statement ended: what the server said of the transaction goes to the unit's state machine. */
export const statementDone = (state: RunUnit, inTransaction: boolean | undefined): void =>
  state.apply((inTransaction ?? state.pc.inTrans) ? IN_TRANSACTION : NO_TRANSACTION)

/**
 * One statement of a frame, from waiting for the frame to giving it back (see `Frame.exec`). The fiber that
 * opened the unit (its owner) finding the frame free runs it at once without an interruption hook (`tracked`: a
 * finalizer of that fiber stops it first, `Frame.reclaim`).
 */
export class Run implements CommandSpec {
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
    readonly frame: RunFrame,
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
    this.openGuard(() => {
      if (this.stopped) return this.undoGuard(interruptedError())
      let main: Command | undefined = undefined
      main = state.engine.startCommand(state.pc, part, (err, rows) => {
        this.track(undefined)
        if (main?.cancelled || this.stopped) return this.undoGuard(err ?? interruptedError())
        if (err !== undefined) return this.frame.afterFailure(err, () => this.fail(err))
        // from here an interruption is too late to undo it: the frame is poisoned instead (`Frame.exec`)
        this.applied = true
        if (next === undefined) return this.releaseGuard(rows)
        this.guardStatement(dialect.releaseSavepoint(GUARD), () => {
          statementDone(state, undefined)
          next(rows)
        })
      })
      this.track(main)
    })
  }

  /**
   * The guarded statement took effect: its caller gets its rows at once, so an interruption of its fiber lands too
   * late only in the instant before it resumes (as after KILL QUERY on MySQL), not for RELEASE's whole round trip.
   * The frame stays taken until RELEASE has answered: the unit's next statement, and its end, wait for it. If RELEASE
   * fails, the unit is aborted (it rolls back; the caller's statement had succeeded).
   */
  private releaseGuard(rows: unknown): void {
    const state = this.frame.state
    this.untrack()
    this.resume!(Effect.succeed(shapeRows(this.req, rows)))
    state.engine.controlStatement(state.pc, state.dialect.releaseSavepoint(GUARD), (err) => {
      if (err !== undefined) state.apply({ _tag: "ControlFailed", cause: err })
      else statementDone(state, undefined)
      this.frame.lock.unsafeRelease()
    })
  }

  /**
   * The guard's SAVEPOINT, then `next`. If it fails, nothing of the statement ran: the failure is the transaction's
   * (a transaction already failed refuses it, 25P02; a lost connection) and is taken as the statement's own
   * (`Frame.afterFailure`), so the unit ends as without the guard — COMMIT refused with the transaction's first error.
   */
  private openGuard(next: () => void): void {
    const state = this.frame.state
    state.engine.controlStatement(state.pc, state.dialect.savepoint(GUARD), (err) =>
      err === undefined ? next() : this.frame.afterFailure(err, () => this.fail(err))
    )
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
