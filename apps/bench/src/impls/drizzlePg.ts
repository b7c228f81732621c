/**
 * Drizzle on PostgreSQL: `db.transaction(...)` with `drizzle-orm/node-postgres` on a `pg` Pool.
 */
import { eq, inArray, sql } from "drizzle-orm"
import { drizzle as makeDrizzle, type NodePgDatabase } from "drizzle-orm/node-postgres"
import { bigint, bigserial, integer, pgTable } from "drizzle-orm/pg-core"
import * as Pg from "pg"
import { isRetryableError } from "../workload.js"
import { type PromiseImpl, POOL_SIZE, retryPromise } from "./Impl.js"

const accounts = pgTable("accounts", {
  id: integer("id").primaryKey(),
  balance: bigint("balance", { mode: "number" }).notNull()
})

const transfers = pgTable("transfers", {
  id: bigserial("id", { mode: "number" }).primaryKey(),
  src: integer("src").notNull(),
  dst: integer("dst").notNull(),
  amount: bigint("amount", { mode: "number" }).notNull()
})

export const drizzlePg = (): PromiseImpl => {
  let pool: Pg.Pool | undefined
  let db: NodePgDatabase | undefined
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
    name: "drizzle-pg",
    setup: async (url) => {
      pool = new Pg.Pool({ connectionString: url, max: POOL_SIZE })
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
