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
  /** A table of `rows` numbered rows (for streams). */
  readonly series: (rows: number) => string
}

export class DbTag extends Context.Tag("test/Db")<DbTag, Db>() {}

const pgNumbered = (sql: string): string => {
  let i = 0
  return sql.replace(/\?/g, () => `$${++i}`)
}

const mariadb: Layer.Layer<DbTag, unknown> = Layer.effect(
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
      series: (rows) => `SELECT seq AS n FROM seq_1_to_${rows}`
    }
  })
).pipe(Layer.provide(MysqlServer.layer()))

const postgres: Layer.Layer<DbTag, unknown> = Layer.effect(
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
      series: (rows) => `SELECT n FROM generate_series(1, ${rows}) AS n`
    }
  })
).pipe(Layer.provide(PgServer.layer()))

/** Both databases, by name: `for (const [name, layer] of dialects) layer(...)(name, …)`. */
export const dialects: ReadonlyArray<readonly ["mariadb" | "postgres", Layer.Layer<DbTag, unknown>]> = [
  ["mariadb", mariadb],
  ["postgres", postgres]
]

/** An Engine on the dialect's server. */
export const engineOn = (options: Partial<Engine.EngineOptions> = {}) =>
  Layer.unwrapEffect(Effect.map(DbTag, (db) => Engine.layer({ url: db.url, pool: { size: 4 }, ...options })))
