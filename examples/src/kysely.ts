/**
 * Kysely inside a sessionfx unit of work: queries built with Kysely run through `@effect/sql-kysely` on the
 * session's connection, so they commit, roll back, nest (savepoints) and retry with it.
 *
 *   pnpm --filter @sessionfx/examples examples kysely
 */
import * as MysqlKysely from "@effect/sql-kysely/Mysql"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { Insufficient, transferScenario, type Database } from "./Accounts.js"

/** The Effect-enabled Kysely instance as a service. */
export class Kysely extends Context.Tag("examples/Kysely")<Kysely, MysqlKysely.EffectKysely<Database>>() {}

/** Built once from the Engine's `SqlClient`: inside a unit of work, that client runs on the unit's connection. */
export const KyselyLive = Layer.effect(Kysely, MysqlKysely.make<Database>())

/** A transfer written with Kysely; it must run inside a unit of work, which `Session.transact` opens. */
export const transfer = (from: number, to: number, amount: number) =>
  Effect.gen(function* () {
    const db = yield* Kysely
    yield* db
      .updateTable("accounts")
      .set((eb) => ({ balance: eb("balance", "-", amount) }))
      .where("id", "=", from)
    yield* db
      .updateTable("accounts")
      .set((eb) => ({ balance: eb("balance", "+", amount) }))
      .where("id", "=", to)
    const [row] = yield* db.selectFrom("accounts").select("balance").where("id", "=", from)
    if (row === undefined || Number(row.balance) < 0) return yield* new Insufficient({ id: from })
  })

/** The example: one transfer commits, one overdraws and is rolled back, one nested transfer fails alone. */
export const program = transferScenario(transfer).pipe(Effect.provide(KyselyLive))
