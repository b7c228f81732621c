/**
 * Drizzle: `db.transaction(...)` with `drizzle-orm/mysql2` on a mysql2 promise pool.
 */
import { eq, inArray, sql } from "drizzle-orm"
import { bigint, int, mysqlTable } from "drizzle-orm/mysql-core"
import { drizzle as makeDrizzle, type MySql2Database } from "drizzle-orm/mysql2"
import * as Mysql from "mysql2/promise"
import { isRetryableError } from "../workload.js"
import { type PromiseImpl, POOL_SIZE, retryPromise } from "./Impl.js"

const accounts = mysqlTable("accounts", {
  id: int("id").primaryKey(),
  balance: bigint("balance", { mode: "number" }).notNull()
})

const transfers = mysqlTable("transfers", {
  id: bigint("id", { mode: "number" }).primaryKey().autoincrement(),
  src: int("src").notNull(),
  dst: int("dst").notNull(),
  amount: bigint("amount", { mode: "number" }).notNull()
})

export const drizzle = (): PromiseImpl => {
  let pool: Mysql.Pool | undefined
  let db: MySql2Database | undefined
  const unit = (a: number, b: number, amount: number) =>
    db!.transaction(async (tx) => {
      await tx
        .select({ balance: accounts.balance })
        .from(accounts)
        .where(inArray(accounts.id, [a, b]))
        .for("update")
      await tx
        .update(accounts)
        .set({ balance: sql`${accounts.balance} - ${amount}` })
        .where(eq(accounts.id, a))
      await tx
        .update(accounts)
        .set({ balance: sql`${accounts.balance} + ${amount}` })
        .where(eq(accounts.id, b))
      await tx.insert(transfers).values({ src: a, dst: b, amount })
    })
  return {
    kind: "promise",
    name: "drizzle",
    setup: async (url) => {
      pool = Mysql.createPool({ uri: url, connectionLimit: POOL_SIZE })
      db = makeDrizzle({ client: pool })
      await pool.query("SELECT 1")
    },
    transfer: (a, b, amount) => retryPromise(() => unit(a, b, amount), isRetryableError),
    close: async () => {
      await pool?.end()
      pool = undefined
      db = undefined
    }
  }
}
