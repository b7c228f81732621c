/**
 * The windows of PostgreSQL's unit state machine, each reached precisely on a real server: a forked fiber's
 * statement runs under `SAVEPOINT sfx_statement` … `RELEASE` (`Run.underGuard`), and its interruption is met in each
 * of the guard's steps; a COMMIT that fails on its own (a deferred constraint); a cancel racing its statement's own
 * completion; a unit's deferred BEGIN on a connection that is already gone. The fault proxy holds a request on its
 * way to the server (`FaultProxy.holdNext`) to keep a window open while the test acts; every engine has a pool of
 * one, so each next unit runs on the very connection the window left behind.
 */
import { assert, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine, Session } from "@sessionfx/session"
import { FaultProxy, PgServer } from "@sessionfx/testing"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import { eventually } from "./support.js"

const sql = SqlClient.SqlClient

let nextId = Math.floor(Math.random() * 1_000_000)
const freshId = () => ++nextId

/** A chunk that carries `text` as a whole statement (the Parse message of the extended protocol, or a Query). */
const carries = (text: string) => (chunk: Buffer) => chunk.includes(`\0${text}\0`, 0, "latin1")

/** The failure of an exit (its first `Fail`), for its tag. */
const failureOf = <A, E>(exit: Exit.Exit<A, E>): { readonly _tag?: string; readonly cause?: unknown } | undefined =>
  Exit.isFailure(exit) ? (Option.getOrUndefined(Cause.failureOption(exit.cause)) as { _tag?: string }) : undefined

/**
 * An engine with a pool of one through a fault proxy, an admin engine (the test's own view of the server), and
 * helpers: rows of a table by id, the state of a backend.
 */
const setup = Effect.gen(function* () {
  const server = yield* PgServer.PgServer
  const proxy = yield* FaultProxy.make({ target: { host: server.host, port: server.port } })
  const engine = yield* Layer.build(
    Engine.layer({ url: proxy.urlFor(server), pool: { size: 1 }, killGrace: "3 seconds", commitTimeout: "5 seconds" })
  )
  const adminEngine = yield* Layer.build(Engine.layer({ url: server.admin.url, pool: { size: 1 } }))
  const s = Context.get(engine, SqlClient.SqlClient)
  const a = Context.get(adminEngine, SqlClient.SqlClient)
  const run = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.provide(effect, engine)
  yield* a`CREATE TABLE IF NOT EXISTS win (id INT PRIMARY KEY, who TEXT NOT NULL)`
  yield* a`GRANT ALL ON win TO PUBLIC`
  // non-transactional: a statement that ran leaves its nextval behind, even when its transaction rolled back
  yield* a`CREATE SEQUENCE IF NOT EXISTS win_probe`
  yield* a`GRANT ALL ON SEQUENCE win_probe TO PUBLIC`
  const probe = Effect.map(
    a<{ n: string }>`SELECT (CASE WHEN is_called THEN last_value ELSE 0 END)::text AS n FROM win_probe`,
    (rows) => Number(rows[0]!.n)
  )
  const who = (ids: ReadonlyArray<number>) =>
    Effect.map(
      a<{ id: number; who: string }>`SELECT id, who FROM win WHERE id IN ${a.in(ids)} ORDER BY id`,
      (rows) => Object.fromEntries(rows.map((r) => [r.id, r.who]))
    )
  /** The backend's state as the server reports it: `idle` (no transaction), `idle in transaction`, … or gone. */
  const backend = (pid: number) =>
    Effect.map(
      a<{ state: string | null }>`SELECT state FROM pg_stat_activity WHERE pid = ${pid}`,
      (rows) => (rows.length === 0 ? "gone" : String(rows[0]!.state))
    )
  const stats = Effect.map(Context.get(engine, Engine.Engine).stats, (st) => ({ ...st }))
  return { server, proxy, s, a, run, who, backend, stats, probe }
})

/** The next unit on the pool's only connection: its pid, and that it starts clean (no transaction, no savepoint). */
const nextUnit = (env: Effect.Effect.Success<typeof setup>) =>
  env.run(
    Session.transact(
      Effect.gen(function* () {
        const [row] = yield* env.s<{
          pid: number
          fresh: boolean
        }>`SELECT pg_backend_pid() AS pid, txid_current_if_assigned() IS NULL AS fresh`
        assert.isTrue(row!.fresh, "the next unit starts a transaction of its own")
        // a savepoint left behind would make this RELEASE succeed: it must not exist
        const stale = yield* Effect.exit(Session.transact(env.s.unsafe("RELEASE SAVEPOINT sfx_statement")))
        assert.isTrue(Exit.isFailure(stale), "no sfx_statement savepoint is left on the connection")
        return row!.pid
      })
    )
  )

layer(PgServer.layer(), { timeout: 120_000, excludeTestServices: true })("PostgreSQL windows", (it) => {
  it.effect(
    "1. a forked fiber interrupted while its guard's SAVEPOINT is in flight: its statement is never sent, the unit goes on and commits its own",
    () =>
      Effect.gen(function* () {
        const env = yield* setup
        const { proxy, s, run } = env
        for (const then of ["statement", "end"] as const) {
          const [own, child, after] = [freshId(), freshId(), freshId()]
          const pid = yield* run(Session.transact(Session.connectionId))
          const destroyedBefore = (yield* env.stats).destroyed
          const probed = yield* env.probe
          const bodyDone = yield* Deferred.make<void>()
          const unit = yield* Effect.fork(
            run(
              Session.transact(
                Effect.gen(function* () {
                  yield* s`INSERT INTO win (id, who) VALUES (${own}, 'own')`
                  yield* proxy.holdNext(carries("SAVEPOINT sfx_statement"))
                  const fiber = yield* Effect.fork(
                    s`INSERT INTO win (id, who) SELECT ${child}, 'child ' || nextval('win_probe')`
                  )
                  yield* eventually(proxy.holding, "the guard's SAVEPOINT is held on its way to the server")
                  // nothing of the child's statement has been sent: the interruption returns at once
                  yield* Fiber.interrupt(fiber)
                  assert.isTrue(yield* proxy.holding, "the SAVEPOINT is still in flight")
                  if (then === "statement") {
                    // the unit's next statement waits for the guard to be undone, then runs in the transaction
                    const next = yield* Effect.fork(s`INSERT INTO win (id, who) VALUES (${after}, 'after')`)
                    assert.isAbove(yield* proxy.releaseHeld, 0)
                    yield* Fiber.join(next)
                  }
                  yield* Deferred.succeed(bodyDone, undefined)
                })
              )
            )
          )
          yield* Deferred.await(bodyDone)
          if (then === "end") {
            // the unit's end waits for the frame the guard holds: COMMIT is not sent before the guard is undone
            assert.isTrue(Option.isNone(yield* Fiber.poll(unit)))
            assert.isAbove(yield* proxy.releaseHeld, 0)
          }
          yield* Fiber.join(unit)
          const rows = yield* env.who([own, child, after])
          assert.deepStrictEqual(rows, then === "statement" ? { [own]: "own", [after]: "after" } : { [own]: "own" })
          assert.strictEqual(yield* env.probe, probed, "the child's statement never reached the server")
          assert.strictEqual(yield* env.backend(pid), "idle")
          assert.strictEqual(yield* nextUnit(env), pid, "the same connection serves the next unit")
          assert.strictEqual((yield* env.stats).destroyed, destroyedBefore)
        }
      }).pipe(Effect.scoped)
  )
})
