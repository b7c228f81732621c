/**
 * Keyed units of work: a unit with a `key` records it in sessionfx's own table inside its transaction, so the key is
 * committed exactly when the unit is. A second unit with the same key finds it (the primary key refuses it) and is
 * not applied again; after an unknown COMMIT outcome the key says what happened.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as SessionError from "../SessionError.js"
import { keyTableDdl } from "./driver/choose.js"
import { runAutocommit } from "./autocommit.js"
import type { KeysTexts } from "./driver/types.js"
import type { EngineImpl } from "./engine.js"
import type { PooledConn } from "./pooled.js"

/** @internal */
export const TABLE = "sessionfx_unit_keys"

/**
 * The key table's DDL on MySQL and MariaDB (`Session.keyTableDdl`, for a migration of one's own). Keys compare byte
 * for byte (VARBINARY): `"K"`, `"k"` and `"k "` are three keys.
 *
 * @internal
 */
export const mysqlDdl = keyTableDdl("mysql", TABLE)

/** The same on PostgreSQL (`bytea` keys, compared byte for byte). @internal */
export const pgDdl = keyTableDdl("postgres", TABLE)

const textsByEngine = new WeakMap<EngineImpl, KeysTexts>()

/** The key table's statements on `engine`'s server. @internal */
export const texts = (engine: EngineImpl): KeysTexts => {
  let t = textsByEngine.get(engine)
  if (t === undefined) {
    t = engine.options.driver.keysSql(TABLE)
    textsByEngine.set(engine, t)
  }
  return t
}

/** Why `key` cannot be a unit's key, if it cannot. @internal */
export const checkKey = (key: unknown): string | undefined => {
  if (typeof key !== "string" || key.length === 0) return "must be a non-empty string"
  if (Buffer.byteLength(key, "utf8") > 255) return "must be at most 255 bytes (UTF-8)"
  return undefined
}

/** The error of a keyed unit's INSERT, as the user should see it. @internal */
export const recordError = (
  engine: EngineImpl,
  key: string,
  e: SessionError.SessionError
): SessionError.SessionError => {
  if (e._tag === "DuplicateKey") {
    return new SessionError.AlreadyApplied({
      key,
      message: `the unit of work with key ${JSON.stringify(key)} has already been committed; it was not applied again`
    })
  }
  const { isNoSuchTable } = engine.options.driver.errors
  if (isNoSuchTable(e.cause ?? e) || isNoSuchTable(e)) {
    return new SessionError.InvalidOption({
      option: "key",
      cause: e,
      message: `key: the key table ${TABLE} does not exist; create it once with Session.createKeyTable (or the migration in docs/session.md)`
    })
  }
  return e
}

/**
 * Runs `use` on a connection of its own, lent for it alone. `resetOnFailure`: a `use` that opens a transaction has the
 * pool reset the connection (rolled back, bounded) when it did not get to end it.
 */
const onConnection = <A>(
  engine: EngineImpl,
  use: (pc: PooledConn) => Effect.Effect<A, SessionError.SessionError>,
  resetOnFailure = false
): Effect.Effect<A, SessionError.SessionError> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(engine.borrow(restore), (pc) =>
      Effect.onExit(restore(use(pc)), (exit) =>
        Effect.sync(() => engine.release(pc, resetOnFailure && Exit.isFailure(exit)))
      )
    )
  )

/**
 * One autocommit statement. On a multi-primary cluster it is a causal read (`wsrep_sync_wait = 1`: the node first
 * applies everything the cluster had committed), else a node that has not yet applied a commit certified elsewhere
 * would answer "absent" for a key that is committed.
 */
const statement = (engine: EngineImpl, pc: PooledConn, sql: string, values: ReadonlyArray<unknown>) =>
  engine.topology?.multiPrimary === true
    ? Effect.zipRight(
        // a session setting: the connection is reset when it goes back
        runAutocommit(engine, pc, { method: "query", sql: engine.options.driver.topology.causalReads }),
        runAutocommit(engine, pc, { method: "query", sql, values })
      )
    : runAutocommit(engine, pc, { method: "query", sql, values })

/** Runs one autocommit statement on a connection of its own. */
const autocommit = (engine: EngineImpl, sql: string, values: ReadonlyArray<unknown>) =>
  onConnection(engine, (pc) => statement(engine, pc, sql, values))

/**
 * How long a lookup that waits by writing (`findWithin`) waits for a unit holding its key: the Engine's
 * `lockWaitTimeout`, else InnoDB's default (50 s), so that it ends as MariaDB's locking read does, `LockWaitTimeout`.
 */
const FIND_LOCK_WAIT_MS = 50_000

/** The key's lookup (`KeysTexts.find`), inside its driver's `findWithin` transaction when it has one. */
const find = (engine: EngineImpl, key: string) => {
  const { find, findWithin } = texts(engine)
  if (findWithin === undefined) return autocommit(engine, find, [key])
  const seconds = engine.options.defaults.lockWaitTimeoutSeconds
  const waitMs = String(seconds === undefined ? FIND_LOCK_WAIT_MS : Math.round(seconds * 1000))
  return onConnection(
    engine,
    (pc) =>
      Effect.gen(function* () {
        yield* statement(engine, pc, findWithin.begin, [])
        yield* statement(engine, pc, findWithin.bound, [waitMs])
        const rows = yield* statement(engine, pc, find, [key])
        yield* statement(engine, pc, findWithin.end, [])
        return rows
      }),
    true
  )
}

/**
 * Whether the key is committed. A unit still holding the key is waited for (a locking read on MySQL / MariaDB, a probe
 * of the key's unique index on PostgreSQL): the answer is its outcome, never one given before it has one. @internal
 */
export const outcome = (
  engine: EngineImpl,
  key: string
): Effect.Effect<"committed" | "absent", SessionError.SessionError> =>
  Effect.suspend(() => {
    const bad = checkKey(key)
    if (bad !== undefined) return Effect.fail(new SessionError.InvalidOption({ option: "key", message: `key: ${bad}` }))
    return Effect.map(
      Effect.mapError(find(engine, key), (e) => recordError(engine, key, e)),
      (rows) => (Array.isArray(rows) && rows.length > 0 ? "committed" : "absent")
    )
  })

/** How many keys one prune statement deletes at most (`KeysTexts.prune`). */
const PRUNE_BATCH = 5000

/**
 * Deletes the keys of units committed more than `olderThanSeconds` ago, in batches (each its own autocommit
 * statement); returns how many. A unit retried with a pruned key is applied again: keep keys longer than any retry
 * or replay of a request can come. @internal
 */
export const prune = (
  engine: EngineImpl,
  olderThanSeconds: number
): Effect.Effect<number, SessionError.SessionError> => {
  const batch = (total: number): Effect.Effect<number, SessionError.SessionError> =>
    Effect.flatMap(autocommit(engine, texts(engine).prune, [olderThanSeconds]), (r) => {
      const affected = Number((r as { readonly affectedRows?: unknown }).affectedRows ?? 0)
      return affected >= PRUNE_BATCH ? batch(total + affected) : Effect.succeed(total + affected)
    })
  return batch(0)
}

/** Creates the key table if it does not exist. @internal */
export const createTable = (engine: EngineImpl): Effect.Effect<void, SessionError.SessionError> =>
  Effect.asVoid(autocommit(engine, texts(engine).create, []))

/**
 * The server's GTID position (an engine with replicas or nodes only); `undefined` when there is none or no answer
 * came within `commitTimeout` (it may be asked from an uninterruptible ending: it bounds itself).
 */
const position = (engine: EngineImpl): Effect.Effect<string | undefined> =>
  engine.topology === undefined
    ? Effect.succeed(undefined)
    : Effect.interruptible(autocommit(engine, engine.options.driver.topology.primary, [])).pipe(
        Effect.timeout(engine.commitTimeoutMs),
        Effect.map((rows) => {
          const pos = Array.isArray(rows) ? String((rows[0] as { pos?: unknown } | undefined)?.pos ?? "") : ""
          return pos === "" ? undefined : pos
        }),
        Effect.orElseSucceed(() => undefined)
      )

/** KILL CONNECTION: the lost connection's transaction is ended on the server (committed or rolled back) for good. */
const killConnection = (engine: EngineImpl, threadId: number): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    engine.killConnection(threadId, () => resume(Effect.void))
  })

/**
 * After a keyed unit lost its connection during COMMIT: make sure the server has ended that transaction, then read
 * the key. Committed → the unit succeeded (`committed`); absent → nothing was applied and the unit can be retried
 * (`ConnectionLost`, retryable); no answer within the engine's `commitTimeout` → `unknown` (bounded also when the
 * caller is uninterruptible: the lookup's statement is stopped).
 *
 * @internal
 */
export const resolveUnknown = <A, E>(
  state: {
    readonly engine: EngineImpl
    readonly options: { readonly key?: string | undefined }
    readonly pc: { readonly threadId: number; readonly owner: unknown }
  },
  cause: SessionError.SessionError,
  committed: (gtid?: string) => Effect.Effect<A, E>,
  unknown: () => SessionError.SessionError
): Effect.Effect<A, E | SessionError.SessionError> => {
  const key = state.options.key
  if (key === undefined) return Effect.fail(unknown())
  const engine = state.engine
  // the thread id is the lost connection's server's (a node or the primary of a topology)
  const server = (state.pc.owner as EngineImpl | undefined) ?? engine
  // the unit's ending runs uninterruptibly: the lookup is made interruptible so that its own bound can stop it
  return Effect.interruptible(Effect.zipRight(killConnection(server, state.pc.threadId), outcome(engine, key))).pipe(
    Effect.timeout(engine.commitTimeoutMs),
    Effect.matchEffect({
      onFailure: () => Effect.fail(unknown()),
      onSuccess: (found): Effect.Effect<A, E | SessionError.SessionError> =>
        found === "committed"
          ? // the COMMIT's OK packet (and its GTID) was lost: a position that includes the commit is the token
            Effect.flatMap(position(engine), committed)
          : Effect.fail(
              new SessionError.ConnectionLost({
                cause,
                message: `the connection was lost while COMMIT was in flight; the unit's key ${JSON.stringify(key)} is not committed, so nothing was applied; the unit can be retried`
              })
            )
    })
  )
}
