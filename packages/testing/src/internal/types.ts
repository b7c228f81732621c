/**
 * The shapes the public modules and their internals share: a server's service and options (re-exported by
 * `MysqlServer.ts` and `PgServer.ts`) and the topologies of `MysqlCluster.ts`. Imports nothing from the public modules, so that
 * `internal/server.ts` and `internal/cluster.ts` need not either.
 *
 * @internal
 */
import type * as Duration from "effect/Duration"
import type * as Effect from "effect/Effect"
import type * as Option from "effect/Option"
import type * as Redacted from "effect/Redacted"
import type { PgServerError } from "./pgServerError.js"
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

// -----------------------------------------------------------------------------
// PgServer
// -----------------------------------------------------------------------------

/** `PgServer.Service` @internal */
export interface PgServerService {
  /** `"embedded"`: started and owned by this layer; `"external"`: given by `PG_URL`. */
  readonly kind: "embedded" | "external"
  /** `SHOW server_version` */
  readonly version: string
  /** `postgres://user:pass@host:port/db` of the application role */
  readonly url: Redacted.Redacted<string>
  readonly host: string
  readonly port: number
  readonly database: string
  readonly username: string
  readonly password: Redacted.Redacted<string>
  /** The directory of an embedded server's unix socket (`.s.PGSQL.<port>` inside it). */
  readonly socketDir: Option.Option<string>
  /** A superuser, able to read `pg_stat_activity`, cancel or terminate any backend and change settings. */
  readonly admin: PgServerAdmin
  /** The data directory of an embedded server, removed on close. */
  readonly dataDir: Option.Option<string>
  /** The log of an embedded server (its stderr). */
  readonly logFile: Option.Option<string>
  /** The postmaster's process; changes on restart, `None` while stopped and for an external server. */
  readonly pid: Option.Option<number>
  /** Starts a stopped (or crashed) embedded server again, on the same port and data directory. */
  readonly start: Effect.Effect<void, PgServerError>
  /** Shuts an embedded server down (fast shutdown: open transactions roll back, clients are disconnected). */
  readonly stop: Effect.Effect<void, PgServerError>
  /** SIGKILLs an embedded server's processes, like a crash; `start` recovers it. */
  readonly kill: Effect.Effect<void, PgServerError>
  /** `stop` then `start`: same port, same data. */
  readonly restart: Effect.Effect<void, PgServerError>
}

/** `PgServer.Admin` @internal */
export interface PgServerAdmin {
  readonly host: string
  readonly port: number
  readonly username: string
  readonly password: Redacted.Redacted<string>
  /** `postgres://admin:pass@host:port/db`, on the application's database */
  readonly url: Redacted.Redacted<string>
}

/** `PgServer.Options` @internal */
export interface PgServerOptions {
  /** default `"app"` */
  readonly database?: string | undefined
  /** The application role: it logs in, connects to `database` and creates in its `public` schema; default `"app"`. */
  readonly username?: string | undefined
  /** A fixed TCP port; by default a free loopback port. */
  readonly port?: number | undefined
  /** default 60 seconds */
  readonly startTimeout?: Duration.DurationInput | undefined
  /** How long a fast shutdown may take before SIGKILL; default 10 seconds. */
  readonly stopTimeout?: Duration.DurationInput | undefined
  /** Extra `postgres` arguments (`["-c", "work_mem=64MB"]`), after the defaults. */
  readonly serverArgs?: ReadonlyArray<string> | undefined
  /** Directories searched for `postgres` and `initdb`; default `PATH` plus `/usr/lib/postgresql/<newest>/bin`, … */
  readonly searchPath?: ReadonlyArray<string> | undefined
  /** Where temporary data directories live; default `os.tmpdir()`. */
  readonly tmpDir?: string | undefined
}

/** `PgServer.ExternalOptions` @internal */
export interface PgExternalOptions {
  /** `postgres://user:pass@host:port/db` (or `postgresql://`) */
  readonly url: Redacted.Redacted<string> | string
  /** A superuser url; by default `url`. */
  readonly adminUrl?: Redacted.Redacted<string> | string | undefined
}

// -----------------------------------------------------------------------------
// PgServer.replicated
// -----------------------------------------------------------------------------

/** `PgServer.Replicated` @internal */
export interface PgReplicated {
  readonly primary: PgServerService
  readonly replicas: ReadonlyArray<PgReplica>
  /** The primary, then the replicas. */
  readonly servers: ReadonlyArray<PgServerService>
}

/** `PgServer.Replica` @internal */
export interface PgReplica extends PgServerService {
  /** `pg_wal_replay_pause()`: WAL still arrives but is not replayed, so the replica lags; returns once paused. */
  readonly pauseReplay: Effect.Effect<void, PgServerError>
  /** `pg_wal_replay_resume()`: the replica replays what it received and catches up. */
  readonly resumeReplay: Effect.Effect<void, PgServerError>
  /** `pg_is_in_recovery()`, `pg_stat_wal_receiver`, the replay LSN and whether replay is paused. */
  readonly replicationStatus: Effect.Effect<PgReplicationStatus, PgServerError>
  /** Waits until the replica has replayed `lsn` (`0/3000148`): `true` once it has, `false` on timeout. */
  readonly waitForLsn: (lsn: string, timeout: Duration.DurationInput) => Effect.Effect<boolean, PgServerError>
  /** Waits for the primary's current WAL position: `true` once replayed, `false` on timeout. */
  readonly waitCaughtUp: (timeout: Duration.DurationInput) => Effect.Effect<boolean, PgServerError>
}

/** `PgServer.ReplicationStatus` @internal */
export interface PgReplicationStatus {
  /** `pg_is_in_recovery()`: a standby. */
  readonly inRecovery: boolean
  /** `pg_stat_wal_receiver.status` (`streaming`, `waiting`, …); `null` without a WAL receiver. */
  readonly receiver: string | null
  /** `pg_get_wal_replay_pause_state()` is not `not paused`. */
  readonly replayPaused: boolean
  /** `pg_last_wal_replay_lsn()` */
  readonly replayLsn: string | null
  /** `pg_last_wal_receive_lsn()` */
  readonly receiveLsn: string | null
}

/** `PgServer.ReplicatedOptions` @internal */
export interface PgReplicatedOptions extends Pick<
  PgServerOptions,
  "database" | "username" | "startTimeout" | "stopTimeout" | "serverArgs" | "searchPath" | "tmpDir"
> {
  /** default 2 */
  readonly replicas?: number | undefined
}
