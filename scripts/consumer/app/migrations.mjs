// docs/testing.md's migrations as an application runs them: @effect/sql's Migrator on a sessionfx Engine, the
// migrations loaded from files (./migrations/0000N_name.js), plain `node`.
/* global console, URL */
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as Migrator from "@effect/sql/Migrator"
import { fromFileSystem } from "@effect/sql/Migrator/FileSystem"
import * as SqlClient from "@effect/sql/SqlClient"
import { Session } from "@sessionfx/session"
import { MysqlServer } from "@sessionfx/testing"
import * as Effect from "effect/Effect"
import { fileURLToPath } from "node:url"

const migrate = Migrator.make({})({ loader: fromFileSystem(fileURLToPath(new URL("migrations", import.meta.url))) })

const program = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  yield* sql`DROP TABLE IF EXISTS customers, effect_sql_migrations` // MYSQL_URL may name a server used before
  const first = yield* migrate
  const second = yield* migrate
  yield* Session.transact(sql`INSERT INTO customers (id, name, email) VALUES (1, 'Ada', 'ada@example.org')`)
  const rows = yield* sql`SELECT name, email FROM customers`
  return { first: first.map(([id, name]) => `${id}_${name}`), second: second.length, rows: rows.length }
})

const result = await Effect.runPromise(
  program.pipe(Effect.provide(NodeContext.layer), Effect.provide(MysqlServer.layerEngine()))
)
console.log(JSON.stringify(result))
if (result.first.join(",") !== "1_create_customers,2_customer_email" || result.second !== 0 || result.rows !== 1) {
  throw new Error(`unexpected migrations outcome: ${JSON.stringify(result)}`)
}
console.log("migrations: ok")
