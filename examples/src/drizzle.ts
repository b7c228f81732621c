/**
 * Drizzle inside a sessionfx unit of work: queries built with `drizzle-orm/mysql-core` run through
 * `@effect/sql-drizzle` on the session's connection, so they commit, roll back, nest (savepoints) and retry with it.
 *
 *   pnpm --filter @sessionfx/examples examples drizzle
 */
import * as MysqlDrizzle from "@effect/sql-drizzle/Mysql"
import { eq, sql } from "drizzle-orm"
import * as Effect from "effect/Effect"
import { accounts, Insufficient, transferScenario } from "./Accounts.js"

/** Built once from the Engine's `SqlClient`: inside a unit of work, that client runs on the unit's connection. */
export const DrizzleLive = MysqlDrizzle.layer

/** A transfer written with Drizzle; it must run inside a unit of work, which `Session.transact` opens. */
export const transfer = (from: number, to: number, amount: number) =>
  Effect.gen(function* () {
    const db = yield* MysqlDrizzle.MysqlDrizzle
    yield* db
      .update(accounts)
      .set({ balance: sql`${accounts.balance} - ${amount}` })
      .where(eq(accounts.id, from))
    yield* db
      .update(accounts)
      .set({ balance: sql`${accounts.balance} + ${amount}` })
      .where(eq(accounts.id, to))
    const [row] = yield* db.select({ balance: accounts.balance }).from(accounts).where(eq(accounts.id, from))
    if (row === undefined || Number(row.balance) < 0) return yield* new Insufficient({ id: from })
  })

/** The example: one transfer commits, one overdraws and is rolled back, one nested transfer fails alone. */
export const program = transferScenario(transfer).pipe(Effect.provide(DrizzleLive))
