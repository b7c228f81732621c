/**
 * Prepared statements are bounded per connection for real (issue 24 #4): a connection keeps at most 256 server-side
 * statements, and an evicted one is closed on the server. Run against a server whose `max_prepared_stmt_count` (shared
 * by every client) is 300: one connection running 700 distinct statements — through every way a statement is
 * prepared (rows, rows as arrays, streams) — never holds more than 256 of them, and every other client can still
 * prepare.
 */
import { assert, layer } from "@effect/vitest"
import { Session } from "@sessionfx/session"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Stream from "effect/Stream"
import { adminQuery, serverLayer, sql, suiteOptions, withEngine } from "./support/unit.js"

const prepared = Effect.map(adminQuery<{ Value: string }>("SHOW GLOBAL STATUS LIKE 'Prepared_stmt_count'"), (rows) =>
  Number(rows[0]?.Value ?? 0)
)

layer(serverLayer(["--max-prepared-stmt-count=300"]), suiteOptions)("prepared statements", (it) => {
  it.effect(
    "one connection running 700 distinct statements keeps at most 256 on the server; others can still prepare",
    () =>
      withEngine(
        Effect.gen(function* () {
          const client = yield* sql
          let highest = 0
          for (let i = 0; i < 700; i++) {
            // distinct texts: each one is a new server-side statement
            const text = `SELECT ? + ${i} AS n`
            const rows =
              i % 3 === 0
                ? yield* client.unsafe<{ n: number }>(text, [1])
                : i % 3 === 1
                  ? (yield* client.unsafe(text, [1]).values).map((r) => ({ n: Number(r[0]) }))
                  : Chunk.toReadonlyArray(yield* Stream.runCollect(client.unsafe<{ n: number }>(text, [1]).stream))
            assert.strictEqual(Number(rows[0]!.n), i + 1)
            if (i % 50 === 49) highest = Math.max(highest, yield* prepared)
          }
          assert.isAtMost(highest, 256 + 2, `server-side statements held at once (max_prepared_stmt_count 300)`)
          // another connection (a unit of its own on a second engine) still prepares
          const other = yield* withEngine(
            Session.transact(Effect.flatMap(sql, (s) => s<{ n: number }>`SELECT ${41} + 1 AS n`))
          )
          assert.strictEqual(Number(other[0]!.n), 42)
        }),
        { pool: { size: 1 } }
      )
  )
})
