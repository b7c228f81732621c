/**
 * The application as Layers: database (DATABASE_URL or the embedded default), migrations, the Ledger service, and
 * both transports.
 */
import * as MysqlMigrator from "@effect/sql-mysql2/MysqlMigrator"
import { Engine } from "@sessionfx/session"
import { MysqlServer } from "@sessionfx/testing"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Config from "./Config.js"
import { LedgerConfig } from "./Config.js"
import * as Http from "./Http.js"
import { Ledger } from "./Ledger.js"
import * as Supervisor from "./Supervisor.js"
import CreateLedger from "./migrations/00001_create_ledger.js"
import IdempotencyKeyBytes from "./migrations/00002_idempotency_key_bytes.js"
import * as Tcp from "./Tcp.js"

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
    const server = yield* MysqlServer.make({ dataDir: config.dataDir, serverArgs: ["--innodb-lock-wait-timeout=5"] })
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

/** Runs the migrations in src/migrations at start-up (MysqlMigrator; the Engine's SqlClient is the client). */
export const MigrationsLive = Layer.effectDiscard(
  MysqlMigrator.make({})({
    loader: MysqlMigrator.fromRecord({
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

export const ServersLive = Layer.merge(Tcp.layer, Http.layer)

/** Everything, from resolved settings. */
export const layer = (settings: Config.Settings) =>
  ServersLive.pipe(Layer.provideMerge(LedgerLive), Layer.provideMerge(Config.layer(settings)))
