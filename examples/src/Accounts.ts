/**
 * The table the examples share: `accounts(id, balance)`, declared for Drizzle (`mysql-core`) and for Kysely.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Session } from "@sessionfx/session"
import { bigint, int, mysqlTable } from "drizzle-orm/mysql-core"
import * as Data from "effect/Data"
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

/** A transfer would leave the account below zero. */
export class Insufficient extends Data.TaggedError("Insufficient")<{ readonly id: number }> {}

/**
 * The scenario every query-builder example runs with its own `transfer`: one transfer commits, one overdraws and is
 * rolled back, and inside a third unit a nested transfer (a savepoint) fails alone while the outer one commits.
 */
export const transferScenario = <E, R>(
  transfer: (from: number, to: number, amount: number) => Effect.Effect<void, E | Insufficient, R>
) =>
  Effect.gen(function* () {
    yield* createAccounts([100, 0, 0])
    yield* Session.transact(transfer(1, 2, 30), { retry: true })
    const overdrawn = yield* Session.transact(transfer(1, 2, 500)).pipe(
      Effect.as("committed"),
      Effect.catchIf(
        (e): e is Insufficient => e instanceof Insufficient,
        (e) => Effect.succeed(`account ${e.id} would be overdrawn: rolled back`)
      )
    )
    yield* Session.transact(
      Effect.gen(function* () {
        yield* transfer(2, 3, 10)
        yield* Session.transact(transfer(3, 1, 1_000)).pipe(
          Effect.catchIf(
            (e): e is Insufficient => e instanceof Insufficient,
            () => Effect.void
          )
        )
      })
    )
    return { overdrawn, balances: yield* balances }
  })
