/**
 * A real, private PostgreSQL server for tests and local scripts: started from the installed binaries (Debian's
 * `postgresql`) in a temporary data directory, or an existing server named by `PG_URL`. The sibling of
 * `MysqlServer`, with the same shape.
 *
 * @since 0.2.0
 */
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import * as internalReplicated from "./internal/pgReplicated.js"
import * as internal from "./internal/pgServer.js"
import type { PgServerError } from "./internal/pgServerError.js"
import type * as Types from "./internal/types.js"

export {
  /**
   * @since 0.2.0
   * @category errors
   */
  PgServerInvalidUrl,
  /**
   * @since 0.2.0
   * @category errors
   */
  PgServerNotInstalled,
  /**
   * @since 0.2.0
   * @category errors
   */
  PgServerStartFailed,
  /**
   * @since 0.2.0
   * @category errors
   */
  PgServerUnavailable,
  /**
   * @since 0.2.0
   * @category errors
   */
  PgServerUnsupported
} from "./internal/pgServerError.js"

export type {
  /**
   * @since 0.2.0
   * @category errors
   */
  PgServerError
} from "./internal/pgServerError.js"

/**
 * @since 0.2.0
 * @category tags
 */
export class PgServer extends Context.Tag("@sessionfx/testing/PgServer")<PgServer, PgServer.Service>() {}

/**
 * @since 0.2.0
 */
export declare namespace PgServer {
  /**
   * @since 0.2.0
   * @category models
   */
  export interface Service extends Types.PgServerService {}

  /**
   * @since 0.2.0
   * @category models
   */
  export interface Admin extends Types.PgServerAdmin {}
}

/**
 * @since 0.2.0
 * @category models
 */
export interface Options extends Types.PgServerOptions {}

/**
 * @since 0.2.0
 * @category models
 */
export interface ExternalOptions extends Types.PgExternalOptions {}

/**
 * The server named by `PG_URL` (admin from `PG_ADMIN_URL`, else the same url) when that variable is set, otherwise
 * an embedded server. Read through the current `ConfigProvider`.
 *
 * @since 0.2.0
 * @category constructors
 */
export const make: (options?: Options) => Effect.Effect<PgServer.Service, PgServerError, Scope.Scope> = internal.make

/**
 * Starts a private embedded server whose lifetime is the scope: `initdb` in a temporary directory (fsync,
 * synchronous_commit and full_page_writes off), a free loopback port, an application role and a superuser; stopped
 * (fast shutdown) and its files removed when the scope closes; a watchdog does the same if the owning process dies
 * first. Run by root, the server runs as the `postgres` OS user (PostgreSQL refuses to run as root).
 *
 * @since 0.2.0
 * @category constructors
 */
export const makeEmbedded: (options?: Options) => Effect.Effect<PgServer.Service, PgServerError, Scope.Scope> =
  internal.makeEmbedded

/**
 * Uses an existing server; launches nothing.
 *
 * @since 0.2.0
 * @category constructors
 */
export const makeExternal = (options: ExternalOptions): Effect.Effect<PgServer.Service, PgServerError> =>
  internal.makeExternal(options)

/**
 * @example
 * import { PgServer } from "@sessionfx/testing"
 *
 * // one private server for the test file, or PG_URL's; in a test file:
 * // layer(PgServerLive, { excludeTestServices: true, timeout: "2 minutes" })("accounts", (it) => { … })
 * export const PgServerLive = PgServer.layer()
 *
 * @since 0.2.0
 * @category layers
 */
export const layer = (options?: Options): Layer.Layer<PgServer, PgServerError> => Layer.scoped(PgServer, make(options))

/**
 * Always an embedded server, whatever `PG_URL` says.
 *
 * @since 0.2.0
 * @category layers
 */
export const layerEmbedded = (options?: Options): Layer.Layer<PgServer, PgServerError> =>
  Layer.scoped(PgServer, makeEmbedded(options))

/**
 * @since 0.2.0
 * @category layers
 */
export const layerExternal = (options: ExternalOptions): Layer.Layer<PgServer, PgServerError> =>
  Layer.effect(PgServer, makeExternal(options))

/**
 * `layer` with its options read from configuration.
 *
 * @since 0.2.0
 * @category layers
 */
export const layerConfig = (
  config: Config.Config.Wrap<Options>
): Layer.Layer<PgServer, PgServerError | ConfigError.ConfigError> =>
  Layer.scoped(PgServer, Effect.flatMap(Config.unwrap(config), make))

/**
 * A primary and its streaming replicas (see `replicated`).
 *
 * @since 0.3.0
 * @category models
 */
export interface Replicated extends Types.PgReplicated {}

/**
 * A replica: a hot standby (the application role can read, not write), with the controls tests need. `pauseReplay`
 * makes it lag deterministically; `stop` / `kill` then `start` brings it back streaming from where it stopped.
 *
 * @since 0.3.0
 * @category models
 */
export interface Replica extends Types.PgReplica {}

/**
 * @since 0.3.0
 * @category models
 */
export interface ReplicationStatus extends Types.PgReplicationStatus {}

/**
 * @since 0.3.0
 * @category models
 */
export interface ReplicatedOptions extends Types.PgReplicatedOptions {}

/**
 * A primary and `replicas` (default 2) streaming replicas, embedded and on loopback: the primary as `makeEmbedded`
 * makes it, each replica a `pg_basebackup` of it (`-R`: a standby streaming over the primary's unix socket, hot
 * standby for reads), started in parallel; returns once every replica streams. Always embedded (`PG_URL` is not
 * consulted); stopped and removed with the scope.
 *
 * @since 0.3.0
 * @category constructors
 */
export const replicated: (options?: ReplicatedOptions) => Effect.Effect<Replicated, PgServerError, Scope.Scope> =
  internalReplicated.replicated

/**
 * @since 0.3.0
 * @category tags
 */
export class ReplicatedServers extends Context.Tag("@sessionfx/testing/PgServer/ReplicatedServers")<
  ReplicatedServers,
  Replicated
>() {}

/**
 * @example
 * import { PgServer } from "@sessionfx/testing"
 *
 * // a primary and two streaming replicas for the test file:
 * // layer(PgReplicatedLive, { excludeTestServices: true, timeout: "2 minutes" })("replicas", (it) => { … })
 * export const PgReplicatedLive = PgServer.layerReplicated({ replicas: 2 })
 *
 * @since 0.3.0
 * @category layers
 */
export const layerReplicated = (options?: ReplicatedOptions): Layer.Layer<ReplicatedServers, PgServerError> =>
  Layer.scoped(ReplicatedServers, replicated(options))
