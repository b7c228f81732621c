/**
 * Smaller traps of a first hour (issue 24 #5): an empty `sql.in([])` is the empty list (no rows for `IN`, every row
 * for `NOT IN`), never the syntax error `IN ()`; the keyed-unit table can be pruned. Verdicts come from the server.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { assert, layer } from "@effect/vitest"
import { Session } from "@sessionfx/session"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { adminQuery, count, serverLayer, suiteOptions, withEngine } from "./support/unit.js"

const suite = Layer.effectDiscard(
  Effect.zipRight(
    adminQuery(`CREATE TABLE IF NOT EXISTS listed (id INT PRIMARY KEY, name VARCHAR(20))`),
    adminQuery(`INSERT IGNORE INTO listed VALUES (1, 'a'), (2, 'b'), (3, NULL)`)
  )
).pipe(Layer.provideMerge(serverLayer()))

const ids = (rows: ReadonlyArray<{ readonly id: number }>) => rows.map((r) => r.id)

layer(suite, suiteOptions)("traps", (it) => {
  it.effect("sql.in([]) is the empty list: IN gives no rows, NOT IN every row, in a unit and in autocommit", () =>
    withEngine(
      Effect.gen(function* () {
        const sql = yield* SqlClient.SqlClient
        const inEmpty = sql<{ id: number }>`SELECT id FROM listed WHERE id IN ${sql.in([])} ORDER BY id`
        const notInEmpty = sql<{ id: number }>`SELECT id FROM listed WHERE id NOT IN ${sql.in([])} ORDER BY id`
        const nullNotIn = sql<{ id: number }>`SELECT id FROM listed WHERE name NOT IN ${sql.in([])} ORDER BY id`
        for (const run of [<A, E, R>(e: Effect.Effect<A, E, R>) => e, Session.transact]) {
          assert.deepStrictEqual(ids(yield* run(inEmpty)), [])
          assert.deepStrictEqual(ids(yield* run(notInEmpty)), [1, 2, 3])
          // the empty set: NOT IN is true even for NULL (a list with a NULL in it would make it unknown)
          assert.deepStrictEqual(ids(yield* run(nullNotIn)), [1, 2, 3])
        }
        // a non-empty list and the column form are as before
        assert.deepStrictEqual(
          ids(yield* sql<{ id: number }>`SELECT id FROM listed WHERE id IN ${sql.in([2, 3])}`),
          [2, 3]
        )
        assert.deepStrictEqual(ids(yield* sql<{ id: number }>`SELECT id FROM listed WHERE ${sql.in("id", [])}`), [])
        // nothing else changed: a statement that is not a list keeps its text
        const [compiled] = sql`SELECT id FROM listed WHERE id IN ${sql.in([])}`.compile()
        assert.notInclude(compiled, "IN ()")
      })
    )
  )

  it.effect("the keyed-unit table can be pruned: keys committed before the cut are deleted, newer ones kept", () =>
    withEngine(
      Effect.gen(function* () {
        yield* Session.createKeyTable
        yield* Session.transact(Effect.void, { key: "prune-old" })
        yield* adminQuery(
          `UPDATE sessionfx_unit_keys SET committed_at = NOW(6) - INTERVAL 40 DAY WHERE unit_key = 'prune-old'`
        )
        yield* Session.transact(Effect.void, { key: "prune-new" })
        const removed = yield* Session.pruneKeys({ olderThan: "30 days" })
        assert.isAtLeast(removed, 1)
        assert.strictEqual(yield* count("sessionfx_unit_keys", "unit_key = 'prune-old'"), 0)
        assert.strictEqual(yield* count("sessionfx_unit_keys", "unit_key = 'prune-new'"), 1)
        assert.strictEqual(yield* Session.outcome("prune-new"), "committed")
      })
    )
  )
})
