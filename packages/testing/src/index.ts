/**
 * @since 0.1.0
 */
export * as MysqlServer from "./MysqlServer.js"

/**
 * @since 0.2.0
 */
export * as PgServer from "./PgServer.js"

/**
 * @since 0.1.0
 */
export * as MysqlCluster from "./MysqlCluster.js"

/**
 * @since 0.1.0
 */
export * as SessionTest from "./SessionTest.js"

/**
 * @since 0.1.0
 */
export * as FaultProxy from "./FaultProxy.js"

/**
 * @since 0.1.0
 */
export * as Prng from "./Prng.js"
