import * as Config from "effect/Config"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import { MysqlServerInvalidUrl } from "./serverError.js"

/** @internal */
export interface ConnectionTarget {
  readonly host: string
  readonly port: number
  readonly database: string
  readonly username: string
  readonly password: Redacted.Redacted<string>
}

/** @internal */
export const formatUrl = (target: ConnectionTarget, scheme = "mysql"): Redacted.Redacted<string> => {
  const host = target.host.includes(":") ? `[${target.host}]` : target.host
  return Redacted.make(
    `${scheme}://${encodeURIComponent(target.username)}:${encodeURIComponent(Redacted.value(target.password))}@${host}:${target.port}/${encodeURIComponent(target.database)}`
  )
}

/** A printable form of a target: the password is replaced. */
export const describeTarget = (target: Omit<ConnectionTarget, "password">, scheme = "mysql"): string =>
  `${scheme}://${target.username}:***@${target.host}:${target.port}/${target.database}`

/** @internal */
export interface UrlDialect {
  /** The accepted schemes, without the colon; the first one is the one to suggest. */
  readonly schemes: ReadonlyArray<string>
  readonly defaultPort: number
}

const mysqlDialect: UrlDialect = { schemes: ["mysql", "mariadb"], defaultPort: 3306 }

/**
 * Parses `scheme://user:pass@host:port/db`; the failure is the reason, never containing the password.
 *
 * @internal
 */
export const parseTarget = (
  raw: string,
  dialect: UrlDialect,
  requireDatabase: boolean
): { readonly target: ConnectionTarget } | { readonly reason: string } => {
  const fail = (reason: string) => ({ reason })
  if (raw === "") {
    return fail("it is empty")
  }
  let parsed: URL
  try {
    parsed = new URL(raw)
  } catch {
    return fail("it is not a valid url")
  }
  const scheme = parsed.protocol.replace(/:$/, "")
  if (!dialect.schemes.includes(scheme)) {
    return fail(`unsupported scheme "${scheme}" (use ${dialect.schemes[0]}://)`)
  }
  const host = parsed.hostname.replace(/^\[(.*)\]$/, "$1")
  if (host === "") {
    return fail("the host is missing")
  }
  let port = dialect.defaultPort
  if (parsed.port !== "") {
    port = Number(parsed.port)
    if (!Number.isInteger(port) || port <= 0 || port > 65535) {
      return fail("the port is not a number between 1 and 65535")
    }
  }
  let username: string
  let password: string
  let database: string
  try {
    username = decodeURIComponent(parsed.username)
    password = decodeURIComponent(parsed.password)
    database = decodeURIComponent(parsed.pathname.replace(/^\//, ""))
  } catch {
    return fail("it contains a malformed %-escape")
  }
  if (username === "") {
    return fail("the user name is missing")
  }
  if (database.includes("/")) {
    return fail("the database name contains '/'")
  }
  if (database === "" && requireDatabase) {
    return fail("the database name is missing")
  }
  return { target: { host, port, database, username, password: Redacted.make(password) } }
}

/**
 * Parses `mysql://user:pass@host:port/db`. Errors name the problem and never contain the password.
 *
 * @internal
 */
export const parseUrl = (
  source: string,
  url: Redacted.Redacted<string>,
  options?: { readonly requireDatabase?: boolean | undefined }
): Effect.Effect<ConnectionTarget, MysqlServerInvalidUrl> =>
  Effect.suspend(() => {
    const result = parseTarget(Redacted.value(url).trim(), mysqlDialect, options?.requireDatabase !== false)
    return "target" in result
      ? Effect.succeed(result.target)
      : Effect.fail(new MysqlServerInvalidUrl({ source, reason: result.reason }))
  })

/**
 * A server url from the environment variable `name`: `None` when unset or blank, `invalid` when it cannot be read.
 *
 * @internal
 */
export const envUrl = <E>(
  name: string,
  invalid: (source: string, reason: string) => E
): Effect.Effect<Option.Option<Redacted.Redacted<string>>, E> =>
  Config.option(Config.redacted(name)).pipe(
    Effect.map(Option.filter((value) => Redacted.value(value).trim() !== "")),
    Effect.mapError(() => invalid(name, "it could not be read"))
  )
