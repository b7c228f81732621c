/**
 * What MySQL's and MariaDB's errors mean (error numbers and mysql2's codes live here and nowhere else): the kind of
 * a failure, whether the connection is gone, and advice for a failed connect. Pure data, no imports of the core, so
 * `SessionError` can build its classes from it.
 *
 * @internal
 */
import * as Predicate from "effect/Predicate"
import type { ConnectAdvice, DriverErrors, ErrorDescription, ErrorKind } from "../types.js"

const lostCodes = new Set([
  "PROTOCOL_CONNECTION_LOST",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "PROTOCOL_SEQUENCE_TIMEOUT",
  "ER_SERVER_SHUTDOWN",
  "ER_CONNECTION_KILLED",
  "ER_CLIENT_INTERACTION_TIMEOUT"
])
const lostErrnos = new Set([2006, 2013, 4031, 1927, 1053, 2055])
const connectCodes = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH", "ENOENT"])

interface DriverError {
  readonly errno?: unknown
  readonly code?: unknown
  readonly fatal?: unknown
  readonly message?: unknown
  readonly sqlMessage?: unknown
}

const fields = (cause: unknown): DriverError => (Predicate.isObject(cause) ? (cause as DriverError) : {})
const errnoOf = (cause: unknown): number | undefined => {
  const errno = fields(cause).errno
  return typeof errno === "number" ? errno : undefined
}

/** Whether a driver error means the connection can no longer be used. @internal */
export const isFatal = (cause: unknown): boolean => {
  if (!Predicate.isObject(cause)) return false
  const c = fields(cause)
  return (
    c.fatal === true ||
    (typeof c.code === "string" && lostCodes.has(c.code)) ||
    (typeof c.errno === "number" && lostErrnos.has(c.errno))
  )
}

const byErrno: ReadonlyMap<number, ErrorKind> = new Map<number, ErrorKind>([
  [1213, "Deadlock"],
  [1205, "LockWaitTimeout"],
  [1062, "DuplicateKey"],
  [1586, "DuplicateKey"],
  [1451, "ForeignKeyViolation"],
  [1452, "ForeignKeyViolation"],
  [1216, "ForeignKeyViolation"],
  [1217, "ForeignKeyViolation"],
  [3819, "CheckViolation"],
  [4025, "CheckViolation"],
  [1048, "NotNullViolation"],
  [1364, "NotNullViolation"],
  [1792, "ReadOnlyTransaction"],
  [1290, "ReadOnlyTransaction"],
  [1969, "StatementTimeout"],
  [3024, "StatementTimeout"],
  [1180, "SerializationFailure"],
  [1614, "SerializationFailure"],
  // MySQL Group Replication: the group did not certify the transaction at COMMIT; it was rolled back
  [3101, "SerializationFailure"],
  [8002, "SerializationFailure"],
  [9007, "SerializationFailure"],
  [1040, "ConnectionError"],
  [1045, "ConnectionError"],
  [1044, "ConnectionError"],
  [1049, "ConnectionError"],
  [1129, "ConnectionError"],
  [1130, "ConnectionError"],
  [1203, "ConnectionError"],
  [1251, "ConnectionError"]
])

const quoted = (message: string, index: number): string | undefined => [...message.matchAll(/'([^']*)'/g)][index]?.[1]

/**
 * Galera's 1047 "WSREP has not yet prepared node for application use": the node is not in the primary component
 * and refused the statement before running it (a COMMIT refused this way replicated nothing). Plain MySQL's 1047
 * is "Unknown command", a client bug.
 *
 * @internal
 */
export const isNodeNotReady = (cause: unknown): boolean =>
  errnoOf(cause) === 1047 && /wsrep/i.test(String(fields(cause).sqlMessage ?? fields(cause).message ?? ""))

/**
 * Galera's 1180 "Got error … during COMMIT" when the node left the primary component while replicating ("provider
 * status: Not connected to Primary Component"): the other nodes may have applied the transaction all the same (seen
 * in `test/cluster/galera-topology.test.ts`: a retry then met its own row). Plain InnoDB's 1180 is a failed COMMIT.
 *
 * @internal
 */
export const isCommitAmbiguous = (cause: unknown): boolean =>
  errnoOf(cause) === 1180 &&
  /primary component|wsrep|provider status/i.test(String(fields(cause).sqlMessage ?? fields(cause).message ?? ""))

const kindOf = (cause: unknown, errno: number | undefined, code: string | undefined): ErrorKind | undefined => {
  if (errno !== undefined) {
    const kind = byErrno.get(errno)
    if (kind !== undefined) return kind
    if (isNodeNotReady(cause)) return "NodeNotReady"
  }
  if (isFatal(cause)) return "ConnectionLost"
  if (code !== undefined && connectCodes.has(code)) return "ConnectionError"
  return undefined
}

/** What a driver error is, for `SessionError.classify`. @internal */
export const describe = (cause: unknown): ErrorDescription => {
  const c = fields(cause)
  const errno = errnoOf(cause)
  const code = typeof c.code === "string" ? c.code : undefined
  const text = String(c.sqlMessage ?? c.message ?? String(cause))
  const kind = kindOf(cause, errno, code)
  return {
    kind,
    errno,
    code,
    text,
    key: kind === "DuplicateKey" ? quoted(text, 1) : undefined,
    constraint:
      kind === "ForeignKeyViolation"
        ? /CONSTRAINT `([^`]+)`/.exec(text)?.[1]
        : kind === "CheckViolation"
          ? /constraint [`']?([^`'\s]+)/i.exec(text)?.[1]
          : undefined,
    column: kind === "NotNullViolation" ? quoted(text, 0) : undefined
  }
}

/** "Unknown thread id": a KILL for a connection that is already gone. @internal */
export const isNoSuchThread = (cause: unknown): boolean => errnoOf(cause) === 1094

/** "Unknown prepared statement handler": a statement the server no longer has. @internal */
export const isUnknownStatement = (cause: unknown): boolean => errnoOf(cause) === 1243

/** "Table doesn't exist". @internal */
export const isNoSuchTable = (cause: unknown): boolean => errnoOf(cause) === 1146

/** A wait that ran out of time (WSREP_SYNC_WAIT_UPTO_GTID times out with a lock wait timeout). @internal */
export const isWaitTimeout = (cause: unknown): boolean => errnoOf(cause) === 1205

const permanent = (advice: string): ConnectAdvice => ({ retryable: false, advice })

const adviceByErrno: ReadonlyMap<number, ConnectAdvice> = new Map([
  [1045, permanent("check the username and password (percent-encode @ : / ? # in a url's password)")],
  [1044, permanent("the user may not use this database: GRANT it privileges there, or connect to another database")],
  [1049, permanent("the database does not exist: create it, or fix the database name (the url's path)")],
  [1130, permanent("the server does not accept this user from this host: create the user for this host ('user'@'%')")],
  [1251, permanent("the server asks for an authentication method the client cannot use: upgrade the server's user")],
  [1129, permanent("the server blocked this host after too many failed connections: run FLUSH HOSTS on the server")],
  [1040, { retryable: true, advice: "the server has no free connection (max_connections): lower pool.size or wait" }],
  [1203, { retryable: true, advice: "the user has too many connections (max_user_connections): lower pool.size" }]
])

const adviceByCode: ReadonlyMap<string, ConnectAdvice> = new Map([
  ["ENOTFOUND", permanent("the host name does not resolve: check the host")],
  ["ECONNREFUSED", { retryable: true, advice: "nothing listens there: is the server running, on this host and port?" }]
])

/** Advice for a driver error met while opening a connection; `undefined` when it has nothing to add. @internal */
export const connectAdvice = (cause: unknown): ConnectAdvice | undefined => {
  if (!Predicate.isObject(cause)) return undefined
  const c = fields(cause)
  return (
    (typeof c.errno === "number" ? adviceByErrno.get(c.errno) : undefined) ??
    (typeof c.code === "string" ? adviceByCode.get(c.code) : undefined)
  )
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
