/**
 * Ephemeral MariaDB topologies for tests of scale-out: a primary with GTID replicas, and a Galera cluster. Every
 * server is an embedded `MysqlServer` (same template, same controls: `kill`, `start`, `stop`, `restart`), on
 * loopback, stopped and removed with the scope.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import type * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import * as internal from "./internal/cluster.js"
import type { MysqlServerError } from "./internal/serverError.js"
import type * as Types from "./internal/types.js"

/**
 * A primary and its replicas (MariaDB GTID replication on loopback), all sharing the same users and passwords.
 *
 * @since 0.1.0
 * @category models
 */
export interface Replicated extends Types.Replicated {}

/**
 * A replica (`--read-only`: the application user cannot write to it), with the controls tests need. `kill` then
 * `start` brings it back replicating from where it stopped.
 *
 * @since 0.1.0
 * @category models
 */
export interface Replica extends Types.Replica {}

/**
 * @since 0.1.0
 * @category models
 */
export interface ReplicationStatus extends Types.ReplicationStatus {}

/**
 * A Galera cluster on loopback; every node is a full server that takes writes.
 *
 * @since 0.1.0
 * @category models
 */
export interface Galera extends Types.Galera {}

/**
 * A Galera node. `kill` is a crash (the others drop it from the cluster in a few seconds); `start` rejoins and
 * returns once the node is synced again.
 *
 * @since 0.1.0
 * @category models
 */
export interface GaleraNode extends Types.GaleraNode {}

/**
 * @since 0.1.0
 * @category models
 */
export interface GaleraStatus extends Types.GaleraStatus {}

/**
 * The options every server of a set shares; `startTimeout` is per server (default 60 seconds, 90 for a Galera node,
 * which may wait for a state transfer).
 *
 * @since 0.1.0
 * @category models
 */
export interface ClusterOptions extends Types.ClusterOptions {}

/**
 * @since 0.1.0
 * @category models
 */
export interface ReplicatedOptions extends Types.ReplicatedOptions {}

/**
 * @since 0.1.0
 * @category models
 */
export interface GaleraOptions extends Types.GaleraOptions {}

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
