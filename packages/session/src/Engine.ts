/**
 * The Engine: a pool of MySQL / MariaDB / PostgreSQL connections as a scoped Effect service, with an autocommit `SqlClient`.
 *
 * @since 0.1.0
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as Client from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import * as Statement from "@effect/sql/Statement"
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import * as SessionError from "./SessionError.js"
import { EngineImpl, type Isolation } from "./internal/engine.js"
import { sessionErrorsAsSqlError } from "./internal/connection.js"
import type { SslOptions } from "./internal/driver/types.js"
import { flavorOf, makeCompiler, makeDriver } from "./internal/driver/choose.js"
import * as Options from "./internal/options.js"
import { makeClient } from "./internal/statement.js"
import {
  closeServers,
  connectionOf,
  describeTarget,
  millisOf,
  nameOf,
  parseTarget,
  sameDatabase,
  spanAttributesOf,
  type Target,
  versionsOf
} from "./internal/target.js"
import { NO_UNIT } from "./internal/holding.js"
import * as internalSession from "./internal/units.js"
import { Member, type ServerStatus as InternalServerStatus, Topology } from "./internal/topology.js"

/**
 * @since 0.1.0
 * @category type ids
 */
export const TypeId: unique symbol = Symbol.for("@sessionfx/session/Engine")

/**
 * @since 0.1.0
 * @category type ids
 */
export type TypeId = typeof TypeId

/**
 * Transaction isolation levels.
 *
 * @since 0.1.0
 * @category models
 */
export type IsolationLevel = Isolation

/**
 * @since 0.1.0
 * @category models
 */
export interface PoolOptions {
  /** Maximum number of connections (default 10). */
  readonly size?: number | undefined
  /** Connections kept open even when idle (default: `size`, a fixed pool). */
  readonly minIdle?: number | undefined
  /** How long a fiber may wait for a connection before `PoolTimeout` (default 10 seconds). */
  readonly acquireTimeout?: Duration.DurationInput | undefined
  /** An idle connection above `minIdle` is closed after this long unused (default 10 minutes). */
  readonly idleTimeout?: Duration.DurationInput | undefined
  /** A connection is retired (on return, never mid-transaction) after this long, minus up to 10% jitter (default 30 minutes). */
  readonly maxLifetime?: Duration.DurationInput | undefined
  /** A connection idle longer than this is pinged before it is lent (default 30 seconds). */
  readonly validateAfterIdle?: Duration.DurationInput | undefined
  /** At most this many fibers wait; the next one gets `PoolTimeout` at once (default: unbounded). */
  readonly queueLimit?: number | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface EngineOptions {
  /**
   * `mysql://user:password@host:port/database` (or `mariadb://`), `postgres://…` / `postgresql://…` for
   * PostgreSQL (the scheme chooses the driver); overrides the separate fields. A list of urls is a multi-primary
   * cluster (MariaDB Galera): every node takes reads and writes, units go to healthy nodes (see `loadBalancing`).
   */
  readonly url?: Redacted.Redacted | string | ReadonlyArray<Redacted.Redacted | string> | undefined
  /**
   * Read replicas of `url` (MariaDB GTID replication, PostgreSQL streaming replication): read-only units (`readOnly`,
   * `consistentSnapshot`) go to a healthy replica, everything else to the primary. See docs/scale-out.md.
   */
  readonly replicas?: ReadonlyArray<Redacted.Redacted | string> | undefined
  /**
   * A replica that has not applied what the primary had committed this long ago, or whose replication stopped, is
   * taken out of rotation until it catches up (default 5 seconds).
   */
  readonly maxReplicaLag?: Duration.DurationInput | undefined
  /**
   * How long a read-only unit waits on a replica for the commits its fiber made (its causality token) before it
   * reads from the primary instead (default 1 second).
   */
  readonly readYourWritesTimeout?: Duration.DurationInput | undefined
  /** How often each server of a topology is checked (default 1 second). */
  readonly healthCheckInterval?: Duration.DurationInput | undefined
  /**
   * Multi-primary: `"spread"` (default) sends each unit to the healthy node with the fewest connections in use;
   * `"failover"` to the first healthy node in `url` order.
   */
  readonly loadBalancing?: "spread" | "failover" | undefined
  readonly host?: string | undefined
  readonly port?: number | undefined
  readonly database?: string | undefined
  readonly username?: string | undefined
  readonly password?: Redacted.Redacted | undefined
  readonly socketPath?: string | undefined
  /** A label for metrics and messages (default `host:port/database`). */
  readonly name?: string | undefined
  readonly pool?: PoolOptions | undefined
  /** Bound on opening one connection (default 10 seconds). */
  readonly connectTimeout?: Duration.DurationInput | undefined
  /** How long release of the Engine waits for lent connections before closing them (default 30 seconds). */
  readonly shutdownTimeout?: Duration.DurationInput | undefined
  /** After KILL QUERY, how long an interrupted statement may take to end before its connection is destroyed (default 2 seconds). */
  readonly killGrace?: Duration.DurationInput | undefined
  /**
   * Bound on COMMIT for a unit without a `timeout` of its own (default 10 seconds): no answer by then is
   * `CommitOutcomeUnknown`, and the connection is destroyed.
   */
  readonly commitTimeout?: Duration.DurationInput | undefined
  /**
   * A unit of work open longer than this is logged once at warning level, with where it was opened, and counted in
   * `sessionfx_session_long_units_total` (default 1 minute; `Duration.infinity` turns it off).
   */
  readonly longUnitThreshold?: Duration.DurationInput | undefined
  /** Session default: isolation level (default: the server's). */
  readonly isolation?: IsolationLevel | undefined
  /** Session default: `innodb_lock_wait_timeout` (`lock_timeout` on PostgreSQL). */
  readonly lockWaitTimeout?: Duration.DurationInput | undefined
  /**
   * Session default: per-statement time limit (`max_statement_time` on MariaDB, `max_execution_time` on MySQL,
   * `statement_timeout` on PostgreSQL).
   */
  readonly statementTimeout?: Duration.DurationInput | undefined
  readonly ssl?: string | SslOptions | undefined
  readonly spanAttributes?: Record<string, unknown> | undefined
  /**
   * Record each statement's SQL text as `db.query.text` on its span (default false). The text holds placeholders,
   * never bound values; it can still reveal schema and literals written into the SQL.
   */
  readonly queryTextInSpans?: boolean | undefined
  readonly transformResultNames?: ((str: string) => string) | undefined
  readonly transformQueryNames?: ((str: string) => string) | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Stats extends SessionError.PoolStats {}

/**
 * @since 0.1.0
 * @category tags
 */
export class Engine extends Context.Tag("@sessionfx/session/Engine")<Engine, Engine.Service>() {}

/**
 * @since 0.1.0
 */
export declare namespace Engine {
  /**
   * @since 0.1.0
   * @category models
   */
  export interface Service {
    readonly [TypeId]: EngineImpl
    /** The label used in metrics and messages. */
    readonly name: string
    readonly flavor: "mariadb" | "mysql" | "postgresql"
    /** `SELECT VERSION()` of the server, read at startup. */
    readonly serverVersion: string
    /** The autocommit client; inside a session of this engine it joins that session. */
    readonly sql: Client.SqlClient
    readonly stats: Effect.Effect<Stats>
    /** Every server of the engine (one without replicas or nodes: itself) and what its health checks say. */
    readonly servers: Effect.Effect<ReadonlyArray<ServerStatus>>
  }
}

/**
 * A server of an engine's topology, as its last health check saw it.
 *
 * @since 0.3.0
 * @category models
 */
export interface ServerStatus extends InternalServerStatus {}

/**
 * Builds an Engine: checks that the server answers (within `connectTimeout`), detects MySQL or MariaDB and its
 * version, fills the pool, and on scope close drains lent connections up to `shutdownTimeout` before closing all.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  options: EngineOptions
): Effect.Effect<
  Engine.Service,
  SessionError.ConnectionError | SessionError.InvalidOption,
  Scope.Scope | Reactivity.Reactivity
> =>
  Effect.gen(function* () {
    const checked = yield* Options.check(options)
    const { replicaUrls, urls } = yield* urlsOf(options)
    const topology = urls.length > 1 || replicaUrls.length > 0
    const targets = yield* Effect.forEach([...urls, ...replicaUrls], (url) =>
      parseTarget({ ...options, url }, checked.port)
    )
    yield* sameDatabase(targets)
    const engineName = options.name ?? nameOf(targets[0]!)
    const roleOf = (i: number): Role => (urls.length > 1 ? "node" : i === 0 ? "primary" : "replica")
    const servers = yield* buildServers({ options, checked, targets, engineName, roleOf })
    const impl = servers[0]!
    /** The servers beside the first, once their family is known to support the topology. */
    let router: Topology | undefined
    yield* Effect.addFinalizer(() =>
      Effect.ensuring(
        closeServers(servers, checked.shutdownTimeoutMs),
        Effect.sync(() => router?.close())
      )
    )
    const versions = yield* versionsOf(servers, targets, { connectTimeoutMs: checked.connectTimeoutMs, roleOf })
    const version = versions[0]!
    const flavor = flavorOf(targets[0]!.dialect, version)
    const refused = Options.topologyRefused({ flavor, version, urls, replicaUrls, server: describeTarget(targets[0]!) })
    if (refused !== undefined) return yield* refused
    for (const server of servers) {
      server.options.driver.setVersion(version)
      const attrs = server.options.spanAttributes as Array<readonly [string, unknown]>
      attrs.splice(-2, 2, ["db.system", flavor], ["db.system.name", flavor])
    }
    if (topology) {
      const members = servers.map((server, i) => new Member(server, roleOf(i)))
      router = new Topology(impl, members, checked)
      impl.topology = router
      versions.forEach((v, i) => {
        if (v === undefined) members[i]!.setHealthy(false, "not answering at start-up")
      })
    }
    for (const server of servers) server.start()
    router?.start()
    // "no unit" in the fibers the engine is provided to (see `holding.ts`): a fiber started inside a unit from a
    // snapshot of them — a data loader's batch — is told apart from one started outside any unit
    yield* Effect.locallyScoped(impl.currentRef, NO_UNIT)
    return serviceOf({ servers, router, engineName, flavor, version })
  })

type Role = "primary" | "replica" | "node"

/** The url list (one, or one per node) and the replicas, refused when they cannot make an engine. */
const urlsOf = (options: EngineOptions) =>
  Effect.suspend(() => {
    const urls: ReadonlyArray<Redacted.Redacted | string | undefined> = Array.isArray(options.url)
      ? options.url
      : [options.url as Redacted.Redacted | string | undefined]
    const replicaUrls = options.replicas ?? []
    if (urls.length === 0) {
      return Effect.fail(
        new SessionError.InvalidOption({
          option: "url",
          message: "Engine option url: an empty list; give one url, or one per node of a multi-primary cluster"
        })
      )
    }
    if (urls.length > 1 && replicaUrls.length > 0) {
      return Effect.fail(
        new SessionError.InvalidOption({
          option: "replicas",
          message:
            "Engine option replicas: a list of urls is a multi-primary cluster (every node takes writes and reads); replicas belong to a single primary url"
        })
      )
    }
    return Effect.succeed({ urls, replicaUrls })
  })

/** One `EngineImpl` (pool, driver, side connections) per server. */
const buildServers = (o: {
  readonly options: EngineOptions
  readonly checked: Options.Checked
  readonly targets: ReadonlyArray<Target>
  readonly engineName: string
  readonly roleOf: (i: number) => Role
}) =>
  Effect.gen(function* () {
    const { checked, options, targets } = o
    const topology = targets.length > 1
    const compiler = makeCompiler(targets[0]!.dialect, options.transformQueryNames)
    const transformRows = options.transformResultNames
      ? Statement.defaultTransforms(options.transformResultNames).array
      : undefined
    const reactivity = yield* Reactivity.Reactivity
    const runtime = yield* Effect.runtime<never>()
    return targets.map((target, i) => {
      const driver = makeDriver({
        dialect: target.dialect,
        target: connectionOf(target, checked.connectTimeoutMs),
        trackCommits: topology,
        onCommitTrackingRefused: (message) => impl.log("Warning", `sessionfx: ${describeTarget(target)} ${message}`)
      })
      const impl: EngineImpl = new EngineImpl({
        name: topology ? nameOf(target) : o.engineName,
        engineName: topology ? o.engineName : undefined,
        role: o.roleOf(i),
        driver,
        describe: describeTarget(target),
        pool: checked.pool,
        killGraceMs: checked.killGraceMs,
        commitTimeoutMs: millisOf(options.commitTimeout),
        longUnitThresholdMs: millisOf(options.longUnitThreshold, 0),
        defaults: {
          isolation: options.isolation,
          lockWaitTimeoutSeconds: checked.lockWaitTimeoutSeconds,
          statementTimeoutMs: checked.statementTimeoutMs
        },
        spanAttributes: spanAttributesOf(options, target),
        queryTextInSpans: options.queryTextInSpans === true,
        compiler,
        transformRows
      })
      impl.reactivity = reactivity
      impl.runtime = runtime
      return impl
    })
  })

/** The service: the first server is the engine's identity (its client, its units). */
const serviceOf = (o: {
  readonly servers: ReadonlyArray<EngineImpl>
  readonly router: Topology | undefined
  readonly engineName: string
  readonly flavor: "mariadb" | "mysql" | "postgresql"
  readonly version: string
}): Engine.Service => {
  const { router, servers } = o
  const impl = servers[0]!
  const sql = makeClient(
    impl,
    (fiber) => impl.current(fiber) as ReturnType<Parameters<typeof makeClient>[1]>,
    // a SessionError travels as the SqlError's cause: what is left of the error channel is the effect's own or SqlError
    <A, E, R>(effect: Effect.Effect<A, E, R>) =>
      Effect.mapError(internalSession.transact(impl, effect, {}), sessionErrorsAsSqlError) as Effect.Effect<
        A,
        E | SqlError,
        R
      >,
    impl.reactivity
  )
  impl.client = sql
  return {
    [TypeId]: impl,
    name: o.engineName,
    flavor: o.flavor,
    serverVersion: o.version,
    sql,
    stats: Effect.sync(() => {
      impl.refreshGauges()
      return impl.pool.stats()
    }),
    servers: Effect.sync(() => {
      for (const server of servers) server.refreshGauges()
      return router !== undefined
        ? router.status()
        : [
            {
              name: o.engineName,
              role: "primary",
              healthy: true,
              reason: undefined,
              lagMs: undefined,
              position: undefined,
              stats: impl.pool.stats()
            }
          ]
    })
  }
}

/**
 * The Engine and its autocommit `SqlClient`. Provide it once, at the program's edge: every unit of work of the
 * program then shares its pool.
 *
 * @example
 * import { Engine, Session } from "@sessionfx/session"
 * import * as SqlClient from "@effect/sql/SqlClient"
 * import { Effect, Redacted } from "effect"
 *
 * const EngineLive = Engine.layer({
 *   url: Redacted.make("mysql://app:secret@localhost:3306/app"),
 *   pool: { size: 16, acquireTimeout: "5 seconds" }
 * })
 *
 * const program = Session.transact(Effect.flatMap(SqlClient.SqlClient, (sql) => sql`SELECT 1`))
 *
 * export const main: Effect.Effect<unknown, unknown> = program.pipe(Effect.provide(EngineLive))
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: EngineOptions
): Layer.Layer<Engine | Client.SqlClient, SessionError.ConnectionError | SessionError.InvalidOption> =>
  Layer.scopedContext(
    Effect.map(make(options), (engine) => Context.make(Engine, engine).pipe(Context.add(Client.SqlClient, engine.sql)))
  ).pipe(Layer.provide(Reactivity.layer))

/**
 * The Engine from `Config`; options are checked when the layer is built (`InvalidOption` names the option).
 *
 * @example
 * import { Engine } from "@sessionfx/session"
 * import { Config } from "effect"
 *
 * export const EngineLive = Engine.layerConfig({
 *   url: Config.redacted("DATABASE_URL"),
 *   pool: { size: Config.integer("DB_POOL_SIZE").pipe(Config.withDefault(16)) }
 * })
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  config: Config.Config.Wrap<EngineOptions>
): Layer.Layer<
  Engine | Client.SqlClient,
  SessionError.ConnectionError | SessionError.InvalidOption | ConfigError.ConfigError
> => Layer.unwrapEffect(Effect.map(Config.unwrap(config), layer))

/**
 * The pool's current figures.
 *
 * @example
 * import { Engine } from "@sessionfx/session"
 * import { Effect } from "effect"
 *
 * export const report = Effect.flatMap(Engine.stats, (s) => Effect.log(`${s.inUse}/${s.size} in use, ${s.waiting} waiting`))
 *
 * @since 0.1.0
 * @category accessors
 */
export const stats: Effect.Effect<Stats, never, Engine> = Effect.flatMap(Engine, (e) => e.stats)

/**
 * Every server of the engine and its health: the primary and its replicas, or the nodes of a multi-primary
 * cluster (an engine of one server: that server).
 *
 * @example
 * import { Engine } from "@sessionfx/session"
 * import { Effect } from "effect"
 *
 * export const report = Effect.flatMap(Engine.servers, (servers) =>
 *   Effect.forEach(servers, (s) => Effect.log(`${s.role} ${s.name}: ${s.healthy ? "in rotation" : s.reason}`))
 * )
 *
 * @since 0.3.0
 * @category accessors
 */
export const servers: Effect.Effect<ReadonlyArray<ServerStatus>, never, Engine> = Effect.flatMap(
  Engine,
  (e) => e.servers
)
