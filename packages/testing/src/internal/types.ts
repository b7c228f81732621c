/**
 * The shapes the public modules and their internals share: a server's service and options (re-exported by
 * `MysqlServer.ts`) and the topologies of `MysqlCluster.ts`. Imports nothing from the public modules, so that
 * `internal/server.ts` and `internal/cluster.ts` need not either.
 *
 * @internal
 */
import type * as Duration from "effect/Duration"
import type * as Effect from "effect/Effect"
import type * as Option from "effect/Option"
import type * as Redacted from "effect/Redacted"
import type { MysqlServerError } from "./serverError.js"

// -----------------------------------------------------------------------------
// MysqlServer
// -----------------------------------------------------------------------------

/** `MysqlServer.Service` @internal */
export interface ServerService {
  /** `"embedded"`: started and owned by this layer; `"external"`: given by `MYSQL_URL`. */
  readonly kind: "embedded" | "external"
  readonly flavor: "mariadb" | "mysql"
  /** `SELECT VERSION()` */
  readonly version: string
  /** `mysql://user:pass@host:port/db` of the application user */
  readonly url: Redacted.Redacted<string>
  readonly host: string
  readonly port: number
  readonly database: string
  readonly username: string
  readonly password: Redacted.Redacted<string>
  /** The unix socket of an embedded server. */
  readonly socketPath: Option.Option<string>
  /** A superuser, able to read the processlist and `information_schema.innodb_trx` and to `KILL`. */
  readonly admin: ServerAdmin
  /** The data directory of an embedded server (removed on close unless it was given as `dataDir`). */
  readonly dataDir: Option.Option<string>
  /** The error log of an embedded server. */
  readonly logFile: Option.Option<string>
  /** The current server process; changes on restart, `None` while stopped and for an external server. */
  readonly pid: Option.Option<number>
  /** Starts a stopped (or crashed) embedded server again, on the same port and data directory. */
  readonly start: Effect.Effect<void, MysqlServerError>
  /** Shuts an embedded server down gracefully; clients see their connections drop. */
  readonly stop: Effect.Effect<void, MysqlServerError>
  /** SIGKILLs an embedded server, like a crash; `start` recovers it. */
  readonly kill: Effect.Effect<void, MysqlServerError>
  /** `stop` then `start`: same port, same data. */
  readonly restart: Effect.Effect<void, MysqlServerError>
}

/** `MysqlServer.Admin` @internal */
export interface ServerAdmin {
  readonly host: string
  readonly port: number
  readonly username: string
  readonly password: Redacted.Redacted<string>
  readonly socketPath: Option.Option<string>
  readonly url: Redacted.Redacted<string>
}

/** `MysqlServer.Options` @internal */
export interface ServerOptions {
  /** default `"app"` */
  readonly database?: string | undefined
  /** The application user, granted only what an app needs on `database`; default `"app"`. */
  readonly username?: string | undefined
  /**
   * Persistent mode: a directory that survives the layer. It is initialised only when empty; the generated
   * passwords are kept in `sessionfx-server.json` (mode 0600) inside it, so they are stable across restarts.
   */
  readonly dataDir?: string | undefined
  /** A fixed TCP port; by default a free loopback port (in persistent mode, the previous one when still free). */
  readonly port?: number | undefined
  /** default 60 seconds */
  readonly startTimeout?: Duration.DurationInput | undefined
  /** How long a graceful shutdown may take before SIGKILL; default 10 seconds. */
  readonly stopTimeout?: Duration.DurationInput | undefined
  /** Extra `mariadbd` / `mysqld` arguments, after the defaults. */
  readonly serverArgs?: ReadonlyArray<string> | undefined
  /** Directories searched for `mariadbd` / `mysqld`; default `PATH` plus `/usr/sbin`, `/usr/local/sbin`, … */
  readonly searchPath?: ReadonlyArray<string> | undefined
  /** Where temporary data directories and the initialised template live; default `os.tmpdir()`. */
  readonly tmpDir?: string | undefined
}

/** `MysqlServer.ExternalOptions` @internal */
export interface ExternalOptions {
  /** `mysql://user:pass@host:port/db` */
  readonly url: Redacted.Redacted<string> | string
  /** A superuser url; by default `url`. */
  readonly adminUrl?: Redacted.Redacted<string> | string | undefined
}

// -----------------------------------------------------------------------------
// MysqlCluster
// -----------------------------------------------------------------------------

/** `MysqlCluster.Replicated` @internal */
export interface Replicated {
  readonly primary: ServerService
  readonly replicas: ReadonlyArray<Replica>
  /** The primary, then the replicas. */
  readonly servers: ReadonlyArray<ServerService>
}

/** `MysqlCluster.Replica` @internal */
export interface Replica extends ServerService {
  /** `STOP SLAVE SQL_THREAD`: events still arrive but are not applied, so the replica lags. */
  readonly stopSqlThread: Effect.Effect<void, MysqlServerError>
  /** `START SLAVE SQL_THREAD`: the replica applies what it received and catches up. */
  readonly startSqlThread: Effect.Effect<void, MysqlServerError>
  /** `STOP SLAVE`: the replica no longer receives anything. */
  readonly stopReplication: Effect.Effect<void, MysqlServerError>
  /** `START SLAVE` */
  readonly startReplication: Effect.Effect<void, MysqlServerError>
  /** `SHOW SLAVE STATUS` and `@@gtid_slave_pos`, reduced. */
  readonly replicationStatus: Effect.Effect<ReplicationStatus, MysqlServerError>
  /** `MASTER_GTID_WAIT(gtid, timeout)`: `true` once the replica has applied `gtid`, `false` on timeout. */
  readonly waitForGtid: (gtid: string, timeout: Duration.DurationInput) => Effect.Effect<boolean, MysqlServerError>
  /** Waits for the primary's current `gtid_binlog_pos`: `true` once applied, `false` on timeout. */
  readonly waitCaughtUp: (timeout: Duration.DurationInput) => Effect.Effect<boolean, MysqlServerError>
}

/** `MysqlCluster.ReplicationStatus` @internal */
export interface ReplicationStatus {
  readonly ioRunning: boolean
  readonly sqlRunning: boolean
  /** `Seconds_Behind_Master`; `null` while a thread is stopped. */
  readonly secondsBehind: number | null
  /** `@@gtid_slave_pos`: the last GTID applied, per domain. */
  readonly gtidSlavePos: string
  /** `Last_IO_Error` and `Last_SQL_Error`, when not empty. */
  readonly lastError: string
}

/** `MysqlCluster.Galera` @internal */
export interface Galera {
  readonly nodes: ReadonlyArray<GaleraNode>
  /** `gcomm://127.0.0.1:port,…` */
  readonly clusterAddress: string
  /** Waits until a running node is ready and reports this `wsrep_cluster_size`; default 60 seconds. */
  readonly waitForClusterSize: (size: number, timeout?: Duration.DurationInput) => Effect.Effect<void, MysqlServerError>
}

/** `MysqlCluster.GaleraNode` @internal */
export interface GaleraNode extends ServerService {
  /** 0-based; the node is named `node${index + 1}`. */
  readonly index: number
  readonly status: Effect.Effect<GaleraStatus, MysqlServerError>
  /** Waits until the node is `Synced` with `wsrep_ready=ON`; default 60 seconds. */
  readonly waitReady: (timeout?: Duration.DurationInput) => Effect.Effect<void, MysqlServerError>
}

/** `MysqlCluster.GaleraStatus` @internal */
export interface GaleraStatus {
  /** `wsrep_ready`: the node accepts queries (otherwise they fail with 1047). */
  readonly ready: boolean
  readonly connected: boolean
  readonly clusterSize: number
  /** `wsrep_cluster_status`: `Primary` or `non-Primary` */
  readonly clusterStatus: string
  /** `wsrep_local_state_comment`: `Synced`, `Joining`, `Donor/Desynced`, … */
  readonly state: string
}

/** `MysqlCluster.ClusterOptions` @internal */
export interface ClusterOptions extends Pick<
  ServerOptions,
  "database" | "username" | "startTimeout" | "stopTimeout" | "serverArgs" | "searchPath" | "tmpDir"
> {}

/** `MysqlCluster.ReplicatedOptions` @internal */
export interface ReplicatedOptions extends ClusterOptions {
  /** default 2 */
  readonly replicas?: number | undefined
}

/** `MysqlCluster.GaleraOptions` @internal */
export interface GaleraOptions extends ClusterOptions {
  /** default 3 */
  readonly nodes?: number | undefined
  /** The `libgalera_smm.so` to load; by default Debian's (`galera-4`). */
  readonly provider?: string | undefined
  /**
   * Cluster-wide GTIDs (`--log-bin --wsrep-gtid-mode=ON`, one `server_id`, `wsrep_gtid_domain_id=1`): a COMMIT's OK
   * packet carries the transaction's GTID (with `session_track_system_variables='last_gtid'`), the same on every
   * node, and `WSREP_SYNC_WAIT_UPTO_GTID(gtid, seconds)` on any node waits for it. Default `true`.
   */
  readonly gtid?: boolean | undefined
  /** More `wsrep_provider_options` entries (`key=value`), after the defaults. */
  readonly providerOptions?: ReadonlyArray<string> | undefined
}
