/**
 * Ephemeral MariaDB topologies for tests of scale-out: a primary with GTID replicas, and a Galera cluster. Every
 * server is an embedded `MysqlServer` (same template, same controls: `kill`, `start`, `stop`, `restart`), on
 * loopback, stopped and removed with the scope.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import type * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import * as internal from "./internal/cluster.js"
import type { MysqlServerError } from "./internal/serverError.js"
import type { MysqlServer, Options } from "./MysqlServer.js"

/**
 * A primary and its replicas (MariaDB GTID replication on loopback), all sharing the same users and passwords.
 *
 * @since 0.1.0
 * @category models
 */
export interface Replicated {
  readonly primary: MysqlServer.Service
  readonly replicas: ReadonlyArray<Replica>
  /** The primary, then the replicas. */
  readonly servers: ReadonlyArray<MysqlServer.Service>
}

/**
 * A replica (`--read-only`: the application user cannot write to it), with the controls tests need. `kill` then
 * `start` brings it back replicating from where it stopped.
 *
 * @since 0.1.0
 * @category models
 */
export interface Replica extends MysqlServer.Service {
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

/**
 * @since 0.1.0
 * @category models
 */
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

/**
 * A Galera cluster on loopback; every node is a full server that takes writes.
 *
 * @since 0.1.0
 * @category models
 */
export interface Galera {
  readonly nodes: ReadonlyArray<GaleraNode>
  /** `gcomm://127.0.0.1:port,…` */
  readonly clusterAddress: string
  /** Waits until a running node is ready and reports this `wsrep_cluster_size`; default 60 seconds. */
  readonly waitForClusterSize: (size: number, timeout?: Duration.DurationInput) => Effect.Effect<void, MysqlServerError>
}

/**
 * A Galera node. `kill` is a crash (the others drop it from the cluster in a few seconds); `start` rejoins and
 * returns once the node is synced again.
 *
 * @since 0.1.0
 * @category models
 */
export interface GaleraNode extends MysqlServer.Service {
  /** 0-based; the node is named `node${index + 1}`. */
  readonly index: number
  readonly status: Effect.Effect<GaleraStatus, MysqlServerError>
  /** Waits until the node is `Synced` with `wsrep_ready=ON`; default 60 seconds. */
  readonly waitReady: (timeout?: Duration.DurationInput) => Effect.Effect<void, MysqlServerError>
}

/**
 * @since 0.1.0
 * @category models
 */
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

/**
 * The options every server of a set shares; `startTimeout` is per server (default 60 seconds, 90 for a Galera node,
 * which may wait for a state transfer).
 *
 * @since 0.1.0
 * @category models
 */
export interface ClusterOptions extends Pick<
  Options,
  "database" | "username" | "startTimeout" | "stopTimeout" | "serverArgs" | "searchPath" | "tmpDir"
> {}

/**
 * @since 0.1.0
 * @category models
 */
export interface ReplicatedOptions extends ClusterOptions {
  /** default 2 */
  readonly replicas?: number | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
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

/**
 * A primary and `replicas` replicas of MariaDB with GTID replication (`MASTER_USE_GTID=slave_pos`), embedded and on
 * loopback, started in parallel; returns once every replica replicates. Always embedded (`MYSQL_URL` is not
 * consulted); MariaDB only.
 *
 * @since 0.1.0
 * @category constructors
 */
export const replicated: (options?: ReplicatedOptions) => Effect.Effect<Replicated, MysqlServerError, Scope.Scope> =
  internal.replicated

/**
 * A Galera cluster of `nodes` MariaDB nodes on loopback (Debian's `galera-4`, rsync state transfer): the first node
 * bootstraps, the others join together; returns once all are synced. Run as root, the nodes run as the `mysql`
 * user (the rsync state transfer fails as root).
 *
 * @since 0.1.0
 * @category constructors
 */
export const galera: (options?: GaleraOptions) => Effect.Effect<Galera, MysqlServerError, Scope.Scope> = internal.galera

/**
 * @since 0.1.0
 * @category tags
 */
export class ReplicatedServers extends Context.Tag("@sessionfx/testing/MysqlCluster/ReplicatedServers")<
  ReplicatedServers,
  Replicated
>() {}

/**
 * @since 0.1.0
 * @category tags
 */
export class GaleraCluster extends Context.Tag("@sessionfx/testing/MysqlCluster/GaleraCluster")<
  GaleraCluster,
  Galera
>() {}

/**
 * @since 0.1.0
 * @category layers
 */
export const layerReplicated = (options?: ReplicatedOptions): Layer.Layer<ReplicatedServers, MysqlServerError> =>
  Layer.scoped(ReplicatedServers, replicated(options))

/**
 * @since 0.1.0
 * @category layers
 */
export const layerGalera = (options?: GaleraOptions): Layer.Layer<GaleraCluster, MysqlServerError> =>
  Layer.scoped(GaleraCluster, galera(options))
