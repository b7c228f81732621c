/**
 * Adversarial tests of streams in units (issue 12 #11), on MariaDB and PostgreSQL from this one file: rows come from
 * the server as they are read, with backpressure, inside the unit's transaction (MariaDB: a streamed result;
 * PostgreSQL: a portal read in batches); a partly read stream does not stop the unit from going on; a stream (or
 * statement) built inside a unit and run after it ended fails with `SessionClosed` instead of running in autocommit.
 * Memory is measured on this process's heap; the server's state is read by the superuser.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { assert, layer, type Vitest } from "@effect/vitest"
import { Session, SessionLive } from "@sessionfx/session"
import * as Chunk from "effect/Chunk"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Stream from "effect/Stream"
import { type DbName, DbTag, dialects, withEngine } from "./support/db.js"
import { eventually, expectTag, failureOf, freshId, show, suiteOptions } from "./support/unit.js"

const sql = SqlClient.SqlClient

const schema = `CREATE TABLE IF NOT EXISTS items (id INT PRIMARY KEY, label VARCHAR(50) NOT NULL DEFAULT 'x')`

const MILLION = 1_000_000

/** The texts that differ: numbered rows (MariaDB's sequence engine, PostgreSQL's generate_series) and the probe. */
const textsOf = (name: DbName) =>
  name === "postgres"
    ? {
        series: (rows: number, extra = "", marker = "") =>
          `SELECT n AS seq${extra} FROM generate_series(1, ${rows}) AS n /* ${marker} */`,
        pad: ", repeat('x', 64) AS pad",
        // a portal suspended between fetches is idle: "active" is a statement the server is executing now
        running:
          "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE ? AND query NOT LIKE '%pg_stat_activity%'"
      }
    : {
        series: (rows: number, extra = "", marker = "") => `SELECT seq${extra} FROM seq_1_to_${rows} /* ${marker} */`,
        pad: ", REPEAT('x', 64) AS pad",
        running:
          "SELECT COUNT(*) AS n FROM information_schema.processlist WHERE info LIKE ? AND info NOT LIKE '%processlist%'"
      }

/** Numbered rows `seq` from 1 to `rows`, as a stream of the unit (or of the engine outside units). */
const series = (rows: number) =>
  Effect.flatMap(DbTag, (db) => Effect.map(sql, (s) => s.unsafe<{ seq: number }>(textsOf(db.name).series(rows)).stream))

/** 1e6 rows of ~80 bytes each: ~100+ MB of JS objects if loaded at once. */
const million = (marker: string) =>
  Effect.flatMap(DbTag, (db) =>
    Effect.map(sql, (s) => {
      const t = textsOf(db.name)
      return s.unsafe<{ seq: number; pad: string }>(t.series(MILLION, t.pad, marker)).stream
    })
  )

/** Statements the server is running now whose text holds `marker` (not counting this probe). */
const running = (marker: string) =>
  Effect.flatMap(DbTag, (db) =>
    Effect.map(Effect.orDie(db.query<{ n: string | number }>(textsOf(db.name).running, [`%${marker}%`])), (rows) =>
      Number(rows[0]?.n ?? 0)
    )
  )

/** Committed rows with `id`, as the server sees them. */
const countId = (_table: "items", id: number) =>
  Effect.flatMap(DbTag, (db) =>
    Effect.map(
      Effect.orDie(db.query<{ n: string | number }>("SELECT COUNT(*) AS n FROM items WHERE id = ?", [id])),
      (rows) => Number(rows[0]?.n ?? 0)
    )
  )

const insert = (id: number) => Effect.flatMap(sql, (s) => s`INSERT INTO items (id) VALUES (${id})`)

const heap = () => process.memoryUsage().heapUsed

/** Runs `effect`, sampling the heap every 5 ms: elapsed ms and peak growth in MB over the heap before it. */
const measured = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function* () {
    ;(globalThis as { gc?: () => void }).gc?.()
    const before = heap()
    let peak = before
    const timer = setInterval(() => {
      peak = Math.max(peak, heap())
    }, 5)
    const t0 = Date.now()
    const value = yield* Effect.ensuring(
      effect,
      Effect.sync(() => clearInterval(timer))
    )
    peak = Math.max(peak, heap())
    return { value, ms: Date.now() - t0, growthMb: (peak - before) / 2 ** 20 }
  })

const scenarios = (it: Vitest.MethodsNonLive<DbTag, true>) => {
  it.effect("Stream.take(3) of 1e6 rows inside a unit returns quickly in bounded memory, and the unit goes on", () =>
    withEngine(
      Effect.gen(function* () {
        for (const [i, where] of (["first statement", "after a write", "Layer spelling"] as const).entries()) {
          const [w0, w1] = [freshId(), freshId()]
          const marker = `sfx-take-${i}`
          const t0 = Date.now()
          const body = Effect.gen(function* () {
            if (where === "after a write") yield* insert(w0)
            const stream = yield* million(marker)
            const took = yield* measured(Stream.runCollect(Stream.take(stream, 3)))
            // the unit goes on: a statement and a write on the same connection, in the same transaction
            const s = yield* sql
            const next = yield* s<{ one: number }>`SELECT 1 AS one`
            yield* insert(w1)
            return { ...took, next: Number(next[0]!.one) }
          })
          const result =
            where === "Layer spelling" ? yield* Effect.provide(body, SessionLive) : yield* Session.transact(body)
          const unitMs = Date.now() - t0
          assert.deepStrictEqual(
            Chunk.toReadonlyArray(result.value).map((r) => Number(r.seq)),
            [1, 2, 3],
            `${where}: the first three rows`
          )
          assert.isBelow(result.ms, 1000, `${where}: take(3) took ${result.ms} ms (the whole result was loaded?)`)
          assert.isBelow(result.growthMb, 30, `${where}: heap grew ${result.growthMb.toFixed(1)} MB for 3 rows`)
          assert.strictEqual(result.next, 1)
          assert.isBelow(unitMs, 10_000, `${where}: the unit took ${unitMs} ms`)
          assert.strictEqual(yield* countId("items", w1), 1, `${where}: the write after the stream`)
          if (where === "after a write") assert.strictEqual(yield* countId("items", w0), 1)
          // the rest of the result is not still being produced on the server
          yield* eventually(
            Effect.map(running(marker), (n) => n === 0),
            `${where}: the streamed SELECT ended`,
            5
          )
        }
      })
    )
  )

  it.effect("Stream.take(3) of 1e6 rows outside a unit (engine client) is as quick and as small", () =>
    withEngine(
      Effect.gen(function* () {
        const stream = yield* million("sfx-take-outside")
        const took = yield* measured(Stream.runCollect(Stream.take(stream, 3)))
        assert.strictEqual(Chunk.size(took.value), 3)
        assert.isBelow(took.ms, 1000, `take(3) took ${took.ms} ms`)
        assert.isBelow(took.growthMb, 30, `heap grew ${took.growthMb.toFixed(1)} MB`)
        const after = yield* Effect.exit(Effect.flatMap(sql, (s) => s`SELECT 1`))
        assert.isTrue(Exit.isSuccess(after), `the next autocommit statement: ${show(after)}`)
      })
    )
  )

  it.effect("all 1e6 rows through a stream in a unit: backpressure keeps the heap bounded", () =>
    withEngine(
      Effect.gen(function* () {
        const result = yield* Session.transact(
          Effect.gen(function* () {
            const stream = yield* million("sfx-all")
            return yield* measured(Stream.runFold(stream, 0, (n, row) => n + (row.pad.length === 64 ? 1 : 0)))
          })
        )
        assert.strictEqual(result.value, MILLION)
        assert.isBelow(result.growthMb, 64, `heap grew ${result.growthMb.toFixed(1)} MB while streaming 1e6 rows`)
      })
    )
  )

  it.effect(
    "a stream runs inside the unit's transaction: it sees the unit's writes; nothing is kept when it fails",
    () =>
      withEngine(
        Effect.gen(function* () {
          const ids = [freshId(), freshId(), freshId()]
          const after = freshId()
          const exit = yield* Effect.exit(
            Session.transact(
              Effect.gen(function* () {
                for (const id of ids) yield* insert(id)
                const s = yield* sql
                const seen = yield* Stream.runCollect(
                  s<{ id: number }>`SELECT id FROM items WHERE ${s.in("id", ids)} ORDER BY id`.stream
                )
                // a partly read stream, then a write: still the same transaction
                yield* Stream.runDrain(Stream.take(yield* series(100_000), 1))
                yield* insert(after)
                return yield* Effect.fail(Chunk.toReadonlyArray(seen).map((r) => Number(r.id)))
              })
            )
          )
          assert.deepStrictEqual(failureOf(exit, "the unit"), ids, "the stream did not see the unit's own writes")
          for (const id of [...ids, after])
            assert.strictEqual(yield* countId("items", id), 0, `row ${id} kept after the unit failed`)
        })
      )
  )

  it.effect("a statement runs while a stream of the same unit is being read (one at a time, no corruption)", () =>
    withEngine(
      Effect.gen(function* () {
        const w = freshId()
        const [streamed, one] = yield* Session.transact(
          Effect.gen(function* () {
            const s = yield* sql
            return yield* Effect.all(
              [
                Stream.runCollect(Stream.take(yield* series(200_000), 5)),
                Effect.zipRight(insert(w), s<{ one: number }>`SELECT 1 AS one`)
              ],
              { concurrency: 2 }
            )
          })
        )
        assert.deepStrictEqual(
          Chunk.toReadonlyArray(streamed).map((r) => Number(r.seq)),
          [1, 2, 3, 4, 5]
        )
        assert.strictEqual(Number(one[0]!.one), 1)
        assert.strictEqual(yield* countId("items", w), 1)
      })
    )
  )

  it.effect("a stream or statement built inside a unit and run after it ended fails with SessionClosed", () =>
    withEngine(
      Effect.gen(function* () {
        const problems: Array<string> = []
        for (const outcome of ["committed", "rolled back"] as const) {
          const id = freshId()
          const built = yield* Effect.exit(
            Session.transact(
              Effect.gen(function* () {
                const s = yield* sql
                // both spellings: a template, and sql.unsafe (before: run outside the unit, sql.unsafe ran in
                // autocommit — its stream read the rows, its write was committed)
                const handles = {
                  stream: s<{ id: number }>`SELECT id FROM items WHERE id = ${id}`.stream,
                  write: s`INSERT INTO items (id) VALUES (${id})`,
                  writeStream: s`INSERT INTO items (id) VALUES (${id + 100_000})`.stream,
                  unsafeStream: yield* series(10),
                  unsafeWrite: s.unsafe(`INSERT INTO items (id) VALUES (${id + 200_000})`)
                }
                return outcome === "committed" ? handles : yield* Effect.fail(handles)
              })
            )
          )
          const handles = (Exit.isSuccess(built) ? built.value : failureOf(built, "the unit")) as {
            stream: Stream.Stream<unknown, unknown>
            write: Effect.Effect<unknown, unknown>
            writeStream: Stream.Stream<unknown, unknown>
            unsafeStream: Stream.Stream<unknown, unknown>
            unsafeWrite: Effect.Effect<unknown, unknown>
          }
          const runs: ReadonlyArray<readonly [string, Effect.Effect<unknown, unknown>]> = [
            ["stream", Stream.runCollect(handles.stream)],
            ["statement", handles.write],
            ["write as a stream", Stream.runDrain(handles.writeStream)],
            ["sql.unsafe stream", Stream.runCollect(handles.unsafeStream)],
            ["sql.unsafe statement", handles.unsafeWrite]
          ]
          for (const [name, run] of runs) {
            const exit = yield* Effect.exit(run)
            const tag = Exit.isFailure(exit) ? expectTagSafe(exit) : "success"
            if (tag !== "SessionClosed") problems.push(`${name} after the unit ${outcome}: ${tag} (${show(exit)})`)
          }
          const kept = [id, id + 100_000, id + 200_000].map((i) => countId("items", i))
          if ((yield* Effect.all(kept)).some((n) => n !== 0)) {
            problems.push(`after the unit ${outcome}: a write built inside it ran in autocommit`)
          }
        }
        // a daemon forked by the unit, reading its stream after the unit ended
        const go = yield* Deferred.make<void>()
        const daemon = yield* Session.transact(
          Effect.flatMap(series(10), (stream) =>
            Effect.forkDaemon(Effect.zipRight(Deferred.await(go), Stream.runCollect(stream)))
          )
        )
        yield* Deferred.succeed(go, undefined)
        const exit = yield* Fiber.await(daemon)
        if (!Exit.isFailure(exit) || expectTagSafe(exit) !== "SessionClosed") {
          problems.push(`a daemon's stream after the unit: ${show(exit)}`)
        }
        assert.deepStrictEqual(problems, [], "handles used after their unit ended")
      })
    )
  )

  it.effect("an interrupted stream (fiber interrupted mid-read) leaves the unit usable and the server idle", () =>
    withEngine(
      Effect.gen(function* () {
        const w = freshId()
        const marker = "sfx-interrupted-stream"
        const started = yield* Deferred.make<void>()
        yield* Session.transact(
          Effect.gen(function* () {
            const stream = yield* million(marker)
            const fiber = yield* Effect.fork(
              Stream.runDrain(Stream.tap(stream, () => Deferred.succeed(started, undefined)))
            )
            yield* Deferred.await(started)
            const t0 = Date.now()
            yield* Fiber.interrupt(fiber)
            assert.isBelow(Date.now() - t0, 2000, "interrupting a stream took too long")
            yield* insert(w)
          })
        )
        assert.strictEqual(yield* countId("items", w), 1)
        yield* eventually(
          Effect.map(running(marker), (n) => n === 0),
          "the streamed SELECT ended on the server",
          5
        )
      })
    )
  )
}

for (const [name, db] of dialects) {
  // the table is created by the application user (on PostgreSQL the owner of a table is its creator)
  const suite = Layer.effectDiscard(withEngine(Effect.flatMap(sql, (s) => s.unsafe(schema)))).pipe(
    Layer.provideMerge(db)
  )
  layer(suite, suiteOptions)(`streams (${name})`, scenarios)
}

const expectTagSafe = (exit: Exit.Exit<unknown, unknown>): string => {
  try {
    expectTag(exit, ["SessionClosed"], "")
    return "SessionClosed"
  } catch (e) {
    return String((e as Error).message).slice(0, 200)
  }
}
