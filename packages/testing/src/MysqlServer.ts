/**
 * A real, private MySQL-compatible server for tests and local apps: an embedded MariaDB / MySQL started in a
 * temporary (or persistent) data directory, or an existing server named by `MYSQL_URL`.
 *
 * @since 0.1.0
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import { Engine } from "@sessionfx/session"
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import type * as ConfigError from "effect/ConfigError"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import * as internal from "./internal/server.js"
import * as MysqlCluster from "./MysqlCluster.js"
import type { MysqlServerError } from "./internal/serverError.js"
import type * as Types from "./internal/types.js"

export {
  /**
   * @since 0.1.0
   * @category errors
   */
  MysqlServerInvalidUrl,
  /**
   * @since 0.1.0
   * @category errors
   */
  MysqlServerNotInstalled,
  /**
   * @since 0.1.0
   * @category errors
   */
  MysqlServerStartFailed,
  /**
   * @since 0.1.0
   * @category errors
   */
  MysqlServerUnavailable,
  /**
   * @since 0.1.0
   * @category errors
   */
  MysqlServerUnsupported
} from "./internal/serverError.js"

export type {
  /**
   * @since 0.1.0
   * @category errors
   */
  MysqlServerError
} from "./internal/serverError.js"

/**
 * @since 0.1.0
 * @category tags
 */
export class MysqlServer extends Context.Tag("@sessionfx/testing/MysqlServer")<MysqlServer, MysqlServer.Service>() {}

/**
 * @since 0.1.0
 */
export declare namespace MysqlServer {
  /**
   * @since 0.1.0
   * @category models
   */
  export interface Service extends Types.ServerService {}

  /**
   * @since 0.1.0
   * @category models
   */
  export interface Admin extends Types.ServerAdmin {}
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Options extends Types.ServerOptions {}

/**
 * @since 0.1.0
 * @category models
 */
export interface ExternalOptions extends Types.ExternalOptions {}

/**
 * The server named by `MYSQL_URL` (admin from `MYSQL_ADMIN_URL`, else the same url) when that variable is set,
 * otherwise an embedded server. Read through the current `ConfigProvider`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: (options?: Options) => Effect.Effect<MysqlServer.Service, MysqlServerError, Scope.Scope> =
  internal.make

/**
 * Starts a private embedded server whose lifetime is the scope: stopped gracefully and its temporary files removed
 * when the scope closes; a watchdog does the same if the owning process dies first.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeEmbedded: (options?: Options) => Effect.Effect<MysqlServer.Service, MysqlServerError, Scope.Scope> =
  internal.makeEmbedded

/**
 * Uses an existing server; launches nothing.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeExternal = (options: ExternalOptions): Effect.Effect<MysqlServer.Service, MysqlServerError> =>
  internal.makeExternal(options)

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options?: Options): Layer.Layer<MysqlServer, MysqlServerError> =>
  Layer.scoped(MysqlServer, make(options))

/**
 * Always an embedded server, whatever `MYSQL_URL` says.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerEmbedded = (options?: Options): Layer.Layer<MysqlServer, MysqlServerError> =>
  Layer.scoped(MysqlServer, makeEmbedded(options))

/**
 * @since 0.1.0
 * @category layers
 */
export const layerExternal = (options: ExternalOptions): Layer.Layer<MysqlServer, MysqlServerError> =>
  Layer.effect(MysqlServer, makeExternal(options))

/**
 * `layer` with its options read from configuration.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  config: Config.Config.Wrap<Options>
): Layer.Layer<MysqlServer, MysqlServerError | ConfigError.ConfigError> =>
  Layer.scoped(MysqlServer, Effect.flatMap(Config.unwrap(config), make))

/**
 * The options of `engine` / `layerEngine`: every Engine option except where the server is, which comes from the
 * `MysqlServer` in context.
 *
 * @since 0.2.0
 * @category models
 */
export type EngineOptions = Omit<
  Engine.EngineOptions,
  "url" | "host" | "port" | "database" | "username" | "password" | "socketPath"
>

type EngineLayer = ReturnType<typeof Engine.layer>

/**
 * An Engine (and its autocommit `SqlClient`) on the `MysqlServer` in context; the pool size defaults to 4.
 *
 * @example
 * import { MysqlServer } from "@sessionfx/testing"
 * import { Layer } from "effect"
 *
 * // one server, two engines on it
 * export const Engines = Layer.merge(
 *   MysqlServer.engine({ name: "small", pool: { size: 1 } }),
 *   MysqlServer.engine({ name: "large", pool: { size: 8 } })
 * ).pipe(Layer.provide(MysqlServer.layer()))
 *
 * @since 0.2.0
 * @category layers
 */
export const engine = (
  options: EngineOptions = {}
): Layer.Layer<Layer.Layer.Success<EngineLayer>, Layer.Layer.Error<EngineLayer>, MysqlServer> =>
  Layer.unwrapEffect(
    Effect.map(MysqlServer, (server) =>
      Engine.layer({ ...options, pool: { size: 4, ...options.pool }, url: server.url })
    )
  )

/**
 * A private server and an Engine on it in one layer, for a test file (`layer(MysqlServer.layerEngine())("suite",
 * (it) => …)` with `@effect/vitest`) or a local script. The `MysqlServer` is provided too (admin access, restart).
 *
 * @example
 * import * as SqlClient from "@effect/sql/SqlClient"
 * import { Session } from "@sessionfx/session"
 * import { MysqlServer } from "@sessionfx/testing"
 * import { Effect } from "effect"
 *
 * // started, used and removed with the program
 * export const main = Session.transact(Effect.flatMap(SqlClient.SqlClient, (sql) => sql`SELECT 1`)).pipe(
 *   Effect.provide(MysqlServer.layerEngine({ engine: { pool: { size: 2 } } }))
 * )
 *
 * @since 0.2.0
 * @category layers
 */
export const layerEngine = (
  options: { readonly engine?: EngineOptions | undefined; readonly server?: Options | undefined } = {}
): Layer.Layer<
  Layer.Layer.Success<EngineLayer> | MysqlServer | SqlClient.SqlClient,
  Layer.Layer.Error<EngineLayer> | MysqlServerError
> => engine(options.engine).pipe(Layer.provideMerge(layer(options.server)))

/**
 * A primary with GTID replicas: `MysqlCluster.replicated`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const replicated: typeof MysqlCluster.replicated = MysqlCluster.replicated

/**
 * A Galera cluster: `MysqlCluster.galera`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const galera: typeof MysqlCluster.galera = MysqlCluster.galera
