/**
 * The ledger's statements where MariaDB / MySQL and PostgreSQL differ, chosen once per Engine from `Engine.flavor`:
 * how a new row's id comes back (the INSERT's OK packet there, `RETURNING id` here) and how a bound amount is made a
 * 64-bit integer in SQL (`CAST(? AS SIGNED)` there, `CAST($n AS bigint)` here). Everything else the ledger sends is one
 * text for both (`SELECT … ORDER BY id FOR UPDATE`, the key lookup, the history page), written in `Ledger.ts`.
 *
 * The MariaDB texts are those of bench/floor.ts (whitespace included).
 */
import type * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import type * as Statement from "@effect/sql/Statement"
import * as Effect from "effect/Effect"

/** An integer as a driver hands it over: a number when it is safe, a string or a bigint otherwise. */
export type Int = number | string | bigint

/** The ledger's SQL client and the statements of its database. */
export interface Db {
  readonly sql: SqlClient.SqlClient
  /** Inserts a transfer row (`key`: the idempotency key's UTF-8 bytes) and answers its id. */
  readonly insertTransfer: (
    from: number | null,
    to: number | null,
    amount: bigint,
    key: Uint8Array | null
  ) => Effect.Effect<Int, SqlError>
  /** Inserts an account with balance 0 and answers its id. */
  readonly insertAccount: (name: string) => Effect.Effect<Int, SqlError>
  /** Moves `amount` from `from` to `to`, both rows locked already: one statement. */
  readonly transfer: (from: number, to: number, amount: bigint) => Statement.Statement<unknown>
  readonly debit: (from: number, amount: bigint) => Statement.Statement<unknown>
  readonly credit: (to: number, amount: bigint) => Statement.Statement<unknown>
}

const insertId = (result: unknown): Int => (result as { insertId: Int }).insertId

const mysql = (sql: SqlClient.SqlClient): Db => ({
  sql,
  insertTransfer: (from, to, amount, key) =>
    Effect.map(
      sql`
      INSERT INTO transfers (src, dst, amount, idempotency_key)
      VALUES (${from}, ${to}, CAST(${amount} AS SIGNED), ${key})`.raw,
      insertId
    ),
  insertAccount: (name) => Effect.map(sql`INSERT INTO accounts (name, balance) VALUES (${name}, 0)`.raw, insertId),
  transfer: (from, to, amount) => sql`
        UPDATE accounts SET balance = balance + CASE WHEN id = ${from} THEN -CAST(${amount} AS SIGNED)
          ELSE CAST(${amount} AS SIGNED) END
        WHERE id IN (${from}, ${to})`,
  debit: (from, amount) => sql`UPDATE accounts SET balance = balance - CAST(${amount} AS SIGNED) WHERE id = ${from}`,
  credit: (to, amount) => sql`UPDATE accounts SET balance = balance + CAST(${amount} AS SIGNED) WHERE id = ${to}`
})

const returnedId = (rows: ReadonlyArray<{ readonly id: Int }>): Int => rows[0]!.id

const postgresql = (sql: SqlClient.SqlClient): Db => ({
  sql,
  insertTransfer: (from, to, amount, key) =>
    Effect.map(
      sql<{ id: Int }>`
      INSERT INTO transfers (src, dst, amount, idempotency_key)
      VALUES (${from}, ${to}, CAST(${amount} AS bigint), ${key}) RETURNING id`,
      returnedId
    ),
  insertAccount: (name) =>
    Effect.map(sql<{ id: Int }>`INSERT INTO accounts (name, balance) VALUES (${name}, 0) RETURNING id`, returnedId),
  transfer: (from, to, amount) => sql`
        UPDATE accounts SET balance = balance + CASE WHEN id = ${from} THEN -CAST(${amount} AS bigint)
          ELSE CAST(${amount} AS bigint) END
        WHERE id IN (${from}, ${to})`,
  debit: (from, amount) => sql`UPDATE accounts SET balance = balance - CAST(${amount} AS bigint) WHERE id = ${from}`,
  credit: (to, amount) => sql`UPDATE accounts SET balance = balance + CAST(${amount} AS bigint) WHERE id = ${to}`
})

/** The statements of the engine's database. */
export const make = (sql: SqlClient.SqlClient, flavor: "mariadb" | "mysql" | "postgresql"): Db =>
  flavor === "postgresql" ? postgresql(sql) : mysql(sql)
