/**
 * The few PostgreSQL client calls `PgServer` needs (postgres.js), as Effects that fail with `PgFailure`.
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import postgres from "postgres"

/** @internal */
export interface PgFailure {
  /** The SQLSTATE, or the socket error code (`ECONNREFUSED`, `ENOENT`) */
  readonly code: string | undefined
  readonly message: string
}

/** @internal */
export type PgConnection = postgres.Sql

/** @internal */
export interface ConnectOptions {
  /** A host name, or the directory of the server's unix socket */
  readonly host: string
  readonly port: number
  readonly username: string
  readonly password?: string | undefined
  readonly database: string
  /** seconds; default 10 */
  readonly connectTimeout?: number | undefined
}

const redact = (text: string, secrets: ReadonlyArray<string>): string =>
  secrets.reduce((out, secret) => (secret === "" ? out : out.split(secret).join("***")), text)

const failure = (error: unknown, secrets: ReadonlyArray<string>): PgFailure => {
  const code = typeof error === "object" && error !== null && "code" in error ? String(error.code) : undefined
  const message = error instanceof Error ? error.message : String(error)
  return { code, message: redact(message, secrets) }
}

/** @internal */
export const close = (conn: PgConnection): Effect.Effect<void> =>
  Effect.promise(() => conn.end({ timeout: 0 }).catch(() => undefined))

/** One connection, opened (and checked with `SELECT 1`) before it is returned. @internal */
export const connect = (options: ConnectOptions): Effect.Effect<PgConnection, PgFailure> =>
  Effect.suspend(() => {
    const conn = postgres({
      host: options.host,
      port: options.port,
      user: options.username,
      pass: options.password ?? "",
      database: options.database,
      max: 1,
      connect_timeout: options.connectTimeout ?? 10,
      onnotice: () => {},
      prepare: false
    })
    return query(conn, "SELECT 1", [options.password ?? ""]).pipe(
      Effect.as(conn),
      Effect.onError(() => close(conn))
    )
  })

/** A statement without parameters, by the simple query protocol. @internal */
export const query = <A = Record<string, unknown>>(
  conn: PgConnection,
  text: string,
  secrets: ReadonlyArray<string> = []
): Effect.Effect<ReadonlyArray<A>, PgFailure> =>
  Effect.tryPromise({
    try: () => conn.unsafe(text).simple() as unknown as Promise<ReadonlyArray<A>>,
    catch: (error) => failure(error, secrets)
  })

/** A string literal: `'…'` with quotes doubled. @internal */
export const literal = (value: string): string => `'${value.replace(/'/g, "''")}'`

/** A quoted identifier. @internal */
export const identifier = (value: string): string => `"${value.replace(/"/g, '""')}"`
