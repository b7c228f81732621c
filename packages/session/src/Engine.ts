/**
 * The Engine: a pool of MySQL / MariaDB connections as a scoped Effect service, with an autocommit `SqlClient`.
 *
 * @since 0.1.0
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import * as Client from "@effect/sql/SqlClient"
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
import { makeCompiler } from "./internal/driver/mysql/compiler.js"
import * as Options from "./internal/options.js"
import { makeClient } from "./internal/statement.js"
import { describeCause } from "./internal/pool.js"
import { MysqlServer, type SslOptions } from "./internal/driver/mysql/server.js"
import type { RawConnection } from "./internal/driver/types.js"
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
   * `mysql://user:password@host:port/database`; overrides the separate fields. A list of urls is a multi-primary
   * cluster (MariaDB Galera): every node takes reads and writes, units go to healthy nodes (see `loadBalancing`).
   */
  readonly url?: Redacted.Redacted | string | ReadonlyArray<Redacted.Redacted | string> | undefined
  /**
   * Read replicas of `url` (MariaDB GTID replication): read-only units (`readOnly`, `consistentSnapshot`) go to a
   * healthy replica, everything else to the primary. See docs/scale-out.md.
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
  /** Session default: `innodb_lock_wait_timeout`. */
  readonly lockWaitTimeout?: Duration.DurationInput | undefined
  /** Session default: per-statement time limit (`max_statement_time` on MariaDB, `max_execution_time` on MySQL). */
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
    readonly flavor: "mariadb" | "mysql"
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

interface Target {
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

const parseTarget = (
  options: Omit<EngineOptions, "url"> & { readonly url?: Redacted.Redacted | string | undefined },
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
            message: `the Engine url is not a valid URL; expected mysql://user:password@host:3306/database (the value is not shown because it may contain a password)${ambiguousUserinfo ? encodeHint : ""}`
          })
        )
      }
      if (url.protocol !== "mysql:" && url.protocol !== "mariadb:") {
        return Effect.fail(
          new SessionError.ConnectionError({
            retryable: false,
            message: `the Engine url has scheme "${url.protocol}"; expected mysql://user:password@host:3306/database`
          })
        )
      }
      const port = url.port === "" ? 3306 : Number(url.port)
      const sslParam = url.searchParams.get("ssl")
      const ssl: string | SslOptions | undefined =
        options.ssl ?? (sslParam === null || sslParam === "false" ? undefined : sslParam === "true" ? {} : sslParam)
      return Effect.succeed<Target>({
        ambiguousUserinfo,
        host: url.hostname === "" ? "localhost" : url.hostname.replace(/^\[|\]$/g, ""),
        port,
        database: url.pathname.length > 1 ? decodeURIComponent(url.pathname.slice(1)) : options.database,
        user: url.username !== "" ? decodeURIComponent(url.username) : options.username,
        password: url.password !== "" ? Redacted.make(decodeURIComponent(url.password)) : options.password,
        socketPath: url.searchParams.get("socket") ?? options.socketPath,
        ssl
      })
    }
    return Effect.succeed<Target>({
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

const encodeHint =
  "; the url contains more than one '@': percent-encode the password (encodeURIComponent: '@' is %40, '/' is %2F, '#' is %23)"

const describeTarget = (t: Target) =>
  `mysql://${t.user ?? ""}@${t.socketPath ? `[socket ${t.socketPath}]` : `${t.host}:${t.port}`}/${t.database ?? ""}`

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
    const urls: ReadonlyArray<Redacted.Redacted | string | undefined> = Array.isArray(options.url)
      ? options.url
      : [options.url as Redacted.Redacted | string | undefined]
    const replicaUrls = options.replicas ?? []
    if (urls.length === 0) {
      return yield* new SessionError.InvalidOption({
        option: "url",
        message: "Engine option url: an empty list; give one url, or one per node of a multi-primary cluster"
      })
    }
    if (urls.length > 1 && replicaUrls.length > 0) {
      return yield* new SessionError.InvalidOption({
        option: "replicas",
        message:
          "Engine option replicas: a list of urls is a multi-primary cluster (every node takes writes and reads); replicas belong to a single primary url"
      })
    }
    const topology = urls.length > 1 || replicaUrls.length > 0
    /** The servers beside the first, once they are known to be MariaDB. */
    let router: Topology | undefined
    const targets = yield* Effect.forEach([...urls, ...replicaUrls], (url) =>
      parseTarget({ ...options, url }, checked.port)
    )
    const engineName = options.name ?? nameOf(targets[0]!)
    const compiler = makeCompiler(options.transformQueryNames)
    const transformRows = options.transformResultNames
      ? Statement.defaultTransforms(options.transformResultNames).array
      : undefined
    const reactivity = yield* Reactivity.Reactivity
    const runtime = yield* Effect.runtime<never>()
    const roleOf = (i: number): "primary" | "replica" | "node" =>
      urls.length > 1 ? "node" : i === 0 ? "primary" : "replica"
    const servers = targets.map((target, i) => {
      const driver = new MysqlServer({
        target: connectionOf(target, checked.connectTimeoutMs),
        trackCommits: topology,
        onCommitTrackingRefused: (message) => impl.log("Warning", `sessionfx: ${describeTarget(target)} ${message}`)
      })
      const impl: EngineImpl = new EngineImpl({
        name: topology ? nameOf(target) : engineName,
        engineName: topology ? engineName : undefined,
        role: roleOf(i),
        driver,
        describe: describeTarget(target),
        pool: checked.pool,
        killGraceMs: checked.killGraceMs,
        commitTimeoutMs:
          options.commitTimeout === undefined ? undefined : Duration.toMillis(Duration.decode(options.commitTimeout)),
        longUnitThresholdMs:
          options.longUnitThreshold === undefined
            ? undefined
            : Duration.isFinite(Duration.decode(options.longUnitThreshold))
              ? Duration.toMillis(Duration.decode(options.longUnitThreshold))
              : 0,
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
    const impl = servers[0]!
    yield* Effect.addFinalizer(() =>
      Effect.forEach(
        servers,
        (server) =>
          Effect.gen(function* () {
            const drained = yield* server.pool.drain(checked.shutdownTimeoutMs)
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
      ).pipe(Effect.ensuring(Effect.sync(() => router?.close())))
    )
    // the first server must answer; a replica or another node that does not starts out of rotation
    const versions = yield* Effect.forEach(
      servers,
      (server, i) =>
        i === 0
          ? Effect.map(serverVersion(server, targets[i]!, checked.connectTimeoutMs), (v) => v as string | undefined)
          : Effect.catchAll(serverVersion(server, targets[i]!, checked.connectTimeoutMs), (e) =>
              Effect.as(
                Effect.logWarning(
                  `sessionfx: ${roleOf(i)} ${server.options.name} is not answering (${e.message}); it starts out of rotation`
                ),
                undefined
              )
            ),
      { concurrency: "unbounded" }
    )
    const version = versions[0]!
    const flavor = /mariadb/i.test(version) ? "mariadb" : "mysql"
    if (topology && flavor === "mysql") {
      return yield* new SessionError.InvalidOption({
        option: urls.length > 1 ? "url" : "replicas",
        message: `Engine option ${urls.length > 1 ? "url" : "replicas"}: replicas and multi-primary clusters are supported on MariaDB (GTID replication, Galera); ${describeTarget(targets[0]!)} is MySQL ${version}. Use one Engine per server for now`
      })
    }
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

    const sql = makeClient(
      impl,
      (fiber) => impl.current(fiber) as ReturnType<Parameters<typeof makeClient>[1]>,
      (effect) => Effect.mapError(internalSession.transact(impl, effect, {}), sessionErrorsAsSqlError) as any,
      impl.reactivity
    )
    impl.client = sql
    const service: Engine.Service = {
      [TypeId]: impl,
      name: engineName,
      flavor,
      serverVersion: version,
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
                name: engineName,
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
    return service
  })

const nameOf = (t: Target) =>
  t.socketPath ? `${t.socketPath}/${t.database ?? ""}` : `${t.host}:${t.port}/${t.database ?? ""}`

const connectionOf = (target: Target, connectTimeoutMs: number) => ({
  host: target.host,
  port: target.port,
  database: target.database,
  user: target.user,
  password: target.password === undefined ? undefined : Redacted.value(target.password),
  socketPath: target.socketPath,
  ssl: target.ssl,
  connectTimeoutMs
})

/** OpenTelemetry database conventions; db.system follows the server's flavor once it has answered. */
const spanAttributesOf = (options: EngineOptions, target: Target): Array<readonly [string, unknown]> => [
  ...(options.spanAttributes ? Object.entries(options.spanAttributes) : []),
  ["server.address", target.host],
  ["server.port", target.port],
  ...(target.database ? ([["db.namespace", target.database]] as const) : []),
  ["db.system", "mysql"],
  ["db.system.name", "mysql"]
]

/** `SELECT VERSION()` on a connection of its own, bounded by `connectTimeout`. */
const serverVersion = (
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
