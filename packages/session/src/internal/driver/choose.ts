/**
 * The one place that chooses a driver: the url's scheme (`Target.dialect`) names the database, and this builds its
 * `ServerDriver` and the `@effect/sql` compiler of its SQL (placeholders, identifier quoting).
 *
 * @internal
 */
import type * as Statement from "@effect/sql/Statement"
import { makeCompiler as mysqlCompiler } from "./mysql/compiler.js"
import { keysSql as mysqlKeys } from "./mysql/dialect.js"
import { MysqlServer } from "./mysql/server.js"
import { makeCompiler as pgCompiler } from "./pg/compiler.js"
import { keysSql as pgKeys } from "./pg/dialect.js"
import { PgServer } from "./pg/server.js"
import type { DriverTarget, ServerDriver } from "./types.js"

/** The database family an Engine's url names (its scheme). @internal */
export type Dialect = "mysql" | "postgres"

/** Where to connect, as every driver takes it. @internal */
export type { DriverTarget } from "./types.js"

/** @internal */
export interface DriverOptions {
  readonly dialect: Dialect
  readonly target: DriverTarget
  /** Ask the server for each commit's causality token (a topology). */
  readonly trackCommits: boolean
  readonly onCommitTrackingRefused: (message: string) => void
}

/** The driver of one server. @internal */
export const makeDriver = (o: DriverOptions): ServerDriver =>
  o.dialect === "postgres"
    ? new PgServer(o.target, o.trackCommits)
    : new MysqlServer({
        target: o.target,
        trackCommits: o.trackCommits,
        onCommitTrackingRefused: o.onCommitTrackingRefused
      })

/** The statement compiler of a dialect (the one `@effect/sql-mysql2` / `@effect/sql-pg` build). @internal */
export const makeCompiler = (dialect: Dialect, transform?: (_: string) => string): Statement.Compiler =>
  dialect === "postgres" ? pgCompiler(transform) : mysqlCompiler(transform)

/** The server family from its version string: what `Engine.flavor` says. @internal */
export const flavorOf = (dialect: Dialect, version: string): "mariadb" | "mysql" | "postgresql" =>
  dialect === "postgres" ? "postgresql" : /mariadb/i.test(version) ? "mariadb" : "mysql"

/** The keyed-unit table's DDL in a dialect (`Session.keyTableDdl` is MySQL's). @internal */
export const keyTableDdl = (dialect: Dialect, table: string): string =>
  dialect === "postgres" ? pgKeys(table).create : mysqlKeys(table).create
