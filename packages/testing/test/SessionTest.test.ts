import { assert, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine } from "@sessionfx/session"
import { MysqlServer, SessionTest } from "@sessionfx/testing"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"

const EngineLive = Layer.unwrapEffect(
  Effect.map(MysqlServer.MysqlServer, (server) => Engine.layer({ url: server.url, pool: { size: 2 } }))
)

layer(Layer.provideMerge(EngineLive, MysqlServer.layer()), { timeout: 120_000, excludeTestServices: true })(
  "SessionTest",
  (it) => {
    it.effect("sees its own writes and always rolls back", () =>
      Effect.gen(function* () {
        const sql = yield* SqlClient.SqlClient
        yield* sql`CREATE TABLE IF NOT EXISTS notes (id INT PRIMARY KEY, body VARCHAR(20) NOT NULL)`
        const inside = yield* Effect.gen(function* () {
          const s = yield* SqlClient.SqlClient
          yield* s`INSERT INTO notes VALUES (1, 'draft')`
          return yield* s<{ n: number }>`SELECT COUNT(*) AS n FROM notes`
        }).pipe(Effect.provide(SessionTest.SessionTest))
        assert.strictEqual(Number(inside[0]!.n), 1)
        const after = yield* sql<{ n: number }>`SELECT COUNT(*) AS n FROM notes`
        assert.strictEqual(Number(after[0]!.n), 0)
      })
    )
  }
)
