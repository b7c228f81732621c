// Drizzle users are on @effect/sql 0.51 (what @effect/sql-drizzle 0.50 requires): their queries join a sessionfx
// unit of work. Plain `node`, ESM, the packages installed from their tarballs with npm.
/* global console */
import * as MysqlDrizzle from "@effect/sql-drizzle/Mysql"
import * as SqlClient from "@effect/sql/SqlClient"
import { Session } from "@sessionfx/session"
import { MysqlServer } from "@sessionfx/testing"
import { eq, sql } from "drizzle-orm"
import { bigint, int, mysqlTable } from "drizzle-orm/mysql-core"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"

const accounts = mysqlTable("accounts", {
  id: int("id").primaryKey(),
  balance: bigint("balance", { mode: "number" }).notNull()
})

const credit = (id, amount) =>
  Effect.flatMap(MysqlDrizzle.MysqlDrizzle, (db) =>
    db
      .update(accounts)
      .set({ balance: sql`${accounts.balance} + ${amount}` })
      .where(eq(accounts.id, id))
  )

const balances = Effect.flatMap(MysqlDrizzle.MysqlDrizzle, (db) =>
  Effect.map(db.select().from(accounts).orderBy(accounts.id), (rows) =>
    rows.map((row) => `${row.id}:${row.balance}`).join(" ")
  )
)

const main = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  yield* sql`DROP TABLE IF EXISTS accounts` // MYSQL_URL may name a server used before
  yield* sql`CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL)`
  yield* sql`INSERT INTO accounts VALUES (1, 100), (2, 0)`
  yield* Session.transact(Effect.zipRight(credit(1, -30), credit(2, 30)))
  const rolledBack = yield* Session.transact(Effect.zipRight(credit(1, -500), Effect.fail("overdrawn"))).pipe(
    Effect.catchAll((e) => Effect.succeed(`rolled back (${e})`))
  )
  const result = { rolledBack, balances: yield* balances }
  console.log(JSON.stringify(result))
  if (result.balances !== "1:70 2:30") return yield* Effect.die(new Error(`unexpected: ${JSON.stringify(result)}`))
})

await Effect.runPromise(
  main.pipe(Effect.provide(MysqlDrizzle.layer.pipe(Layer.provideMerge(MysqlServer.layerEngine()))))
)
console.log("drizzle program: ok")
