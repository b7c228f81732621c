import * as SessionError from "@sessionfx/session/SessionError"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import * as Mysql from "mysql2/promise"

/** A plain mysql2 connection for the scope (the cluster tests use the driver directly; see docs/scale-out.md). */
export const connect = (url: Redacted.Redacted<string>): Effect.Effect<Mysql.Connection, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      const conn = await Mysql.createConnection({ uri: Redacted.value(url), connectTimeout: 10_000 })
      conn.on("error", () => {})
      return conn
    }),
    (conn) => Effect.sync(() => conn.destroy())
  )

/** The driver's error, kept as a typed failure (not a defect), so a test can assert its errno and classification. */
export class DriverError extends Data.TaggedError("DriverError")<{
  readonly errno: number | undefined
  readonly code: string | undefined
  readonly message: string
  readonly cause: unknown
}> {}

export const query = <A = Record<string, unknown>>(
  conn: Mysql.Connection,
  sql: string,
  values: ReadonlyArray<unknown> = []
): Effect.Effect<A, DriverError> =>
  Effect.tryPromise({
    try: async () => (await conn.query(sql, values as Array<unknown>))[0] as A,
    catch: (cause) => {
      const e = cause as { errno?: number; code?: string; sqlMessage?: string; message?: string }
      return new DriverError({
        errno: e.errno,
        code: e.code,
        message: e.sqlMessage ?? e.message ?? String(cause),
        cause
      })
    }
  })

export const rows = <A = Record<string, unknown>>(
  conn: Mysql.Connection,
  sql: string,
  values: ReadonlyArray<unknown> = []
): Effect.Effect<ReadonlyArray<A>, DriverError> => query<ReadonlyArray<A>>(conn, sql, values)

/** The GTID of the statement's commit, from its OK packet (needs `session_track_system_variables='last_gtid'`). */
export const gtidOf = (header: Mysql.ResultSetHeader): string | undefined => {
  const changes = (header as { stateChanges?: { systemVariables?: Record<string, string> } }).stateChanges
  return changes?.systemVariables?.last_gtid
}

export const classify = (error: DriverError): SessionError.SessionError => SessionError.classify(error.cause)
