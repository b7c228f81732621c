/**
 * The table the examples share: `accounts(id, balance)`, declared for Drizzle (`mysql-core`) and for Kysely.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { bigint, int, mysqlTable } from "drizzle-orm/mysql-core"
import * as Effect from "effect/Effect"

/** Drizzle's declaration of the table. */
export const accounts = mysqlTable("accounts", {
  id: int("id").primaryKey(),
  balance: bigint("balance", { mode: "number" }).notNull()
})

/** Kysely's declaration of the database. */
export interface Database {
  readonly accounts: { readonly id: number; readonly balance: number }
}

/** Creates `accounts` afresh with the given balances (autocommit, through the Engine's client). */
export const createAccounts = (balances: ReadonlyArray<number>) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    yield* sql`DROP TABLE IF EXISTS accounts`
    yield* sql`CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL)`
    yield* Effect.forEach(balances, (balance, i) => sql`INSERT INTO accounts ${sql.insert({ id: i + 1, balance })}`, {
      discard: true
    })
  })

/** `id:balance` of every account, in id order. */
export const balances = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  Effect.map(sql<{ id: number; balance: number | string }>`SELECT id, balance FROM accounts ORDER BY id`, (rows) =>
    rows.map((row) => `${row.id}:${Number(row.balance)}`).join(" ")
  )
)
