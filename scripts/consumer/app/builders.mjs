// Drizzle and Kysely users are on @effect/sql 0.51 (what @effect/sql-drizzle 0.50 and @effect/sql-kysely 0.47
// require): their queries join a sessionfx unit of work and roll back with it. Plain `node`, ESM, the packages
// installed from their tarballs with npm.
/* global console */
import * as MysqlDrizzle from "@effect/sql-drizzle/Mysql"
import * as MysqlKysely from "@effect/sql-kysely/Mysql"
import * as SqlClient from "@effect/sql/SqlClient"
import { Session } from "@sessionfx/session"
import { MysqlServer } from "@sessionfx/testing"
import { eq, sql } from "drizzle-orm"
import { bigint, int, mysqlTable } from "drizzle-orm/mysql-core"
import * as Effect from "effect/Effect"

const accounts = mysqlTable("accounts", {
  id: int("id").primaryKey(),
  balance: bigint("balance", { mode: "number" }).notNull()
})

const builders = {
  drizzle: Effect.map(MysqlDrizzle.make(), (db) => ({
    credit: (id, amount) =>
      db
        .update(accounts)
        .set({ balance: sql`${accounts.balance} + ${amount}` })
        .where(eq(accounts.id, id)),
    balances: db.select().from(accounts).orderBy(accounts.id)
  })),
  kysely: Effect.map(MysqlKysely.make(), (db) => ({
    credit: (id, amount) =>
      db
        .updateTable("accounts")
        .set((eb) => ({ balance: eb("balance", "+", amount) }))
        .where("id", "=", id),
    balances: db.selectFrom("accounts").selectAll().orderBy("id")
  }))
}

const run = (name, builder) =>
  Effect.gen(function* () {
    const { credit, balances } = yield* builder
    const sql = yield* SqlClient.SqlClient
    yield* sql`DROP TABLE IF EXISTS accounts` // MYSQL_URL may name a server used before
    yield* sql`CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL)`
    yield* sql`INSERT INTO accounts VALUES (1, 100), (2, 0)`
    yield* Session.transact(Effect.zipRight(credit(1, -30), credit(2, 30)))
    const rolledBack = yield* Session.transact(Effect.zipRight(credit(1, -500), Effect.fail("overdrawn"))).pipe(
      Effect.catchAll((e) => Effect.succeed(`rolled back (${e})`))
    )
    const rows = yield* balances
    const result = { rolledBack, balances: rows.map((row) => `${row.id}:${Number(row.balance)}`).join(" ") }
    console.log(`${name}: ${JSON.stringify(result)}`)
    if (result.balances !== "1:70 2:30") return yield* Effect.die(new Error(`${name}: ${JSON.stringify(result)}`))
  })

await Effect.runPromise(
  Effect.forEach(Object.entries(builders), ([name, builder]) => run(name, builder), { discard: true }).pipe(
    Effect.provide(MysqlServer.layerEngine())
  )
)
console.log("query builders: ok")
