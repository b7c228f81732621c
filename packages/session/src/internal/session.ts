/**
 * The state of a unit of work, which is also the `Session` service the unit's code sees.
 *
 * @internal
 */
import * as Client from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import * as SessionError from "../SessionError.js"
import type { EngineImpl, Isolation, Watched } from "./engine.js"
import { sessionErrorsAsSqlError } from "./connection.js"
import type { Dialect } from "./driver/types.js"
import { Frame, type UnitState } from "./frame.js"
import { closedError, sharedError } from "./unitErrors.js"
import * as metrics from "./metrics.js"
import * as keys from "./keys.js"
import type { PooledConn } from "./pool.js"
import { savepoint, unwrapError } from "./savepoints.js"
import { makeClient } from "./statement.js"
import * as Unit from "./unit.js"
import { PLAIN, type UnitOptions } from "./unitOptions.js"
import type { Want } from "./engine.js"

/** @internal */
export interface SessionService {
  readonly sql: Client.SqlClient
  readonly connectionId: number
  readonly isolation: Isolation | undefined
  readonly readOnly: boolean
  readonly server: string
  readonly savepoint: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E | SessionError.SessionError, R>
  readonly afterCommit: (
    effect: Effect.Effect<void>
  ) => Effect.Effect<void, SessionError.SessionClosed | SessionError.SharedSession>
  readonly setRollbackOnly: Effect.Effect<void>
  readonly isOpen: Effect.Effect<boolean>
}

/** The Context tag of the Session service; set by Session.ts. @internal */
export const SessionTag = Context.GenericTag<SessionService>("@sessionfx/session/Session")

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
export class SessionState implements SessionService, UnitState {
  phase: Unit.Phase = Unit.initial
  rollbackOnly: boolean
  seq = 0
  readonly root: Frame
  readonly startedAt = Date.now()
  readonly beginSql: string
  /** A plain read-write transaction: its first statement may open it (autocommit off; see `Frame.prepareThen`). */
  readonly implicitBegin: boolean
  /** Set while the unit is watched for `longUnitThreshold`. */
  watched: Watched | undefined = undefined
  private boundClient: Client.SqlClient | undefined

  /**
   * The fiber that opened the session and runs its unit: its statements need no interruption hook (`Frame.exec`).
   * Cleared when the session ends.
   */
  owner: Fiber.RuntimeFiber<unknown, unknown> | undefined = undefined
  /** The root fiber of the program this unit belongs to, once known (see `holding.ts`). */
  holder: number | undefined = undefined
  /** Set while the Layer spelling builds the unit. */
  building = false

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
      consistentSnapshot: options.consistentSnapshot === true,
      deferrable: options.deferrable === true
    })
    this.implicitBegin = options.readOnly !== true && options.consistentSnapshot !== true
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
    return Effect.withFiberRuntime((fiber) => savepoint(this.frameOf(fiber), effect, fiber, PLAIN))
  }
  afterCommit(
    effect: Effect.Effect<void>
  ): Effect.Effect<void, SessionError.SessionClosed | SessionError.SharedSession> {
    return Effect.withFiberRuntime((fiber) => {
      const frame = this.frameOf(fiber)
      if (frame.detached) return Effect.fail(sharedError())
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
  frameOf(fiber: Fiber.RuntimeFiber<unknown, unknown>): Frame {
    const f = this.engine.current(fiber)
    return f instanceof Frame && f.state === (this as UnitState) ? f : this.root
  }

  /** The first statement of a keyed unit: its key, in its transaction (see `keys.ts`). */
  recordKey(key: string): Effect.Effect<void, SessionError.SessionError> {
    return Effect.withFiberRuntime((fiber) =>
      Effect.asVoid(
        Effect.mapError(
          this.frameOf(fiber).exec(fiber, {
            method: "execute",
            sql: keys.texts(this.engine).insert,
            params: [key],
            rowsAsArray: false,
            raw: true,
            transform: undefined
          }),
          (e) => keys.recordError(this.engine, key, unwrapError(e) as SessionError.SessionError)
        )
      )
    )
  }

  /** A client bound to this session: used after the session ended, it fails with SessionClosed. */
  client(): Client.SqlClient {
    return (this.boundClient ??= makeClient(
      this.engine,
      (fiber) => this.frameOf(fiber),
      (<R, E, A>(effect: Effect.Effect<A, E, R>) =>
        Effect.withFiberRuntime<A, E | SqlError, R>(
          (fiber) =>
            // a SessionError travels as the cause of a SqlError (see `sessionErrorsAsSqlError`)
            Effect.mapError(
              savepoint(this.frameOf(fiber), effect, fiber, PLAIN),
              sessionErrorsAsSqlError
            ) as Effect.Effect<A, E | SqlError, R>
        )) as Client.SqlClient["withTransaction"],
      this.engine.reactivity
    ))
  }

  /** What the Layer spelling provides. */
  layerContext(frame: Frame): Context.Context<never> {
    return this.contextFrom(Context.empty(), frame)
  }

  /** Runs `effect` inside this session (frame `frame`): Session, the engine's SqlClient and the frame in context. */
  provide<A, E, R>(effect: Effect.Effect<A, E, R>, frame: Frame = this.root): Effect.Effect<A, E, never> {
    return Effect.mapInputContext(effect as Effect.Effect<A, E, never>, (ctx: Context.Context<never>) =>
      this.contextFrom(ctx, frame)
    )
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
