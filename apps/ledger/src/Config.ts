/**
 * Configuration, read through Effect `Config` (environment variables by default; see docs/ledger.md).
 */
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Path from "node:path"

export interface Settings {
  /**
   * `mysql://…` or `postgres://…`; none: the embedded default (MariaDB) under `dataDir`. Several urls,
   * comma-separated: the nodes of a multi-primary (Galera) cluster, the first preferred and the others taking over
   * when it leaves the cluster (MariaDB only).
   */
  readonly databaseUrl: Option.Option<Redacted.Redacted<string>>
  /** Read replicas of `databaseUrl` (comma-separated urls): balances and histories are read there. */
  readonly replicaUrls: Option.Option<Redacted.Redacted<string>>
  /** How long a read waits for a replica to have applied the client's own writes before it reads the primary. */
  readonly readYourWritesTimeout: Duration.DurationInput
  readonly dataDir: string
  readonly host: string
  /** 0 picks a free port. */
  readonly tcpPort: number
  readonly httpPort: number
  readonly token: Redacted.Redacted<string>
  readonly maxLineBytes: number
  /** Authenticated TCP connections. */
  readonly maxConnections: number
  /** TCP connections that have not authenticated yet: a budget of their own (the oldest is closed when full). */
  readonly maxUnauthenticated: number
  /** A TCP connection must authenticate within this, from the moment it is accepted. */
  readonly authTimeout: Duration.DurationInput
  /** The largest HTTP request body (bytes); more is 413. */
  readonly maxBodyBytes: number
  /** An HTTP client must send its headers within this… */
  readonly httpHeadersTimeout: Duration.DurationInput
  /** …and its whole request within this. */
  readonly httpRequestTimeout: Duration.DurationInput
  readonly idleTimeout: Duration.DurationInput
  /** A client that reads none of its answers for this long is closed (TCP). */
  readonly writeTimeout: Duration.DurationInput
  /** HTTP: an idle keep-alive connection is closed after this… */
  readonly httpIdleTimeout: Duration.DurationInput
  /** …and at most this many HTTP connections are open at once (more are closed at once). */
  readonly httpMaxConnections: number
  /**
   * The embedded server only: `false` (the default) is full durability (every commit flushed to disk, doublewrite
   * buffer on); `true` trades it for speed — an OS crash or power loss can lose acknowledged transfers.
   */
  readonly fastUnsafe: boolean
  readonly shutdownTimeout: Duration.DurationInput
  readonly requestTimeout: Duration.DurationInput
  readonly poolSize: number
  readonly acquireTimeout: Duration.DurationInput
}

export class LedgerConfig extends Context.Tag("ledger/LedgerConfig")<LedgerConfig, Settings>() {}

/** Defaults for everything but the token and the database. */
export const defaults = {
  databaseUrl: Option.none(),
  replicaUrls: Option.none(),
  readYourWritesTimeout: "1 second",
  dataDir: ".data/mysql",
  host: "127.0.0.1",
  tcpPort: 7070,
  httpPort: 8080,
  maxLineBytes: 64 * 1024,
  maxConnections: 256,
  maxUnauthenticated: 64,
  authTimeout: "5 seconds",
  maxBodyBytes: 1024 * 1024,
  httpHeadersTimeout: "10 seconds",
  httpRequestTimeout: "30 seconds",
  idleTimeout: "60 seconds",
  writeTimeout: "30 seconds",
  httpIdleTimeout: "5 seconds",
  httpMaxConnections: 1024,
  fastUnsafe: false,
  shutdownTimeout: "10 seconds",
  requestTimeout: "10 seconds",
  poolSize: 10,
  acquireTimeout: "5 seconds"
} satisfies Omit<Settings, "token">

/** The shortest token accepted: a short one could be guessed. */
export const MIN_TOKEN_LENGTH = 16

/** A TCP port; 0 picks a free one. */
const port = (name: string) =>
  Config.integer(name).pipe(
    Config.validate({ message: "must be a port number (0 picks a free one)", validation: (n) => n >= 0 && n <= 65535 })
  )

const raw = Config.all({
  databaseUrl: Config.option(Config.redacted("DATABASE_URL")),
  replicaUrls: Config.option(Config.redacted("DATABASE_REPLICA_URLS")),
  readYourWritesTimeout: Config.duration("LEDGER_READ_YOUR_WRITES_TIMEOUT").pipe(
    Config.withDefault(defaults.readYourWritesTimeout)
  ),
  dataDir: Config.string("LEDGER_DATA_DIR").pipe(Config.withDefault(defaults.dataDir)),
  host: Config.string("LEDGER_HOST").pipe(Config.withDefault(defaults.host)),
  tcpPort: port("LEDGER_TCP_PORT").pipe(Config.withDefault(defaults.tcpPort)),
  httpPort: port("LEDGER_HTTP_PORT").pipe(Config.withDefault(defaults.httpPort)),
  token: Config.option(
    Config.redacted("LEDGER_TOKEN").pipe(
      Config.validate({
        message: `LEDGER_TOKEN must be at least ${MIN_TOKEN_LENGTH} characters (unset, a random one is generated)`,
        validation: (token) => Redacted.value(token).length >= MIN_TOKEN_LENGTH
      })
    )
  ),
  maxLineBytes: Config.integer("LEDGER_MAX_LINE_BYTES").pipe(
    Config.validate({ message: "must be at least 256", validation: (n) => n >= 256 }),
    Config.withDefault(defaults.maxLineBytes)
  ),
  maxConnections: Config.integer("LEDGER_MAX_CONNECTIONS").pipe(
    Config.validate({ message: "must be positive", validation: (n) => n > 0 }),
    Config.withDefault(defaults.maxConnections)
  ),
  maxUnauthenticated: Config.integer("LEDGER_MAX_UNAUTHENTICATED").pipe(
    Config.validate({ message: "must be positive", validation: (n) => n > 0 }),
    Config.withDefault(defaults.maxUnauthenticated)
  ),
  authTimeout: Config.duration("LEDGER_AUTH_TIMEOUT").pipe(Config.withDefault(defaults.authTimeout)),
  maxBodyBytes: Config.integer("LEDGER_MAX_BODY_BYTES").pipe(
    Config.validate({ message: "must be at least 1024", validation: (n) => n >= 1024 }),
    Config.withDefault(defaults.maxBodyBytes)
  ),
  httpHeadersTimeout: Config.duration("LEDGER_HTTP_HEADERS_TIMEOUT").pipe(
    Config.withDefault(defaults.httpHeadersTimeout)
  ),
  httpRequestTimeout: Config.duration("LEDGER_HTTP_REQUEST_TIMEOUT").pipe(
    Config.withDefault(defaults.httpRequestTimeout)
  ),
  idleTimeout: Config.duration("LEDGER_IDLE_TIMEOUT").pipe(Config.withDefault(defaults.idleTimeout)),
  writeTimeout: Config.duration("LEDGER_WRITE_TIMEOUT").pipe(Config.withDefault(defaults.writeTimeout)),
  httpIdleTimeout: Config.duration("LEDGER_HTTP_IDLE_TIMEOUT").pipe(Config.withDefault(defaults.httpIdleTimeout)),
  httpMaxConnections: Config.integer("LEDGER_HTTP_MAX_CONNECTIONS").pipe(
    Config.validate({ message: "must be positive", validation: (n) => n > 0 }),
    Config.withDefault(defaults.httpMaxConnections)
  ),
  fastUnsafe: Config.boolean("LEDGER_FAST_UNSAFE").pipe(Config.withDefault(defaults.fastUnsafe)),
  shutdownTimeout: Config.duration("LEDGER_SHUTDOWN_TIMEOUT").pipe(Config.withDefault(defaults.shutdownTimeout)),
  requestTimeout: Config.duration("LEDGER_REQUEST_TIMEOUT").pipe(Config.withDefault(defaults.requestTimeout)),
  poolSize: Config.integer("LEDGER_POOL_SIZE").pipe(
    Config.validate({ message: "must be positive", validation: (n) => n > 0 }),
    Config.withDefault(defaults.poolSize)
  ),
  acquireTimeout: Config.duration("LEDGER_POOL_ACQUIRE_TIMEOUT").pipe(Config.withDefault(defaults.acquireTimeout))
})

export const logLevel = Config.logLevel("LEDGER_LOG_LEVEL").pipe(Config.withDefault(LogLevel.Info))
export const logFormat = Config.literal(
  "logfmt",
  "json",
  "pretty"
)("LEDGER_LOG_FORMAT").pipe(Config.withDefault("logfmt" as const))

/**
 * Without `LEDGER_TOKEN`, a random token is generated once and kept in `<dataDir>/../ledger-token` (mode 0600), so
 * that local clients can read it; the token itself is never logged.
 */
const localToken = (dataDir: string) =>
  Effect.gen(function* () {
    const file = Path.join(Path.dirname(Path.resolve(dataDir)), "ledger-token")
    const token = yield* Effect.sync(() => {
      if (Fs.existsSync(file)) return Fs.readFileSync(file, "utf8").trim()
      Fs.mkdirSync(Path.dirname(file), { recursive: true })
      const fresh = Crypto.randomBytes(24).toString("base64url")
      Fs.writeFileSync(file, fresh + "\n", { mode: 0o600 })
      return fresh
    })
    yield* Effect.logInfo("no LEDGER_TOKEN set: using the local token").pipe(Effect.annotateLogs("token_file", file))
    return Redacted.make(token)
  })

/** Settings from the environment. */
export const fromEnv: Effect.Effect<Settings, ConfigError.ConfigError> = Effect.gen(function* () {
  const c = yield* raw
  const token = Option.isSome(c.token) ? c.token.value : yield* localToken(c.dataDir)
  return { ...c, token }
})

export const layer = (settings: Settings) => Layer.succeed(LedgerConfig, settings)

export const layerFromEnv = Layer.effect(LedgerConfig, fromEnv)

/** Compares a presented token with the configured one in constant time. */
export const tokenMatches = (expected: Redacted.Redacted<string>, presented: string): boolean => {
  const a = Crypto.createHash("sha256").update(Redacted.value(expected)).digest()
  const b = Crypto.createHash("sha256").update(presented).digest()
  return Crypto.timingSafeEqual(a, b)
}

/** A comma-separated list of urls (each kept redacted). */
export const urlList = (value: Redacted.Redacted<string>): ReadonlyArray<Redacted.Redacted<string>> =>
  Redacted.value(value)
    .split(",")
    .map((u) => u.trim())
    .filter((u) => u !== "")
    .map((u) => Redacted.make(u))
