import * as Predicate from "effect/Predicate"

/** What a failure to open a connection means for the user: whether waiting can help, and what to do. @internal */
export interface ConnectAdvice {
  readonly retryable: boolean
  readonly advice: string | undefined
}

const permanent = (advice: string): ConnectAdvice => ({ retryable: false, advice })

const byErrno: ReadonlyMap<number, ConnectAdvice> = new Map([
  [1045, permanent("check the username and password (percent-encode @ : / ? # in a url's password)")],
  [1044, permanent("the user may not use this database: GRANT it privileges there, or connect to another database")],
  [1049, permanent("the database does not exist: create it, or fix the database name (the url's path)")],
  [1130, permanent("the server does not accept this user from this host: create the user for this host ('user'@'%')")],
  [1251, permanent("the server asks for an authentication method the client cannot use: upgrade the server's user")],
  [1129, permanent("the server blocked this host after too many failed connections: run FLUSH HOSTS on the server")],
  [1040, { retryable: true, advice: "the server has no free connection (max_connections): lower pool.size or wait" }],
  [1203, { retryable: true, advice: "the user has too many connections (max_user_connections): lower pool.size" }]
])

const byCode: ReadonlyMap<string, ConnectAdvice> = new Map([
  ["ENOTFOUND", permanent("the host name does not resolve: check the host")],
  ["ECONNREFUSED", { retryable: true, advice: "nothing listens there: is the server running, on this host and port?" }]
])

/** Advice for a driver error met while opening a connection; `undefined` when it has nothing to add. @internal */
export const connectAdvice = (cause: unknown): ConnectAdvice | undefined => {
  if (!Predicate.isObject(cause)) return undefined
  const c = cause as { errno?: unknown; code?: unknown }
  return (
    (typeof c.errno === "number" ? byErrno.get(c.errno) : undefined) ??
    (typeof c.code === "string" ? byCode.get(c.code) : undefined)
  )
}
