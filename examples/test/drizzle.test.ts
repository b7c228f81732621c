import * as MysqlDrizzle from "@effect/sql-drizzle/Mysql"
import { MysqlServer } from "@sessionfx/testing"
import { eq, sql } from "drizzle-orm"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { accounts } from "../src/Accounts.js"
import * as Example from "../src/drizzle.js"
import { joinsTheUnit } from "./support.js"

joinsTheUnit({
  name: "Drizzle",
  layer: Example.DrizzleLive.pipe(Layer.provideMerge(MysqlServer.layerEngine())),
  credit: (id, amount) =>
    Effect.flatMap(MysqlDrizzle.MysqlDrizzle, (db) =>
      db
        .update(accounts)
        .set({ balance: sql`${accounts.balance} + ${amount}` })
        .where(eq(accounts.id, id))
    ),
  connectionId: Effect.flatMap(MysqlDrizzle.MysqlDrizzle, (db) =>
    Effect.map(
      db
        .select({ id: sql<number>`CONNECTION_ID()` })
        .from(accounts)
        .limit(1),
      (rows) => Number(rows[0]!.id)
    )
  ),
  program: Example.program
})
