/**
 * Typed failures of the Engine and of a Session. Every error says whether retrying the whole unit of work in a
 * fresh transaction can succeed (`retryable`), keeps the driver's error as `cause`, and says in `message` what
 * happened and what to do.
 *
 * @since 0.1.0
 */
import { SqlError } from "@effect/sql/SqlError"
import * as Data from "effect/Data"
import * as Predicate from "effect/Predicate"
import { connectAdvice, describe, isFatal as isFatalDriverError } from "./internal/driver/errors.js"

export {
  /**
   * The catch-all member: a failure that no other class describes. It is `@effect/sql`'s own `SqlError`, so code
   * written against `@effect/sql` keeps catching it.
   *
   * @since 0.1.0
   * @category errors
   */
  SqlError
} from "@effect/sql/SqlError"

/**
 * @since 0.1.0
 * @category type ids
 */
export const TypeId: unique symbol = Symbol.for("@sessionfx/session/SessionError")

/**
 * @since 0.1.0
 * @category type ids
 */
export type TypeId = typeof TypeId

/**
 * A snapshot of the pool carried by `PoolTimeout`.
 *
 * @since 0.1.0
 * @category models
 */
export interface PoolStats {
  readonly size: number
  readonly inUse: number
  readonly idle: number
  readonly waiting: number
  readonly pending: number
  readonly created: number
  readonly destroyed: number
  readonly acquireTimeouts: number
}

interface Common {
  readonly message: string
  readonly cause?: unknown
  /** MySQL error number, when the server or driver reported one. */
  readonly errno?: number | undefined
  /** The driver's error code (`ER_DUP_ENTRY`, `ECONNRESET`, …). */
  readonly code?: string | undefined
}

/**
 * No connection became free within `pool.acquireTimeout`, or the wait queue was full (`pool.queueLimit`). Raise
 * the pool size, shorten transactions, or lower concurrency.
 *
 * @since 0.1.0
 * @category errors
 */
export class PoolTimeout extends Data.TaggedError("PoolTimeout")<
  Common & {
    readonly stats: PoolStats
    /** The pool shed the request at once (`pool.queueLimit` waiters already queued): a unit's retry does not re-run it. */
    readonly shed?: boolean | undefined
  }
> {
  readonly [TypeId]: TypeId = TypeId
  readonly retryable = true as const
}

/**
 * A new connection could not be opened (refused, unreachable, authentication, TLS, timeout). The message says what
 * to check and never contains the password; `retryable` is `false` when waiting cannot help.
 *
 * @since 0.1.0
 * @category errors
 */
export class ConnectionError extends Data.TaggedError("ConnectionError")<
  Common & { readonly retryable?: boolean | undefined }
> {
  readonly [TypeId]: TypeId = TypeId
  /**
   * `false` when waiting cannot help (wrong password 1045, unknown database 1049, no access 1044, host not allowed
   * 1130, unknown host); by default decided from `cause`.
   */
  override readonly retryable: boolean
  constructor(args: Common & { readonly retryable?: boolean | undefined }) {
    const known = connectAdvice(args.cause)
    super(
      known?.advice === undefined || args.message.includes(known.advice)
        ? args
        : { ...args, message: `${args.message}; ${known.advice}` }
    )
    this.retryable = args.retryable ?? known?.retryable ?? true
  }
}

/**
 * The connection broke while the unit of work was running (server restart, KILL CONNECTION, network reset). The
 * server rolled back what was not committed; the whole unit can be retried.
 *
 * @since 0.1.0
 * @category errors
 */
export class ConnectionLost extends Data.TaggedError("ConnectionLost")<Common> {
  readonly [TypeId]: TypeId = TypeId
  readonly retryable = true as const
}

/**
 * The server chose this transaction as a deadlock victim (1213) and rolled all of it back. Retry the whole unit.
 *
 * @since 0.1.0
 * @category errors
 */
export class Deadlock extends Data.TaggedError("Deadlock")<Common> {
  readonly [TypeId]: TypeId = TypeId
  readonly retryable = true as const
}

/**
 * A row lock was not granted within `innodb_lock_wait_timeout` (1205). Only the statement was rolled back, but
 * sessionfx treats the unit as failed; retrying the whole unit is safe.
 *
 * @since 0.1.0
 * @category errors
 */
export class LockWaitTimeout extends Data.TaggedError("LockWaitTimeout")<Common> {
  readonly [TypeId]: TypeId = TypeId
  readonly retryable = true as const
}

/**
 * A conflict reported by a certifying or optimistic server (Galera certification failure, TiDB write conflict).
 * Retry the whole unit.
 *
 * @since 0.1.0
 * @category errors
 */
export class SerializationFailure extends Data.TaggedError("SerializationFailure")<Common> {
  readonly [TypeId]: TypeId = TypeId
  readonly retryable = true as const
}

/**
 * A unique key would be duplicated (1062). `key` names the index when the server said which.
 *
 * @since 0.1.0
 * @category errors
 */
export class DuplicateKey extends Data.TaggedError("DuplicateKey")<Common & { readonly key?: string | undefined }> {
  readonly [TypeId]: TypeId = TypeId
  readonly retryable = false as const
}

/**
 * A foreign key constraint failed (1451: a referenced row is still in use, 1452: the parent row does not exist).
 *
 * @since 0.1.0
 * @category errors
 */
export class ForeignKeyViolation extends Data.TaggedError("ForeignKeyViolation")<
  Common & { readonly constraint?: string | undefined }
> {
  readonly [TypeId]: TypeId = TypeId
  readonly retryable = false as const
}

/**
 * A CHECK constraint failed (3819 on MySQL, 4025 on MariaDB).
 *
 * @since 0.1.0
 * @category errors
 */
export class CheckViolation extends Data.TaggedError("CheckViolation")<
  Common & { readonly constraint?: string | undefined }
> {
  readonly [TypeId]: TypeId = TypeId
  readonly retryable = false as const
}

/**
 * NULL was written to a NOT NULL column (1048, 1364).
 *
 * @since 0.1.0
 * @category errors
 */
export class NotNullViolation extends Data.TaggedError("NotNullViolation")<
  Common & { readonly column?: string | undefined }
> {
  readonly [TypeId]: TypeId = TypeId
  readonly retryable = false as const
}

/**
 * A write was attempted in a read-only transaction (1792) or on a read-only server (1290).
 *
 * @since 0.1.0
 * @category errors
 */
export class ReadOnlyTransaction extends Data.TaggedError("ReadOnlyTransaction")<Common> {
  readonly [TypeId]: TypeId = TypeId
  readonly retryable = false as const
}

/**
 * A statement ran longer than `statementTimeout` and the server stopped it (1969 MariaDB, 3024 MySQL).
 *
 * @since 0.1.0
 * @category errors
 */
export class StatementTimeout extends Data.TaggedError("StatementTimeout")<Common> {
  readonly [TypeId]: TypeId = TypeId
  readonly retryable = false as const
}

/**
 * The whole unit of work ran longer than its `timeout`; it was interrupted and rolled back.
 *
 * @since 0.1.0
 * @category errors
 */
export class TransactionTimeout extends Data.TaggedError("TransactionTimeout")<Common> {
  readonly [TypeId]: TypeId = TypeId
  readonly retryable = false as const
}

/**
 * COMMIT was answered with an error: the transaction was rolled back by the server. Retryable when the cause is.
 *
 * @since 0.1.0
 * @category errors
 */
export class CommitFailed extends Data.TaggedError("CommitFailed")<Common & { readonly retryable: boolean }> {
  readonly [TypeId]: TypeId = TypeId
}

/**
 * The connection was lost while COMMIT was in flight: the transaction may or may not have been committed. Never
 * retried automatically; resolve it with an idempotency key or by reading back what the unit wrote.
 *
 * @since 0.1.0
 * @category errors
 */
export class CommitOutcomeUnknown extends Data.TaggedError("CommitOutcomeUnknown")<Common> {
  readonly [TypeId]: TypeId = TypeId
  readonly retryable = false as const
}

/**
 * The session this code belongs to has already committed or rolled back (a fiber outlived its unit of work, or a
 * stored reference was used later). Run the code inside a unit of work of its own.
 *
 * @since 0.1.0
 * @category errors
 */
export class SessionClosed extends Data.TaggedError("SessionClosed")<Common> {
  readonly [TypeId]: TypeId = TypeId
  readonly retryable = false as const
}

/**
 * A unit of work reached from a fiber that is not part of the program it was opened for: `Session.layer()`
 * (`SessionLive`) built into a `ManagedRuntime`, or shared through `Layer.memoize`, and used by independent requests
 * — which would otherwise share one connection and one transaction, and commit or roll back together. Nothing was
 * sent to the server. Build the runtime from the Engine layer only and open a unit per request:
 * `runtime.runPromise(Session.transact(handler))`, or `handler.pipe(Effect.provide(SessionLive))` per request.
 *
 * @since 0.3.0
 * @category errors
 */
export class SharedSession extends Data.TaggedError("SharedSession")<Common> {
  readonly [TypeId]: TypeId = TypeId
  readonly retryable = false as const
}

/**
 * A bind value that cannot be sent exactly: `undefined`, a function or symbol, `NaN` / `±Infinity`, a `number`
 * integer beyond ±(2^53 − 1) (it has already lost precision: pass a `bigint` or a string), a `bigint` outside
 * BIGINT's range, an invalid `Date`, an object with `toSqlString` (values never become SQL), or a class instance
 * other than `Date` / `Uint8Array`. Nothing was sent to the server.
 *
 * @since 0.2.0
 * @category errors
 */
export class BindError extends Data.TaggedError("BindError")<Common & { readonly index: number }> {
  readonly [TypeId]: TypeId = TypeId
  readonly retryable = false as const
}

/**
 * An option out of range, or one that a nested unit of work cannot honour (a read-only or differently isolated
 * unit inside an open read-write transaction: use `propagation: "new"`). Nothing was sent to the server.
 *
 * @since 0.2.0
 * @category errors
 */
export class InvalidOption extends Data.TaggedError("InvalidOption")<Common & { readonly option: string }> {
  readonly [TypeId]: TypeId = TypeId
  readonly retryable = false as const
}

/**
 * A statement of this unit (or savepoint) was interrupted after it had been sent, and the server finished it
 * before the interruption could stop it: its effect is in the transaction, so the unit (or savepoint) was rolled
 * back rather than committed with it. Typical causes: `Effect.race` or `Effect.timeout` around a statement inside a
 * unit. Retrying the whole unit is safe.
 *
 * @since 0.2.0
 * @category errors
 */
export class StatementInterrupted extends Data.TaggedError("StatementInterrupted")<Common> {
  readonly [TypeId]: TypeId = TypeId
  readonly retryable = true as const
}

/**
 * A keyed unit of work (`Session.transact(effect, { key })`) whose key has already been committed: it was applied
 * before (by an earlier attempt, process or retry) and was not applied again.
 *
 * @since 0.2.0
 * @category errors
 */
export class AlreadyApplied extends Data.TaggedError("AlreadyApplied")<Common & { readonly key: string }> {
  readonly [TypeId]: TypeId = TypeId
  readonly retryable = false as const
}

/**
 * Every typed failure of sessionfx.
 *
 * @since 0.1.0
 * @category models
 */
export type SessionError =
  | PoolTimeout
  | ConnectionError
  | ConnectionLost
  | Deadlock
  | LockWaitTimeout
  | SerializationFailure
  | DuplicateKey
  | ForeignKeyViolation
  | CheckViolation
  | NotNullViolation
  | ReadOnlyTransaction
  | StatementTimeout
  | TransactionTimeout
  | CommitFailed
  | CommitOutcomeUnknown
  | SessionClosed
  | SharedSession
  | BindError
  | InvalidOption
  | StatementInterrupted
  | AlreadyApplied
  | SqlError

/**
 * @since 0.1.0
 * @category refinements
 */
export const isSessionError = (u: unknown): u is SessionError =>
  Predicate.hasProperty(u, TypeId) || u instanceof SqlError

/**
 * Whether retrying the whole unit of work in a fresh transaction can succeed. A statement's `SqlError` (what
 * `@effect/sql` code sees, e.g. escaping `Effect.provide(SessionLive)`) is not judged here — outside a unit the same
 * error can mean a write whose outcome is unknown; inside one, `isRetryable(SessionError.classify(e))` says it.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isRetryable = (u: unknown): boolean =>
  Predicate.hasProperty(u, TypeId) && (u as { retryable?: unknown }).retryable === true

/**
 * Whether a driver error means the connection can no longer be used.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isFatal = (cause: unknown): boolean => isFatalDriverError(cause)

/**
 * Classifies a mysql2 error (or an `@effect/sql` `SqlError` wrapping one) into a `SessionError`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const classify = (cause: unknown, context?: string): SessionError => {
  if (isSessionError(cause) && !(cause instanceof SqlError)) return cause
  if (cause instanceof SqlError) {
    if (isSessionError(cause.cause) && !(cause.cause instanceof SqlError)) return cause.cause
    return classifyDriver(cause.cause, context, cause)
  }
  return classifyDriver(cause, context, undefined)
}

const classifyDriver = (cause: unknown, context: string | undefined, original: SqlError | undefined): SessionError => {
  const d = describe(cause)
  const prefix = context ? `${context}: ` : ""
  const base = { cause, errno: d.errno, code: d.code }
  const text = d.text
  switch (d.kind) {
    case "Deadlock":
      return new Deadlock({ ...base, message: `${prefix}deadlock; the server rolled back the transaction (${text})` })
    case "LockWaitTimeout":
      return new LockWaitTimeout({ ...base, message: `${prefix}lock wait timeout exceeded (${text})` })
    case "DuplicateKey":
      return new DuplicateKey({ ...base, key: d.key, message: `${prefix}duplicate key: ${text}` })
    case "ForeignKeyViolation":
      return new ForeignKeyViolation({
        ...base,
        constraint: d.constraint,
        message: `${prefix}foreign key violation: ${text}`
      })
    case "CheckViolation":
      return new CheckViolation({
        ...base,
        constraint: d.constraint,
        message: `${prefix}check constraint violated: ${text}`
      })
    case "NotNullViolation":
      return new NotNullViolation({ ...base, column: d.column, message: `${prefix}not-null violation: ${text}` })
    case "ReadOnlyTransaction":
      return new ReadOnlyTransaction({ ...base, message: `${prefix}write in a read-only transaction: ${text}` })
    case "StatementTimeout":
      return new StatementTimeout({ ...base, message: `${prefix}statement timeout exceeded: ${text}` })
    case "SerializationFailure":
      return new SerializationFailure({ ...base, message: `${prefix}serialization failure: ${text}` })
    case "NodeNotReady":
      // a cluster node out of its primary component refused the statement before running it (a COMMIT refused this
      // way replicated nothing): the outcome is known and the connection still works, so not ConnectionLost (which
      // at COMMIT means an unknown outcome); retry the unit, preferably on another node
      return new SerializationFailure({
        ...base,
        message: `${prefix}the cluster node is not ready and applied nothing; retry the unit on another node: ${text}`
      })
    case "ConnectionError":
      return new ConnectionError({ ...base, message: `${prefix}${text}` })
    case "ConnectionLost":
      return new ConnectionLost({
        ...base,
        message: `${prefix}connection lost (${d.code ?? d.errno ?? text}): ${text}`
      })
    case undefined:
      return original ?? new SqlError({ cause, message: `${prefix}${text}` })
  }
}
