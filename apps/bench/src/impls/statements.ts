/**
 * The four statements of the transfer unit, written once for every `@effect/sql` client so that the Effect
 * implementations differ only in how they open, commit and retry the transaction.
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import * as Effect from "effect/Effect"

export const SELECT_FOR_UPDATE = "SELECT balance FROM accounts WHERE id IN (?, ?) FOR UPDATE"
export const DEBIT = "UPDATE accounts SET balance = balance - ? WHERE id = ?"
export const CREDIT = "UPDATE accounts SET balance = balance + ? WHERE id = ?"
export const INSERT_TRANSFER = "INSERT INTO transfers (src, dst, amount) VALUES (?, ?, ?)"

export const sqlTransfer = (sql: SqlClient.SqlClient, a: number, b: number, amount: number) =>
  Effect.gen(function* () {
    yield* sql`SELECT balance FROM accounts WHERE id IN (${a}, ${b}) FOR UPDATE`
    yield* sql`UPDATE accounts SET balance = balance - ${amount} WHERE id = ${a}`
    yield* sql`UPDATE accounts SET balance = balance + ${amount} WHERE id = ${b}`
    yield* sql`INSERT INTO transfers (src, dst, amount) VALUES (${a}, ${b}, ${amount})`
  })
