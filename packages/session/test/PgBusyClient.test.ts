/**
 * node-postgres runs one query at a time per client; a `client.query()` made while another is still running is
 * queued by pg 8 (with the DeprecationWarning "Calling client.query() when the client is already executing a query")
 * and will be refused by pg 9. sessionfx must never make one: not on a unit's connection (a stream's BEGIN /
 * SAVEPOINT / cursor, its ROLLBACK TO after a cancel), not on the engine's control connection (several interruptions
 * at once). Every `Client.prototype.query` call of this file's process is watched (test-only: the library is
 * unchanged): a call while the client has a query running or queued, or still awaits a reply's ReadyForQuery, is
 * recorded.
 */
import { assert, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine, Session } from "@sessionfx/session"
import { PgServer } from "@sessionfx/testing"
import * as Chunk from "effect/Chunk"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Stream from "effect/Stream"
import * as Pg from "pg"
import { eventually } from "./support.js"

// node-postgres's client internals are untyped in @types/pg
interface ClientState {
  readonly _connected: boolean
  readonly _queryable: boolean
  readonly _ending: boolean
  readonly readyForQuery: boolean
  readonly _activeQuery: unknown
  readonly _queryQueue: ReadonlyArray<unknown>
  /** Set by the watcher: the client has had its first ReadyForQuery (connected and idle once). */
  __ready?: boolean
}

/** Calls of `client.query` on a busy client: the client, what was asked, and what the client was doing. */
const busyCalls: Array<{ readonly client: unknown; readonly call: string }> = []
const warnings: Array<string> = []

const textOf = (q: unknown): string =>
  typeof q === "string"
    ? q
    : typeof (q as { text?: unknown })?.text === "string"
      ? String((q as { text: string }).text)
      : String((q as object)?.constructor?.name)

const proto = Pg.Client.prototype as unknown as { query: (...args: Array<unknown>) => unknown }
const original = proto.query
proto.query = function (this: ClientState, ...args: Array<unknown>) {
  // a connected, queryable client: busy when a query runs, is queued, or a reply's ReadyForQuery is awaited
  if (this._connected && this._queryable && !this._ending && this.__ready === true) {
    const active = this._activeQuery
    if (active != null || this._queryQueue.length > 0 || this.readyForQuery !== true) {
      busyCalls.push({
        client: this,
        call: `${textOf(args[0])} while ${active != null ? textOf(active) : this._queryQueue.length > 0 ? textOf(this._queryQueue[0]) : "a reply is awaited"}`
      })
    }
  }
  return original.apply(this, args)
}
// the first ReadyForQuery (the end of the startup) marks the client as watched, before the client's own handling of
// it (which calls the connect callback while it does not yet count itself idle)
const connect = (Pg.Client.prototype as unknown as { connect: (...args: Array<unknown>) => unknown }).connect
;(Pg.Client.prototype as unknown as { connect: (...args: Array<unknown>) => unknown }).connect = function (
  this: ClientState & { readonly connection: { once(event: string, f: () => void): void } },
  ...args: Array<unknown>
) {
  this.connection.once("readyForQuery", () => {
    this.__ready = true
  })
  return connect.apply(this, args)
}
process.on("warning", (w) => {
  if (/already executing a query/.test(w.message)) warnings.push(w.message)
})

/** Nothing was asked of a busy client since `from` (the index in `busyCalls` when the scenario began). */
const assertNoBusyCalls = (from: number) => {
  assert.deepStrictEqual(
    busyCalls.slice(from).map((b) => b.call),
    []
  )
  assert.deepStrictEqual(warnings, [])
}

let nextId = Math.floor(Math.random() * 1_000_000)
const freshId = () => ++nextId

const UNITS = 8

const EngineLive = Layer.unwrapEffect(
  Effect.map(PgServer.PgServer, (server) => Engine.layer({ url: server.url, pool: { size: UNITS } }))
)

layer(Layer.provideMerge(EngineLive, PgServer.layer()), { timeout: 120_000, excludeTestServices: true })(
  "PostgreSQL: no query on a busy node-postgres client",
  (it) => {
    /** Active statements on the server whose text carries `marker`, seen through an admin engine. */
    const runningOn = (a: SqlClient.SqlClient) => (marker: string) =>
      Effect.map(
        a<{
          n: string
        }>`SELECT count(*) AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE ${`%${marker}%`} AND query NOT LIKE '%pg_stat_activity%'`,
        (rows) => Number(rows[0]!.n)
      )

    const adminClient = Effect.gen(function* () {
      const server = yield* PgServer.PgServer
      const admin = yield* Layer.build(Engine.layer({ url: server.admin.url, pool: { size: 1 } }))
      return Context.get(admin, SqlClient.SqlClient)
    })

    it.effect("the watcher records a query made on a busy client (so the assertions below can fail)", () =>
      Effect.gen(function* () {
        const server = yield* PgServer.PgServer
        const client = new Pg.Client({ connectionString: Redacted.value(server.url) })
        yield* Effect.promise(async () => {
          await client.connect()
          // two at once: node-postgres queues the second behind the first
          await Promise.all([client.query("SELECT pg_sleep(0.05)"), client.query("SELECT 1")])
          await client.end()
        })
        const mine = busyCalls.filter((b) => b.client === client)
        assert.deepStrictEqual(
          mine.map((b) => b.call),
          ["SELECT 1 while SELECT pg_sleep(0.05)"]
        )
        for (const b of mine) busyCalls.splice(busyCalls.indexOf(b), 1)
      })
    )

    it.effect(
      "many units interrupted at the same moment while their statements run: each stopped at once, no busy client",
      () =>
        Effect.gen(function* () {
          const s = yield* SqlClient.SqlClient
          const running = runningOn(yield* adminClient)
          const from = busyCalls.length
          for (let round = 0; round < 5; round++) {
            const marker = `storm_${freshId()}`
            const fibers = yield* Effect.forEach(
              Array.from({ length: UNITS }, (_, i) => i),
              (i) => Effect.fork(Session.transact(s.unsafe(`SELECT pg_sleep(30) /* ${marker} ${i} */`))),
              { concurrency: "unbounded" }
            )
            yield* eventually(
              Effect.map(running(marker), (n) => n === UNITS),
              "every unit's statement runs"
            )
            const [took] = yield* Effect.timed(Fiber.interruptAll(fibers))
            // guarantee 3: stopped on the server by the time the interruption returns, promptly
            assert.strictEqual(yield* running(marker), 0)
            assert.isBelow(Duration.toMillis(took), 5_000)
            for (const f of fibers) assert.isTrue(Exit.isInterrupted(yield* Fiber.await(f)))
          }
          // the connections are fine afterwards: every unit's statement runs and answers
          const rows = yield* Effect.forEach(
            Array.from({ length: UNITS }, (_, i) => i),
            (i) => Session.transact(s<{ n: number }>`SELECT ${i}::int AS n`),
            { concurrency: "unbounded" }
          )
          assert.deepStrictEqual(
            rows.map((r) => r[0]!.n),
            Array.from({ length: UNITS }, (_, i) => i)
          )
          assertNoBusyCalls(from)
        }).pipe(Effect.scoped)
    )

    it.effect(
      "forked fibers' statements in many units interrupted at once: each undone alone, every unit commits, no busy client",
      () =>
        Effect.gen(function* () {
          const s = yield* SqlClient.SqlClient
          const running = runningOn(yield* adminClient)
          yield* s`CREATE TABLE IF NOT EXISTS busy_acct (id INT PRIMARY KEY, balance BIGINT NOT NULL)`
          const from = busyCalls.length
          const marker = `child_${freshId()}`
          const ids = Array.from({ length: UNITS }, () => freshId())
          const started = yield* Deferred.make<void>()
          const children: Array<Fiber.RuntimeFiber<unknown, unknown>> = []
          const unit = (id: number) =>
            Session.transact(
              Effect.gen(function* () {
                yield* s`INSERT INTO busy_acct (id, balance) VALUES (${id}, 1)`
                // the child's write and its sleep in one statement, under a savepoint of its own
                children.push(
                  yield* Effect.fork(
                    s.unsafe(
                      `WITH w AS (UPDATE busy_acct SET balance = 100 WHERE id = ${id} RETURNING 1) SELECT pg_sleep(30) FROM w /* ${marker} */`
                    )
                  )
                )
                yield* Deferred.await(started)
                yield* s`UPDATE busy_acct SET balance = balance + 1 WHERE id = ${id}`
              })
            )
          const units = yield* Effect.fork(Effect.forEach(ids, unit, { concurrency: "unbounded" }))
          yield* eventually(
            Effect.map(running(marker), (n) => n === UNITS),
            "every child's statement runs"
          )
          yield* Fiber.interruptAll(children)
          assert.strictEqual(yield* running(marker), 0)
          yield* Deferred.succeed(started, undefined)
          yield* Fiber.join(units)
          const rows = yield* s<{ balance: string }>`SELECT balance FROM busy_acct WHERE id IN ${s.in(ids)}`
          assert.deepStrictEqual(
            rows.map((r) => r.balance),
            ids.map(() => "2")
          )
          assertNoBusyCalls(from)
        }).pipe(Effect.scoped)
    )

    it.effect("a stream as a unit's first statement (BEGIN, its savepoint, the cursor): no busy client", () =>
      Effect.gen(function* () {
        const s = yield* SqlClient.SqlClient
        const from = busyCalls.length
        for (let i = 0; i < 5; i++) {
          const n = yield* Session.transact(
            Stream.runCount(s`SELECT n FROM generate_series(1, ${1000 + i}) AS n`.stream)
          )
          assert.strictEqual(n, 1000 + i)
        }
        assertNoBusyCalls(from)
      })
    )

    it.effect(
      "a stream inside a unit stopped early or interrupted mid-statement: the unit commits, no busy client",
      () =>
        Effect.gen(function* () {
          const s = yield* SqlClient.SqlClient
          const running = runningOn(yield* adminClient)
          yield* s`CREATE TABLE IF NOT EXISTS busy_acct (id INT PRIMARY KEY, balance BIGINT NOT NULL)`
          const from = busyCalls.length
          const id = freshId()
          const marker = `stream_${freshId()}`
          yield* Session.transact(
            Effect.gen(function* () {
              yield* s`INSERT INTO busy_acct (id, balance) VALUES (${id}, 1)`
              for (let i = 0; i < 5; i++) {
                // stopped early: the core closes the portal (or cancels it while a batch is computed)
                const rows = yield* Stream.runCollect(
                  Stream.take(s.unsafe<{ n: number }>("SELECT generate_series(1, 50000000) AS n").stream, 1 + i * 300)
                )
                assert.strictEqual(Chunk.size(rows), 1 + i * 300)
                // interrupted while the server computes its first batch: cancelled, the stream's savepoint undone
                const fiber = yield* Effect.fork(
                  Stream.runDrain(
                    s.unsafe(`SELECT n, pg_sleep(30) FROM generate_series(1, 3) AS n /* ${marker} */`).stream
                  )
                )
                yield* eventually(
                  Effect.map(running(marker), (k) => k === 1),
                  "the stream's statement runs"
                )
                yield* Fiber.interrupt(fiber)
                assert.strictEqual(yield* running(marker), 0)
              }
              yield* s`UPDATE busy_acct SET balance = balance + 1 WHERE id = ${id}`
            })
          )
          const rows = yield* s<{ balance: string }>`SELECT balance FROM busy_acct WHERE id = ${id}`
          assert.strictEqual(rows[0]!.balance, "2")
          assertNoBusyCalls(from)
        }).pipe(Effect.scoped)
    )
  }
)
