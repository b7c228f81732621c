/**
 * The same test on both databases: each `Dialect` gives its server layer (a private server per test file), an
 * Engine on it, a superuser query on a connection of its own, and the few SQL texts that differ. A server that
 * cannot start fails the test with its reason (the layer's error); nothing is skipped.
 */
import { Engine } from "@sessionfx/session"
import { MysqlServer, PgServer } from "@sessionfx/testing"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Mysql from "mysql2/promise"
import * as Pg from "pg"

/** What a test needs of its database, whichever it is. */
export interface Db {
  readonly name: "mariadb" | "postgres"
  /** The application's url. */
  readonly url: Redacted.Redacted<string>
  /** One statement as the superuser, on a connection of its own; `?` placeholders on both. */
  readonly admin: (sql: string, params?: ReadonlyArray<unknown>) => Effect.Effect<ReadonlyArray<Record<string, any>>>
  /** How many statements containing `marker` the server is running now (processlist / pg_stat_activity). */
  readonly running: (marker: string) => Effect.Effect<number>
  /** A statement that sleeps `seconds` on the server, tagged with `marker` in a comment. */
  readonly sleep: (seconds: number, marker: string) => string
  /** An integer primary key table `name(id, v)`. */
  readonly table: (name: string) => string
  /** A table of `rows` numbered rows `n` (for streams), tagged with `marker` in a comment. */
  readonly series: (rows: number, marker?: string) => string
  /** `rows` rows `n`, each with a `pad` of `bytes` letters (wide rows for streams). */
  readonly wide: (rows: number, bytes: number) => string
  /** The `i`-th (from 1) placeholder of a text given to `sql.unsafe`: `?` or `$i`. */
  readonly param: (i: number) => string
  /** The flavor the Engine reports. */
  readonly flavor: string
  /** A statement answering the connection's id on the server as `id` (the one `Session.connectionId` names). */
  readonly connectionId: string
  /** A statement answering the current transaction's isolation level as `iso` (as `SERIALIZABLE` or `serializable`). */
  readonly isolation: string
  /** A statement answering the database the connection uses as `db`. */
  readonly database: string
  /** A statement that sets the session variable `name` (set as the application user, kept by the connection). */
  readonly setVar: (name: string, value: number) => string
  /** A statement answering the session variable `name` as `v` (NULL or empty when unset). */
  readonly getVar: (name: string) => string
  /** Ends the connection `id` from the server's side (KILL CONNECTION, pg_terminate_backend). */
  readonly kill: (id: number) => Effect.Effect<void>
  /** Whether the connection `id` has a transaction open on the server. */
  readonly inTransaction: (id: number) => Effect.Effect<boolean>
  /** Creates the database `name`, the application user's to use. */
  readonly createDatabase: (name: string) => Effect.Effect<void>
  /** Creates a login user `name` with `password` (taken verbatim), allowed to read the application's database. */
  readonly createUser: (name: string, password: string) => Effect.Effect<void>
  /** The application's url with the user, password (verbatim, not encoded) and database given. */
  readonly urlAs: (user: string, password: string, database?: string) => Redacted.Redacted<string>
  /** The superuser's url, on the database `name` (which may not exist). */
  readonly adminUrl: (database: string) => Redacted.Redacted<string>
  /** Fast shutdown, then start (an embedded server only): clients see their connections drop. */
  readonly restart: Effect.Effect<void, unknown>
}

export class DbTag extends Context.Tag("test/Db")<DbTag, Db>() {}

const pgNumbered = (sql: string): string => {
  let i = 0
  return sql.replace(/\?/g, () => `$${++i}`)
}

/** `scheme://user:password@host:port/database`, the password as given (a url a user might write unencoded). */
const rawUrl = (scheme: string, at: { host: string; port: number }, parts: [string, string, string]) =>
  Redacted.make(`${scheme}://${parts[0]}:${parts[1]}@${at.host}:${at.port}/${parts[2]}`)

const mariadb = (serverLayer: Layer.Layer<MysqlServer.MysqlServer, unknown>): Layer.Layer<DbTag, unknown> =>
  Layer.effect(
    DbTag,
    Effect.map(MysqlServer.MysqlServer, (server): Db => {
      const admin = (sql: string, params: ReadonlyArray<unknown> = []) =>
        Effect.promise(async () => {
          const conn = await Mysql.createConnection({
            host: server.admin.host,
            port: server.admin.port,
            user: server.admin.username,
            password: Redacted.value(server.admin.password),
            database: server.database
          })
          try {
            const [rows] = await conn.query(sql, params as Array<unknown>)
            return rows as unknown as ReadonlyArray<Record<string, any>>
          } finally {
            conn.destroy()
          }
        })
      return {
        name: "mariadb",
        url: server.url,
        admin,
        running: (marker) =>
          Effect.map(
            admin(
              "SELECT COUNT(*) AS n FROM information_schema.processlist WHERE info LIKE ? AND info NOT LIKE '%processlist%'",
              [`%${marker}%`]
            ),
            (rows) => Number(rows[0]!.n)
          ),
        sleep: (seconds, marker) => `SELECT SLEEP(${seconds}) /* ${marker} */`,
        table: (name) => `CREATE TABLE IF NOT EXISTS ${name} (id INT PRIMARY KEY, v INT NOT NULL) ENGINE = InnoDB`,
        series: (rows, marker = "") => `SELECT seq AS n /* ${marker} */ FROM seq_1_to_${rows}`,
        wide: (rows, bytes) => `SELECT seq AS n, REPEAT(CHAR(65 + seq % 26), ${bytes}) AS pad FROM seq_1_to_${rows}`,
        param: () => "?",
        flavor: server.flavor,
        connectionId: "SELECT CONNECTION_ID() AS id",
        isolation: "SELECT @@tx_isolation AS iso",
        database: "SELECT DATABASE() AS db",
        setVar: (name, value) => `SET @${name} = ${value}`,
        getVar: (name) => `SELECT @${name} AS v`,
        kill: (id) => Effect.asVoid(admin(`KILL CONNECTION ${id}`)),
        inTransaction: (id) =>
          Effect.map(
            admin("SELECT COUNT(*) AS n FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = ?", [id]),
            (rows) => Number(rows[0]!.n) === 1
          ),
        createDatabase: (name) =>
          Effect.gen(function* () {
            yield* admin(`CREATE DATABASE IF NOT EXISTS ${name}`)
            for (const { host } of yield* admin("SELECT Host AS host FROM mysql.user WHERE User = ?", [
              server.username
            ])) {
              yield* admin(`GRANT ALL ON ${name}.* TO ?@?`, [server.username, host])
            }
          }),
        createUser: (name, password) =>
          Effect.asVoid(
            Effect.zipRight(
              admin(`CREATE USER IF NOT EXISTS ?@'%' IDENTIFIED BY ?`, [name, password]),
              admin(`GRANT SELECT ON \`${server.database}\`.* TO ?@'%'`, [name])
            )
          ),
        urlAs: (user, password, database = server.database) => rawUrl("mysql", server, [user, password, database]),
        adminUrl: (database) =>
          rawUrl("mysql", server.admin, [
            encodeURIComponent(server.admin.username),
            encodeURIComponent(Redacted.value(server.admin.password)),
            database
          ]),
        restart: server.restart
      }
    })
  ).pipe(Layer.provide(serverLayer))

const postgres = (serverLayer: Layer.Layer<PgServer.PgServer, unknown>): Layer.Layer<DbTag, unknown> =>
  Layer.effect(
    DbTag,
    Effect.map(PgServer.PgServer, (server): Db => {
      const admin = (sql: string, params: ReadonlyArray<unknown> = []) =>
        Effect.promise(async () => {
          const client = new Pg.Client({ connectionString: Redacted.value(server.admin.url) })
          await client.connect()
          try {
            const result = await client.query(pgNumbered(sql), params as Array<unknown>)
            return result.rows as ReadonlyArray<Record<string, any>>
          } finally {
            await client.end()
          }
        })
      return {
        name: "postgres",
        url: server.url,
        admin,
        running: (marker) =>
          Effect.map(
            admin(
              "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE ? AND query NOT LIKE '%pg_stat_activity%'",
              [`%${marker}%`]
            ),
            (rows) => Number(rows[0]!.n)
          ),
        sleep: (seconds, marker) => `SELECT pg_sleep(${seconds}) /* ${marker} */`,
        table: (name) => `CREATE TABLE IF NOT EXISTS ${name} (id INT PRIMARY KEY, v INT NOT NULL)`,
        series: (rows, marker = "") => `SELECT n /* ${marker} */ FROM generate_series(1, ${rows}) AS n`,
        wide: (rows, bytes) =>
          `SELECT n, repeat(chr(65 + n % 26), ${bytes}) AS pad FROM generate_series(1, ${rows}) AS n`,
        param: (i) => `$${i}`,
        flavor: "postgresql",
        connectionId: "SELECT pg_backend_pid() AS id",
        isolation: "SELECT current_setting('transaction_isolation') AS iso",
        database: "SELECT current_database() AS db",
        setVar: (name, value) => `SELECT set_config('sfx.${name}', '${value}', false)`,
        getVar: (name) => `SELECT current_setting('sfx.${name}', true) AS v`,
        kill: (id) => Effect.asVoid(admin("SELECT pg_terminate_backend(?::int, 5000)", [id])),
        inTransaction: (id) =>
          Effect.map(
            admin(
              "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE pid = ? AND (xact_start IS NOT NULL OR state = 'idle in transaction (aborted)')",
              [id]
            ),
            (rows) => Number(rows[0]!.n) === 1
          ),
        createDatabase: (name) =>
          Effect.gen(function* () {
            const exists = yield* admin("SELECT 1 FROM pg_database WHERE datname = ?", [name])
            if (exists.length === 0) yield* admin(`CREATE DATABASE ${name} OWNER "${server.username}"`)
          }),
        createUser: (name, password) =>
          Effect.gen(function* () {
            const exists = yield* admin("SELECT 1 FROM pg_roles WHERE rolname = ?", [name])
            const quoted = password.replace(/'/g, "''")
            if (exists.length === 0) yield* admin(`CREATE ROLE "${name}" LOGIN PASSWORD '${quoted}'`)
            yield* admin(`GRANT CONNECT ON DATABASE "${server.database}" TO "${name}"`)
          }),
        urlAs: (user, password, database = server.database) => rawUrl("postgres", server, [user, password, database]),
        adminUrl: (database) => {
          const url = new URL(Redacted.value(server.admin.url))
          url.pathname = `/${database}`
          return Redacted.make(url.toString())
        },
        restart: server.restart
      }
    })
  ).pipe(Layer.provide(serverLayer))

/** Both databases, by name: `for (const [name, layer] of dialects) layer(...)(name, …)`. */
export const dialects: ReadonlyArray<readonly ["mariadb" | "postgres", Layer.Layer<DbTag, unknown>]> = [
  ["mariadb", mariadb(MysqlServer.layer())],
  ["postgres", postgres(PgServer.layer())]
]

/** Both databases on embedded servers whatever MYSQL_URL / PG_URL say (for a test that restarts its server). */
export const embeddedDialects: ReadonlyArray<readonly ["mariadb" | "postgres", Layer.Layer<DbTag, unknown>]> = [
  ["mariadb", mariadb(MysqlServer.layerEmbedded())],
  ["postgres", postgres(PgServer.layerEmbedded())]
]

/** An Engine on the dialect's server. */
export const engineOn = (options: Partial<Engine.EngineOptions> = {}) =>
  Layer.unwrapEffect(Effect.map(DbTag, (db) => Engine.layer({ url: db.url, pool: { size: 4 }, ...options })))
