/**
 * Where the servers of an Engine are: its url(s) parsed and checked, their descriptions, and the first answer of
 * each (`SELECT VERSION()`).
 *
 * @internal
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as SessionError from "../SessionError.js"
import type { Dialect } from "./driver/choose.js"
import type { RawConnection, SslOptions } from "./driver/types.js"
import type { EngineImpl } from "./engine.js"
import { describeCause } from "./pool.js"

/** Where one server is. @internal */
export interface Target {
  /** Which database the url's scheme names: MySQL / MariaDB (`mysql:`, `mariadb:`) or PostgreSQL. */
  readonly dialect: Dialect
  /** The url had more than one `@`: a password with an unencoded `@` (or `/`, `?`, `#`) is the usual cause. */
  readonly ambiguousUserinfo: boolean
  readonly host: string
  readonly port: number
  readonly database: string | undefined
  readonly user: string | undefined
  readonly password: Redacted.Redacted | undefined
  readonly socketPath: string | undefined
  readonly ssl: string | SslOptions | undefined
}

/** The database family an Engine's url names. @internal */
export type { Dialect }

const SCHEMES: Readonly<Record<string, Dialect>> = {
  "mysql:": "mysql",
  "mariadb:": "mysql",
  "postgres:": "postgres",
  "postgresql:": "postgres"
}

const EXPECTED =
  "expected mysql://user:password@host:3306/database, mariadb://…, postgres://user:password@host:5432/database or postgresql://…"

/** What a server's address is made of (the Engine options that say where to connect). @internal */
export interface TargetOptions {
  readonly url?: Redacted.Redacted | string | undefined
  readonly host?: string | undefined
  readonly database?: string | undefined
  readonly username?: string | undefined
  readonly password?: Redacted.Redacted | undefined
  readonly socketPath?: string | undefined
  readonly ssl?: string | SslOptions | undefined
}

/** @internal */
export const parseTarget = (
  options: TargetOptions,
  port: number | undefined
): Effect.Effect<Target, SessionError.ConnectionError> =>
  Effect.suspend(() => {
    if (options.url !== undefined) {
      const raw = Redacted.isRedacted(options.url) ? Redacted.value(options.url) : options.url
      const ambiguousUserinfo = raw.split("@").length > 2
      let url: URL
      try {
        url = new URL(raw)
      } catch {
        return Effect.fail(
          new SessionError.ConnectionError({
            retryable: false,
            message: `the Engine url is not a valid URL; ${EXPECTED} (the value is not shown because it may contain a password)${ambiguousUserinfo ? encodeHint : ""}`
          })
        )
      }
      const dialect = SCHEMES[url.protocol]
      if (dialect === undefined) {
        return Effect.fail(
          new SessionError.ConnectionError({
            retryable: false,
            message: `the Engine url has scheme "${url.protocol}"; ${EXPECTED}`
          })
        )
      }
      const port = url.port === "" ? (dialect === "postgres" ? 5432 : 3306) : Number(url.port)
      const sslParam = url.searchParams.get(dialect === "postgres" ? "sslmode" : "ssl")
      const ssl: string | SslOptions | undefined =
        options.ssl ?? (sslParam === null || sslParam === "false" ? undefined : sslParam === "true" ? {} : sslParam)
      return Effect.succeed<Target>({
        dialect,
        ambiguousUserinfo,
        host: url.hostname === "" ? "localhost" : url.hostname.replace(/^\[|\]$/g, ""),
        port,
        database: url.pathname.length > 1 ? decodeURIComponent(url.pathname.slice(1)) : options.database,
        user: url.username !== "" ? decodeURIComponent(url.username) : options.username,
        password: url.password !== "" ? Redacted.make(decodeURIComponent(url.password)) : options.password,
        // libpq names the socket's directory `host`
        socketPath: url.searchParams.get(dialect === "postgres" ? "host" : "socket") ?? options.socketPath,
        ssl
      })
    }
    return Effect.succeed<Target>({
      dialect: "mysql",
      ambiguousUserinfo: false,
      host: options.host ?? "localhost",
      port: port ?? 3306,
      database: options.database,
      user: options.username,
      password: options.password,
      socketPath: options.socketPath,
      ssl: options.ssl
    })
  })

/** The urls of one engine name one database family. @internal */
export const sameDatabase = (targets: ReadonlyArray<Target>): Effect.Effect<void, SessionError.InvalidOption> =>
  targets.every((t) => t.dialect === targets[0]?.dialect)
    ? Effect.void
    : Effect.fail(
        new SessionError.InvalidOption({
          option: "replicas",
          message:
            "Engine option replicas: the urls of one engine must all name the same database (all mysql:// or all postgres://)"
        })
      )

const encodeHint =
  "; the url contains more than one '@': percent-encode the password (encodeURIComponent: '@' is %40, '/' is %2F, '#' is %23)"

/** @internal */
export const describeTarget = (t: Target) =>
  `${t.dialect === "postgres" ? "postgres" : "mysql"}://${t.user ?? ""}@${t.socketPath ? `[socket ${t.socketPath}]` : `${t.host}:${t.port}`}/${t.database ?? ""}`

/** @internal */
export const nameOf = (t: Target) =>
  t.socketPath ? `${t.socketPath}/${t.database ?? ""}` : `${t.host}:${t.port}/${t.database ?? ""}`

/** @internal */
export const connectionOf = (target: Target, connectTimeoutMs: number) => ({
  host: target.host,
  port: target.port,
  database: target.database,
  user: target.user,
  password: target.password === undefined ? undefined : Redacted.value(target.password),
  socketPath: target.socketPath,
  ssl: target.ssl,
  connectTimeoutMs
})

/** @internal OpenTelemetry database conventions; db.system follows the server's flavor once it has answered. */
export const spanAttributesOf = (
  options: { readonly spanAttributes?: Record<string, unknown> | undefined },
  target: Target
): Array<readonly [string, unknown]> => [
  ...(options.spanAttributes ? Object.entries(options.spanAttributes) : []),
  ["server.address", target.host],
  ["server.port", target.port],
  ...(target.database ? ([["db.namespace", target.database]] as const) : []),
  ["db.system", target.dialect === "postgres" ? "postgresql" : "mysql"],
  ["db.system.name", target.dialect === "postgres" ? "postgresql" : "mysql"]
]

/** `SELECT VERSION()` on a connection of its own, bounded by `connectTimeout`. */
export const serverVersion = (
  impl: EngineImpl,
  target: Target,
  connectTimeoutMs: number
): Effect.Effect<string, SessionError.ConnectionError> => {
  const describe = describeTarget(target)
  const fail = (cause: unknown) =>
    new SessionError.ConnectionError({
      cause,
      message: `cannot connect to ${describe}: ${describeCause(cause)}${target.ambiguousUserinfo ? encodeHint : ""}`
    })
  return Effect.async<string, SessionError.ConnectionError>((resume) => {
    let conn: RawConnection | undefined
    let settled = false
    impl.pool.connect((err, c) => {
      if (settled) {
        if (c) c.destroy()
        return
      }
      if (err || !c) {
        settled = true
        return resume(Effect.fail(fail(err)))
      }
      conn = c
      impl.options.driver.readVersion(c, (e, version) => {
        c.destroy()
        if (settled) return
        settled = true
        if (e) resume(Effect.fail(fail(e)))
        else resume(Effect.succeed(version ?? ""))
      })
    })
    return Effect.sync(() => {
      settled = true
      if (conn) conn.destroy()
    })
  }).pipe(
    Effect.timeoutFail({
      duration: connectTimeoutMs + 1000,
      onTimeout: () => fail(new Error(`no answer within ${connectTimeoutMs} ms`))
    })
  )
}

/** A duration option in milliseconds; `infinite` for `Duration.infinity`. */
/** @internal */
export const millisOf = (d: Duration.DurationInput | undefined, infinite?: number): number | undefined => {
  if (d === undefined) return undefined
  const decoded = Duration.decode(d)
  return Duration.isFinite(decoded) || infinite === undefined ? Duration.toMillis(decoded) : infinite
}

/** Drains every server up to `shutdownTimeout`, then closes what is left. */
/** @internal */
export const closeServers = (servers: ReadonlyArray<EngineImpl>, shutdownTimeoutMs: number) =>
  Effect.forEach(
    servers,
    (server) =>
      Effect.gen(function* () {
        const drained = yield* server.pool.drain(shutdownTimeoutMs)
        if (!drained) {
          yield* Effect.logWarning(
            `sessionfx: ${server.pool.inUse} connection(s) to ${server.options.describe} still lent after shutdownTimeout; closing them (the server rolls back their transactions)`
          )
        }
        server.pool.closeAll()
        server.closeKillers()
        server.stopTimers()
      }),
    { concurrency: "unbounded", discard: true }
  )

/** Each server's version; the first server must answer, a replica or another node that does not starts out. */
/** @internal */
export const versionsOf = (
  servers: ReadonlyArray<EngineImpl>,
  targets: ReadonlyArray<Target>,
  o: { readonly connectTimeoutMs: number; readonly roleOf: (i: number) => string }
) =>
  Effect.forEach(
    servers,
    (server, i) =>
      i === 0
        ? Effect.map(serverVersion(server, targets[i]!, o.connectTimeoutMs), (v) => v as string | undefined)
        : Effect.catchAll(serverVersion(server, targets[i]!, o.connectTimeoutMs), (e) =>
            Effect.as(
              Effect.logWarning(
                `sessionfx: ${o.roleOf(i)} ${server.options.name} is not answering (${e.message}); it starts out of rotation`
              ),
              undefined
            )
          ),
    { concurrency: "unbounded" }
  )
