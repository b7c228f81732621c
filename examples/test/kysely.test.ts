import { MysqlServer } from "@sessionfx/testing"
import { sql } from "kysely"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Example from "../src/kysely.js"
import { joinsTheUnit } from "./support.js"

joinsTheUnit({
  name: "Kysely",
  layer: Example.KyselyLive.pipe(Layer.provideMerge(MysqlServer.layerEngine())),
  credit: (id, amount) =>
    Effect.flatMap(Example.Kysely, (db) =>
      db
        .updateTable("accounts")
        .set((eb) => ({ balance: eb("balance", "+", amount) }))
        .where("id", "=", id)
    ),
  connectionId: Effect.flatMap(Example.Kysely, (db) =>
    Effect.map(db.selectNoFrom(sql<number>`CONNECTION_ID()`.as("id")), (rows) => Number(rows[0]!.id))
  ),
  program: Example.program
})
