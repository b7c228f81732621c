/**
 * Kysely: `db.transaction().execute(...)` over a `MysqlDialect` on a mysql2 pool.
 */
import { type Generated, Kysely, MysqlDialect, sql } from "kysely"
import { createPool } from "mysql2"
import { isRetryableError } from "../workload.js"
import { type PromiseImpl, POOL_SIZE, retryPromise } from "./Impl.js"

export interface Database {
  readonly accounts: { id: number; balance: number }
  readonly transfers: { id: Generated<number>; src: number; dst: number; amount: number }
}

/** The unit in Kysely, the same on either dialect. */
export const kyselyUnit = (db: Kysely<Database>, a: number, b: number, amount: number) =>
  db.transaction().execute(async (trx) => {
    await trx.selectFrom("accounts").select("balance").where("id", "in", [a, b]).forUpdate().execute()
    await trx
      .updateTable("accounts")
      .set({ balance: sql`balance - ${amount}` })
      .where("id", "=", a)
      .execute()
    await trx
      .updateTable("accounts")
      .set({ balance: sql`balance + ${amount}` })
      .where("id", "=", b)
      .execute()
    await trx.insertInto("transfers").values({ src: a, dst: b, amount }).execute()
  })

export const kysely = (): PromiseImpl => {
  let db: Kysely<Database> | undefined
  return {
    kind: "promise",
    name: "kysely",
    setup: async (url) => {
      db = new Kysely<Database>({
        dialect: new MysqlDialect({ pool: createPool({ uri: url, connectionLimit: POOL_SIZE }) })
      })
      await sql`SELECT 1`.execute(db)
    },
    transfer: (a, b, amount) => retryPromise(() => kyselyUnit(db!, a, b, amount), isRetryableError),
    close: async () => {
      await db?.destroy()
      db = undefined
    }
  }
}
