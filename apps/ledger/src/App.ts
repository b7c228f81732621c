/**
 * The application as Layers: database (DATABASE_URL or the embedded default), migrations, the Ledger service, and
 * both transports.
 */
import * as HttpServer from "@effect/platform/HttpServer"
import * as Migrator from "@effect/sql/Migrator"
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine } from "@sessionfx/session"
import { MysqlServer } from "@sessionfx/testing"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Duration from "effect/Duration"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as AuthGuard from "./AuthGuard.js"
import * as Config from "./Config.js"
import { LedgerConfig } from "./Config.js"
import * as Http from "./Http.js"
import { Ledger } from "./Ledger.js"
import * as Supervisor from "./Supervisor.js"
import CreateLedger from "./migrations/00001_create_ledger.js"
import IdempotencyKeyBytes from "./migrations/00002_idempotency_key_bytes.js"
import * as Tcp from "./Tcp.js"

/**
 * The embedded server moves money, so it is durable by default: every commit is flushed to disk before it is
 * acknowledged (`innodb_flush_log_at_trx_commit=1`) and pages are written through the doublewrite buffer (no torn
 * page after a power loss). `LEDGER_FAST_UNSAFE=true` (or `--fast-unsafe`) trades that for speed: the log is flushed
 * about once a second, so an OS crash or power loss can lose the last second of acknowledged transfers.
 */
export const durabilityArgs = (fastUnsafe: boolean): ReadonlyArray<string> =>
  fastUnsafe
    ? ["--innodb-flush-log-at-trx-commit=2", "--innodb-doublewrite=0"]
    : ["--innodb-flush-log-at-trx-commit=1", "--innodb-doublewrite=1", "--sync-binlog=1"]

/**
 * The Engine: on `DATABASE_URL`, or else on a persistent embedded server under `LEDGER_DATA_DIR`, which is restarted
 * when it dies (`Supervisor`).
 */
export const DatabaseLive = Layer.unwrapScoped(
  Effect.gen(function* () {
    const config = yield* LedgerConfig
    // no per-unit session settings: they would cost every unit a connection reset (see Ledger.ts)
    const options = {
      name: "ledger",
      pool: { size: config.poolSize, acquireTimeout: config.acquireTimeout },
      shutdownTimeout: config.shutdownTimeout
    } as const
    if (Option.isSome(config.databaseUrl)) {
      const nodes = Config.urlList(config.databaseUrl.value)
      const replicas = Option.match(config.replicaUrls, { onNone: () => [], onSome: Config.urlList })
      yield* Effect.logInfo("ledger database: DATABASE_URL").pipe(
        Effect.annotateLogs({ nodes: nodes.length, replicas: replicas.length })
      )
      // several urls: a multi-primary cluster, this ledger's own node first, the others when it leaves the cluster;
      // replicas: balances and histories (read-only units) read there, after the client's own writes (per
      // connection on TCP: the causality token flows in the connection's fiber)
      const engine = Engine.layer({
        ...options,
        url: nodes.length === 1 ? nodes[0]! : nodes,
        ...(nodes.length > 1 ? { loadBalancing: "failover" as const } : {}),
        ...(replicas.length > 0 ? { replicas, readYourWritesTimeout: config.readYourWritesTimeout } : {})
      })
      return Layer.merge(engine, Supervisor.external)
    }
    // lock waits are bounded by the request timeout; the embedded server also gives up on a lock after 5 s
    const server = yield* MysqlServer.make({
      dataDir: config.dataDir,
      serverArgs: ["--innodb-lock-wait-timeout=5", ...durabilityArgs(config.fastUnsafe)]
    })
    yield* Effect.logInfo("ledger database: no DATABASE_URL, using the embedded default").pipe(
      Effect.annotateLogs({
        kind: server.kind,
        server: `${server.flavor} ${server.version}`,
        address: `${server.host}:${server.port}`,
        database: server.database,
        dataDir: Option.getOrElse(server.dataDir, () => "(external MYSQL_URL)")
      })
    )
    const supervisor = yield* Supervisor.make(server)
    return Layer.merge(
      Engine.layer({ ...options, url: server.url }),
      Layer.succeed(Supervisor.DatabaseSupervisor, supervisor)
    )
  })
)

/**
 * Runs the migrations in src/migrations at start-up, on either database: `@effect/sql`'s Migrator (the Engine's
 * SqlClient is the client) keeps its table in the dialect's types, and each migration picks its dialect's DDL. It is
 * what `MysqlMigrator` runs too, without the schema dump (mysqldump) that only a `schemaDirectory` asks for.
 */
export const MigrationsLive = Layer.effectDiscard(
  Migrator.make({})({
    loader: Migrator.fromRecord({
      "00001_create_ledger": CreateLedger,
      "00002_idempotency_key_bytes": IdempotencyKeyBytes
    }),
    table: "ledger_migrations"
  }).pipe(
    Effect.tap((ran) =>
      Effect.logInfo("ledger migrations").pipe(
        Effect.annotateLogs("applied", ran.length === 0 ? "none" : ran.map(([id, name]) => `${id}_${name}`).join(","))
      )
    ),
    Effect.orDie
  )
)

export const LedgerLive = Ledger.Default.pipe(Layer.provideMerge(Layer.provideMerge(MigrationsLive, DatabaseLive)))

/** Both transports, with one budget of failed authentications per peer across them. */
export const ServersLive = Layer.merge(Tcp.layer, Http.layer).pipe(Layer.provide(AuthGuard.layer()))

/** A database url with its password replaced by `***`. */
export const redactUrl = (url: string): string => {
  try {
    const u = new URL(url)
    if (u.password !== "") u.password = "***"
    return u.toString()
  } catch {
    return "(not a url)"
  }
}

/** What PostgreSQL says about durability: durable when each commit waits for its WAL flush and pages are whole. */
const pgDurabilityOf = (sql: SqlClient.SqlClient) =>
  sql<{ fsync: string; sync: string; fpw: string }>`
    SELECT current_setting('fsync') AS fsync, current_setting('synchronous_commit') AS sync,
      current_setting('full_page_writes') AS fpw`.pipe(
    Effect.map(([row]) => {
      const full = row?.fsync === "on" && row?.sync !== "off" && row?.fpw === "on"
      const settings = `fsync=${row?.fsync}, synchronous_commit=${row?.sync}, full_page_writes=${row?.fpw}`
      return `${full ? "durable" : "not fully durable"} (${settings})`
    })
  )

const mysqlDurabilityOf = (sql: SqlClient.SqlClient, fastUnsafe: boolean, embedded: boolean) =>
  sql<{ flush: number | string; doublewrite: number | string }>`
    SELECT @@innodb_flush_log_at_trx_commit AS flush, @@innodb_doublewrite AS doublewrite`.pipe(
    Effect.map(([row]) => {
      const flush = Number(row?.flush)
      const doublewrite = Number(row?.doublewrite) !== 0
      const full = flush === 1 && doublewrite
      const mode = embedded ? (fastUnsafe ? "fast-unsafe" : "durable") : full ? "durable" : "not fully durable"
      return `${mode} (innodb_flush_log_at_trx_commit=${flush}, doublewrite ${doublewrite ? "on" : "off"})`
    })
  )

/** What the database in use says about durability (whether embedded or not): the settings in force. */
const durabilityOf = (sql: SqlClient.SqlClient, fastUnsafe: boolean, embedded: boolean) =>
  sql
    .onDialectOrElse({
      pg: () => pgDurabilityOf(sql),
      orElse: () => mysqlDurabilityOf(sql, fastUnsafe, embedded)
    })
    .pipe(Effect.orElseSucceed(() => "unknown (the server did not say)"))

/**
 * The start-up summary, one INFO line once both transports listen: addresses, the database (its url without the
 * password, or the embedded server), the pool, the limits, and the durability in force.
 */
export const StartupSummaryLive = Layer.effectDiscard(
  Effect.gen(function* () {
    const config = yield* LedgerConfig
    const tcp = yield* Tcp.TcpServer
    const http = yield* HttpServer.HttpServer
    const sql = yield* SqlClient.SqlClient
    const address = http.address as HttpServer.TcpAddress
    const embedded = Option.isNone(config.databaseUrl)
    const database = Option.match(config.databaseUrl, {
      onNone: () => `embedded (data in ${config.dataDir})`,
      onSome: (urls) =>
        Config.urlList(urls)
          .map((u) => redactUrl(Redacted.value(u)))
          .join(",")
    })
    const replicas = Option.match(config.replicaUrls, { onNone: () => 0, onSome: (u) => Config.urlList(u).length })
    const durability = yield* durabilityOf(sql, config.fastUnsafe, embedded)
    const d = (x: Duration.DurationInput) => Duration.format(Duration.decode(x))
    yield* Effect.logInfo("ledger started").pipe(
      Effect.annotateLogs({
        tcp: `${tcp.host}:${tcp.port}`,
        http: `${address.hostname}:${address.port}`,
        database,
        replicas,
        durability,
        pool_size: config.poolSize,
        limits:
          `tcp connections ${config.maxConnections} (+${config.maxUnauthenticated} unauthenticated), ` +
          `line ${config.maxLineBytes} B, http connections ${config.httpMaxConnections}, body ${config.maxBodyBytes} B`,
        timeouts:
          `request ${d(config.requestTimeout)}, idle ${d(config.idleTimeout)}, write ${d(config.writeTimeout)}, ` +
          `auth ${d(config.authTimeout)}, http idle ${d(config.httpIdleTimeout)}, shutdown ${d(config.shutdownTimeout)}`
      })
    )
  })
)

/** Everything, from resolved settings. */
export const layer = (settings: Config.Settings) =>
  StartupSummaryLive.pipe(
    Layer.provideMerge(ServersLive),
    Layer.provideMerge(LedgerLive),
    Layer.provideMerge(Config.layer(settings))
  )
