/**
 * The four statements of the transfer unit in PostgreSQL's spelling (`$n` placeholders), with the names the
 * hand-written `pg` implementations prepare them under.
 */
import type * as Pg from "pg"

const statement =
  (name: string, text: string) =>
  (values: Array<number>): Pg.QueryConfig<Array<number>> => ({
    name,
    text,
    values
  })

export const selectForUpdate = statement(
  "select_for_update",
  "SELECT balance FROM accounts WHERE id IN ($1, $2) FOR UPDATE"
)
export const debit = statement("debit", "UPDATE accounts SET balance = balance - $1 WHERE id = $2")
export const credit = statement("credit", "UPDATE accounts SET balance = balance + $1 WHERE id = $2")
export const insertTransfer = statement(
  "insert_transfer",
  "INSERT INTO transfers (src, dst, amount) VALUES ($1, $2, $3)"
)
