/**
 * The unit of work: one fiber, one connection, one transaction. Commit on success; rollback on failure, defect or
 * interruption. An effect that requires `Session` must run inside one, and the compiler says so.
 *
 * @since 0.1.0
 */
import type * as Client from "@effect/sql/SqlClient"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as FiberRef from "effect/FiberRef"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import { dual } from "effect/Function"
import * as Layer from "effect/Layer"
import * as Engine from "./Engine.js"
import * as SessionError from "./SessionError.js"
import * as keys from "./internal/keys.js"
import * as internal from "./internal/units.js"
import type * as UnitOptions from "./internal/unitOptions.js"
import { TOKEN_PATTERN } from "./internal/tokens.js"
import type * as Tokens from "./internal/tokens.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options extends UnitOptions.SessionOptions {}

/**
 * A causality token: the position (MariaDB GTID list, e.g. `"0-1-42"`) of commits a reader must see. Every unit
 * committed through an engine with replicas or nodes yields one (from the COMMIT's OK packet, no extra query); it
 * flows on in the fiber and its children by itself, and it is a plain string to carry across processes.
 *
 * @since 0.3.0
 * @category models
 */
export type CausalityToken = Tokens.CausalityToken

/**
 * The Schema of a causality token, to decode one received from elsewhere (a header, a message).
 *
 * @example
 * import { Session } from "@sessionfx/session"
 * import { Schema } from "effect"
 *
 * export const fromHeader = (value: string) => Schema.decodeUnknown(Session.CausalityToken)(value)
 *
 * @since 0.3.0
 * @category schemas
 */
export const CausalityToken: Schema.Schema<CausalityToken, string> = Schema.String.pipe(
  Schema.pattern(TOKEN_PATTERN, {
    message: (issue) => `expected a causality token (a GTID list such as "0-1-42"), got ${JSON.stringify(issue.actual)}`
  }),
  Schema.brand("@sessionfx/session/CausalityToken")
)

/**
 * The causality token of the current fiber for this engine: every commit it (or a fiber it joined) made through
 * an engine with replicas or nodes, merged. `None` before the first. To hand it to a client (which sends it back
 * with its next read): `Effect.map(Session.causalityToken, Option.getOrElse(() => ""))`.
 *
 * @since 0.3.0
 * @category accessors
 */
export const causalityToken: Effect.Effect<Option.Option<CausalityToken>, never, Engine.Engine> = Effect.flatMap(
  Engine.Engine,
  (engine) => Effect.map(FiberRef.get(engineImpl(engine).tokenRef), (t) => Option.fromNullable(t as CausalityToken))
)

/**
 * Merges a causality token received from elsewhere into the fiber's: its later read-only units wait for it (as for
 * the fiber's own commits).
 *
 * @example
 * import { Session } from "@sessionfx/session"
 * import { Effect, Schema } from "effect"
 *
 * export const withClientToken = (header: string | undefined) =>
 *   header === undefined
 *     ? Effect.void
 *     : Effect.flatMap(Schema.decodeUnknown(Session.CausalityToken)(header), Session.useCausalityToken)
 *
 * @since 0.3.0
 * @category combinators
 */
export const useCausalityToken = (token: CausalityToken): Effect.Effect<void, never, Engine.Engine> =>
  typeof token !== "string" || !TOKEN_PATTERN.test(token)
    ? // the type says it was decoded (Session.CausalityToken): anything else is a defect, never kept
      Effect.dieMessage(
        `Session.useCausalityToken: ${JSON.stringify(token)} is not a causality token; decode what you received with Session.CausalityToken`
      )
    : Effect.flatMap(Engine.Engine, (engine) => engineImpl(engine).observe(token))

/**
 * @since 0.1.0
 * @category tags
 */
export class Session extends Context.Tag("@sessionfx/session/Session")<Session, Session.Service>() {}

/**
 * @since 0.1.0
 */
export declare namespace Session {
  /**
   * @since 0.1.0
   * @category models
   */
  export interface Service {
    /** A `SqlClient` bound to this session's connection; after the session ends it fails with `SessionClosed`. */
    readonly sql: Client.SqlClient
    /** The server's `CONNECTION_ID()` of this session's connection. */
    readonly connectionId: number
    readonly isolation: Engine.IsolationLevel | undefined
    readonly readOnly: boolean
    /** The name of the server the unit runs on (an engine with replicas or nodes has several; `Engine.servers`). */
    readonly server: string
    /** Runs `effect` in a savepoint: RELEASE on success, ROLLBACK TO on failure, the outer unit goes on. */
    readonly savepoint: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E | SessionError.SessionError, R>
    /**
     * Runs `effect` once, after the final successful COMMIT; never after a rollback (registered inside a savepoint
     * that rolls back, it is dropped). From a fiber that outlived its unit: `SessionClosed`.
     */
    readonly afterCommit: (
      effect: Effect.Effect<void>
    ) => Effect.Effect<void, SessionError.SessionClosed | SessionError.SharedSession>
    /** Marks the unit so that it rolls back even if it succeeds. */
    readonly setRollbackOnly: Effect.Effect<void>
    readonly isOpen: Effect.Effect<boolean>
  }
}

const engineImpl = (engine: Engine.Engine["Type"]) => engine[Engine.TypeId]

/**
 * A unit of work as a scoped Layer: `program.pipe(Effect.provide(Session.layer()))`. Commits when the program
 * succeeds (a failed COMMIT is a typed error), rolls back otherwise. Inside an open session of the same engine it
 * is a savepoint, unless `propagation: "new"`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: Options = {}
): Layer.Layer<Session | Client.SqlClient, SessionError.SessionError, Engine.Engine> => {
  const site = internal.captureSite(options.name ?? "Session.layer", layer)
  return Layer.scopedContext(
    Effect.flatMap(Engine.Engine, (engine) => internal.scopedSession(engineImpl(engine), options, site))
  ) as Layer.Layer<Session | Client.SqlClient, SessionError.SessionError, Engine.Engine>
}

/**
 * A unit of work as a combinator, with `retry` and `timeout`.
 *
 * @since 0.1.0
 * @category combinators
 */
export const transact: {
  (
    options?: Options
  ): <A, E, R>(
    effect: Effect.Effect<A, E, R>
  ) => Effect.Effect<A, E | SessionError.SessionError, Exclude<R, Session | Client.SqlClient> | Engine.Engine>
  <A, E, R>(
    effect: Effect.Effect<A, E, R>,
    options?: Options
  ): Effect.Effect<A, E | SessionError.SessionError, Exclude<R, Session | Client.SqlClient> | Engine.Engine>
} = dual(
  (args) => Effect.isEffect(args[0]),
  <A, E, R>(
    effect: Effect.Effect<A, E, R>,
    options?: Options
  ): Effect.Effect<A, E | SessionError.SessionError, Exclude<R, Session | Client.SqlClient> | Engine.Engine> => {
    const site = internal.captureSite(options?.name ?? "Session.transact", transact)
    // the unit provides its Session and SqlClient to `effect`
    return Effect.withFiberRuntime<A, E | SessionError.SessionError, R | Engine.Engine>((fiber) => {
      // the type requires an Engine; without one this dies like `yield* Engine.Engine` would
      const engine = Context.unsafeGet(fiber.currentContext, Engine.Engine)
      return internal.transactOn(fiber, { engine: engineImpl(engine), options: options ?? {}, site }, effect)
    }) as Effect.Effect<A, E | SessionError.SessionError, Exclude<R, Session | Client.SqlClient> | Engine.Engine>
  }
)

/**
 * Runs `effect` in a savepoint of the current session.
 *
 * @since 0.1.0
 * @category combinators
 */
export const savepoint = <A, E, R>(
  effect: Effect.Effect<A, E, R>
): Effect.Effect<A, E | SessionError.SessionError, R | Session> =>
  Effect.flatMap(Session, (session) => session.savepoint(effect))

/**
 * Runs `effect` after the current session's final successful COMMIT.
 *
 * @since 0.1.0
 * @category combinators
 */
export const afterCommit = (
  effect: Effect.Effect<void>
): Effect.Effect<void, SessionError.SessionClosed | SessionError.SharedSession, Session> =>
  Effect.flatMap(Session, (session) => session.afterCommit(effect))

/**
 * Makes the current session roll back even if it succeeds.
 *
 * @since 0.1.0
 * @category combinators
 */
export const setRollbackOnly: Effect.Effect<void, never, Session> = Effect.flatMap(
  Session,
  (session) => session.setRollbackOnly
)

/**
 * The server connection id of the current session.
 *
 * @since 0.1.0
 * @category accessors
 */
export const connectionId: Effect.Effect<number, never, Session> = Effect.map(Session, (s) => s.connectionId)

/**
 * Whether the keyed unit `key` has been committed. It waits for a transaction that holds the key and has not ended
 * yet, so the answer is final.
 *
 * @since 0.2.0
 * @category keyed units
 */
export const outcome = (key: string): Effect.Effect<"committed" | "absent", SessionError.SessionError, Engine.Engine> =>
  Effect.flatMap(Engine.Engine, (engine) => internal.outcome(engineImpl(engine), key))

/**
 * Deletes the keys of keyed units committed more than `olderThan` ago (the key table otherwise only grows: one row
 * per keyed unit). Returns how many were deleted; deletes in batches of autocommit statements, so it can run while
 * units commit (schedule it, e.g. daily with `Effect.repeat(Schedule.spaced("1 day"))`). A unit run again with a
 * pruned key is applied again: keep keys longer than any retry or replay of a request can arrive.
 *
 * @example
 * ```ts
 * import { Session } from "@sessionfx/session"
 *
 * // keys of units committed more than 30 days ago
 * const pruned = Session.pruneKeys({ olderThan: "30 days" })
 * ```
 *
 * @since 0.3.0
 * @category keyed units
 */
export const pruneKeys = (options: {
  readonly olderThan: Duration.DurationInput
}): Effect.Effect<number, SessionError.SessionError, Engine.Engine> =>
  Effect.flatMap(Engine.Engine, (engine) => {
    const seconds = Duration.toSeconds(Duration.decode(options.olderThan))
    if (!Number.isFinite(seconds) || seconds < 0) {
      return Effect.fail(
        new SessionError.InvalidOption({
          option: "olderThan",
          message: `olderThan: must be a finite, non-negative duration (got ${String(options.olderThan)}); nothing was deleted`
        })
      )
    }
    return keys.prune(engineImpl(engine), Math.floor(seconds))
  })

/**
 * Creates sessionfx's key table for keyed units if it does not exist (`keyTableDdl`): run it once, e.g. from a
 * migration.
 *
 * @since 0.2.0
 * @category keyed units
 */
export const createKeyTable: Effect.Effect<void, SessionError.SessionError, Engine.Engine> = Effect.flatMap(
  Engine.Engine,
  (engine) => keys.createTable(engineImpl(engine))
)

/**
 * The DDL of the key table on MySQL and MariaDB, for a migration of your own (`keyTableDdlPostgres` on PostgreSQL).
 *
 * @since 0.2.0
 * @category keyed units
 */
export const keyTableDdl: string = keys.mysqlDdl

/**
 * The DDL of the key table on PostgreSQL, for a migration of your own.
 *
 * @since 0.2.0
 * @category keyed units
 */
export const keyTableDdlPostgres: string = keys.pgDdl
