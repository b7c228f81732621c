/**
 * What PostgreSQL's errors mean (SQLSTATEs and node-postgres's connection errors live here and nowhere else): the
 * kind of a failure, whether the connection is gone, and advice for a failed connect. Pure data, no imports of the
 * core, so `SessionError` can build its classes from it.
 *
 * @internal
 */
import * as Predicate from "effect/Predicate"
import type { ConnectAdvice, DriverErrors, ErrorDescription, ErrorKind } from "../types.js"

/** Set by the pg connection on every error it hands to the core: the errors of this driver are told apart by it. */
export const PG_ERROR = Symbol.for("@sessionfx/session/pgError")

/** Whether an error came from the pg driver. @internal */
export const isPgError = (cause: unknown): boolean =>
  Predicate.isObject(cause) && (cause as Record<symbol, unknown>)[PG_ERROR] === true

/** Marks an error as the pg driver's (and, with `fatal`, as one that ended the connection). @internal */
export const mark = <E>(err: E, fatal = false): E => {
  if (Predicate.isObject(err)) {
    const e = err as Record<symbol | string, unknown>
    e[PG_ERROR] = true
    if (fatal) e.fatal = true
  }
  return err
}

interface PgFields {
  readonly code?: unknown
  readonly fatal?: unknown
  readonly message?: unknown
  readonly detail?: unknown
  readonly constraint?: unknown
  readonly column?: unknown
}

const fields = (cause: unknown): PgFields => (Predicate.isObject(cause) ? (cause as PgFields) : {})
const codeOf = (cause: unknown): string | undefined => {
  const code = fields(cause).code
  return typeof code === "string" ? code : undefined
}

/** SQLSTATEs of a connection that is gone: admin shutdown, crash shutdown, cannot connect now, idle-session and idle-in-transaction timeouts, class 08. */
const lostStates = new Set(["57P01", "57P02", "57P03", "57P05", "25P03"])
const lostCodes = new Set(["ECONNRESET", "EPIPE", "ETIMEDOUT", "PROTOCOL_CONNECTION_LOST"])
const connectCodes = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH", "ENOENT"])
const LOST_TEXT = /connection terminated|not queryable|connection ended|connection error|closed state/i

/** Whether a driver error means the connection can no longer be used. @internal */
export const isFatal = (cause: unknown): boolean => {
  if (!Predicate.isObject(cause)) return false
  const c = fields(cause)
  const code = codeOf(cause)
  if (c.fatal === true) return true
  if (code !== undefined && (lostStates.has(code) || lostCodes.has(code) || code.startsWith("08"))) return true
  // node-postgres's own errors for a closed connection carry no code
  return code === undefined && typeof c.message === "string" && LOST_TEXT.test(c.message)
}

const byState: ReadonlyMap<string, ErrorKind> = new Map<string, ErrorKind>([
  ["40P01", "Deadlock"],
  ["40001", "SerializationFailure"],
  ["55P03", "LockWaitTimeout"],
  ["57014", "StatementTimeout"],
  ["23505", "DuplicateKey"],
  ["23503", "ForeignKeyViolation"],
  ["23514", "CheckViolation"],
  ["23502", "NotNullViolation"],
  ["25006", "ReadOnlyTransaction"],
  // invalid authorization, invalid catalog name, too many connections, insufficient privilege at connect
  ["28000", "ConnectionError"],
  ["28P01", "ConnectionError"],
  ["3D000", "ConnectionError"],
  ["53300", "ConnectionError"]
])

const kindOf = (cause: unknown, code: string | undefined): ErrorKind | undefined => {
  if (code !== undefined) {
    const kind = byState.get(code)
    if (kind !== undefined) return kind
  }
  if (isFatal(cause)) return "ConnectionLost"
  if (code !== undefined && connectCodes.has(code)) return "ConnectionError"
  return undefined
}

/** `Key (id)=(1) already exists.` → `id=1`. */
const keyOf = (detail: unknown): string | undefined => {
  if (typeof detail !== "string") return undefined
  const m = /Key \((.*)\)=\((.*)\) already exists/.exec(detail)
  return m === null ? undefined : `${m[1]}=${m[2]}`
}

/** What a driver error is, for `SessionError.classify`. @internal */
export const describe = (cause: unknown): ErrorDescription => {
  const c = fields(cause)
  const code = codeOf(cause)
  const text = String(c.message ?? String(cause))
  const kind = kindOf(cause, code)
  const constraint = typeof c.constraint === "string" ? c.constraint : undefined
  return {
    kind,
    errno: undefined,
    code,
    text,
    key: kind === "DuplicateKey" ? (keyOf(c.detail) ?? constraint) : undefined,
    constraint: kind === "ForeignKeyViolation" || kind === "CheckViolation" ? constraint : undefined,
    column: kind === "NotNullViolation" && typeof c.column === "string" ? c.column : undefined
  }
}

/** A cancel or terminate for a backend that is already gone: `pg_cancel_backend` answers false, never an error. */
export const isNoSuchThread = (_cause: unknown): boolean => false

/** `undefined_table`. @internal */
export const isNoSuchTable = (cause: unknown): boolean => codeOf(cause) === "42P01"

/** A wait for a causality token that ran out of time (`lock_timeout` / `statement_timeout` on the wait). */
export const isWaitTimeout = (cause: unknown): boolean => codeOf(cause) === "55P03" || codeOf(cause) === "57014"

/** PostgreSQL has no Galera-like "node not ready". */
export const isNodeNotReady = (_cause: unknown): boolean => false

/** No cluster of nodes on PostgreSQL: a COMMIT that failed with an answer did not commit. @internal */
export const isCommitAmbiguous = (_cause: unknown): boolean => false

const permanent = (advice: string): ConnectAdvice => ({ retryable: false, advice })

const adviceByCode: ReadonlyMap<string, ConnectAdvice> = new Map([
  ["28P01", permanent("check the username and password (percent-encode @ : / ? # in a url's password)")],
  ["28000", permanent("pg_hba.conf refuses this user, host or database: add a line for it, or connect otherwise")],
  ["3D000", permanent("the database does not exist: create it, or fix the database name (the url's path)")],
  ["42501", permanent("the user may not connect to this database: GRANT CONNECT, or connect to another database")],
  ["53300", { retryable: true, advice: "the server has no free connection (max_connections): lower pool.size" }],
  ["57P03", { retryable: true, advice: "the server is starting up or shutting down: wait and retry" }],
  ["ENOTFOUND", permanent("the host name does not resolve: check the host")],
  ["ECONNREFUSED", { retryable: true, advice: "nothing listens there: is the server running, on this host and port?" }]
])

/** Advice for a driver error met while opening a connection; `undefined` when it has nothing to add. @internal */
export const connectAdvice = (cause: unknown): ConnectAdvice | undefined => {
  const code = codeOf(cause)
  return code === undefined ? undefined : adviceByCode.get(code)
}

/** What the core asks of this driver's errors (`ServerDriver.errors`). @internal */
export const errors: DriverErrors = {
  isFatal,
  isNodeNotReady,
  isCommitAmbiguous,
  isNoSuchThread,
  isWaitTimeout,
  isNoSuchTable
}
