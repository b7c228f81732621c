/**
 * Keyed units and bounded COMMIT under lost COMMIT replies and server loss (guarantees 15 and 16), on MariaDB and on
 * PostgreSQL from this one file: a COMMIT into a black hole is bounded from outside (timeout, interrupt) and from inside
 * (`timeout`, `commitTimeout`); a keyed unit whose connection is ended, whose COMMIT's reply is lost (reset or
 * black-holed, the COMMIT delivered or dropped) or whose server crashes at COMMIT is applied exactly once by a caller
 * that retries until it succeeds or hears AlreadyApplied. Faults come from the FaultProxy and the server's lifecycle
 * (test/support/db.ts); every verdict counts rows on the server.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { assert, layer, type Vitest } from "@effect/vitest"
import { Engine, Session } from "@sessionfx/session"
import { FaultProxy, Prng } from "@sessionfx/testing"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import { settle } from "./support/clean.js"
import { type Db, type DbName, DbTag, dialects, withEngine } from "./support/db.js"
import { freshKey, untilApplied } from "./support/keyed.js"
import { eventually, expectTag, repeat, show, suiteOptions } from "./support/unit.js"

const sql = SqlClient.SqlClient

/** The keyed unit's own table and the key table; no unique constraint on k: a unit applied twice shows as two rows. */
const setup = Effect.zipRight(
  Session.createKeyTable,
  Effect.flatMap(sql, (s) =>
    s.onDialectOrElse({
      pg: () => s`CREATE TABLE IF NOT EXISTS applied (id SERIAL PRIMARY KEY, k VARCHAR(100) NOT NULL, n INT NOT NULL)`,
      orElse: () =>
        s`CREATE TABLE IF NOT EXISTS applied (id INT AUTO_INCREMENT PRIMARY KEY, k VARCHAR(100) NOT NULL, n INT NOT NULL)`
    })
  )
)

/** The keyed unit's own write: one row per application. */
const apply = (key: string, n = 1) => Effect.flatMap(sql, (s) => s`INSERT INTO applied (k, n) VALUES (${key}, ${n})`)

/** How many times the unit of `key` is committed, as the server sees it (superuser, own connection). */
const applications = (key: string) =>
  Effect.flatMap(DbTag, (db) =>
    Effect.map(
      Effect.orDie(db.query<{ n: string | number }>("SELECT COUNT(*) AS n FROM applied WHERE k = ?", [key])),
      (rows) => Number(rows[0]?.n ?? 0)
    )
  )

/** A proxy in front of the suite's server and an Engine through it, for one scoped test. */
const viaProxy = <A, E, R>(
  body: (proxy: FaultProxy.FaultProxy["Type"], db: Db) => Effect.Effect<A, E, R>,
  options: Partial<Engine.EngineOptions> = {}
) =>
  Effect.gen(function* () {
    const db = yield* DbTag
    const proxy = yield* FaultProxy.make({ target: { host: db.host, port: db.port } })
    return yield* withEngine(
      Effect.ensuring(body(proxy, db), Effect.zipRight(proxy.blackhole(false), proxy.setLatency(0))),
      {
        url: proxy.urlFor(db),
        connectTimeout: "2 seconds",
        killGrace: "500 millis",
        commitTimeout: "1 second",
        ...options,
        pool: { size: 2, acquireTimeout: "5 seconds", validateAfterIdle: "100 millis", ...options.pool }
      } as Partial<Engine.EngineOptions>
    )
  })

const scenarios = (it: Vitest.MethodsNonLive<DbTag, true>, name: DbName) => {
  it.effect("setup: the key table and the keyed units' table", () => withEngine(setup))

  const terminate = name === "mariadb" ? "KILL CONNECTION" : "pg_terminate_backend"
  it.effect(`a keyed unit retried after its connection was ended (${terminate}) is applied once`, () =>
    withEngine(
      Effect.gen(function* () {
        const db = yield* DbTag
        const key = freshKey("retried")
        let attempts = 0
        yield* Session.transact(
          Effect.gen(function* () {
            attempts++
            yield* apply(key)
            if (attempts === 1) {
              assert.isTrue(yield* db.kill("CONNECTION", yield* Session.connectionId))
              yield* Effect.flatMap(sql, (s) => s`SELECT 1`)
            }
          }),
          { key, retry: true }
        )
        assert.strictEqual(attempts, 2)
        assert.strictEqual(yield* applications(key), 1)
        assert.strictEqual(yield* Session.outcome(key), "committed")
      })
    )
  )

  // ---------------------------------------------------------------------------------------------------------------
  // COMMIT bounded
  // ---------------------------------------------------------------------------------------------------------------

  it.scoped(
    "COMMIT into a black hole: Effect.timeout(unit, 1 s) returns within ~2 s; the connection is destroyed",
    () =>
      viaProxy(
        (proxy) =>
          repeat(2, () =>
            Effect.gen(function* () {
              const key = freshKey("bh-timeout")
              const destroyed0 = (yield* Engine.stats).destroyed
              const t0 = Date.now()
              const exit = yield* Effect.exit(
                Effect.timeout(Session.transact(Effect.zipRight(apply(key), proxy.blackhole(true))), "1 second")
              )
              const ms = Date.now() - t0
              assert.isTrue(Exit.isFailure(exit), `a unit whose COMMIT was black-holed succeeded: ${show(exit)}`)
              assert.isBelow(ms, 2500, `Effect.timeout(unit, "1 second") returned after ${ms} ms`)
              yield* proxy.blackhole(false)
              yield* eventually(
                // and no connection is still being opened: one the pool began inside the hole is reset when the
                // hole closes, and a failed connect with nothing else open fails the waiters (ConnectionError)
                Effect.map(Engine.stats, (s) => s.inUse === 0 && s.destroyed > destroyed0 && s.pending === 0),
                "the connection stuck in COMMIT is destroyed and not lent"
              )
              // the COMMIT never reached the server: once the connection is gone, nothing is committed
              yield* eventually(
                Effect.map(applications(key), (n) => n === 0),
                "the black-holed unit is rolled back"
              )
            })
          ),
        { commitTimeout: "30 seconds" }
      )
  )

  it.scoped("COMMIT into a black hole: Fiber.interrupt(unit) returns within ~2 s", () =>
    viaProxy(
      (proxy) =>
        repeat(2, () =>
          Effect.gen(function* () {
            const key = freshKey("bh-interrupt")
            const destroyed0 = (yield* Engine.stats).destroyed
            const bodyDone = yield* Deferred.make<void>()
            const fiber = yield* Effect.fork(
              Session.transact(
                Effect.gen(function* () {
                  yield* apply(key)
                  yield* proxy.blackhole(true)
                  yield* Deferred.succeed(bodyDone, undefined)
                })
              )
            )
            // a unit that ends before its body is done (its first statement failed) has nothing to interrupt: say so
            // rather than wait for a body that will never be done
            const ended = yield* Effect.raceFirst(
              Effect.as(Deferred.await(bodyDone), undefined),
              Effect.map(Fiber.await(fiber), (exit) => show(exit))
            )
            if (ended !== undefined) return assert.fail(`the unit ended before its COMMIT: ${ended}`)
            // the scenario: COMMIT has been written into the hole and waits for an answer that never comes
            yield* Effect.sleep("200 millis")
            const t0 = Date.now()
            yield* Fiber.interrupt(fiber)
            const ms = Date.now() - t0
            assert.isBelow(ms, 2000, `Fiber.interrupt of a unit in COMMIT took ${ms} ms`)
            yield* proxy.blackhole(false)
            yield* eventually(
              // no connection still being opened either (see above)
              Effect.map(Engine.stats, (s) => s.inUse === 0 && s.destroyed > destroyed0 && s.pending === 0),
              "the connection stuck in COMMIT is destroyed and nothing is lent after the interrupt"
            )
          })
        ),
      { commitTimeout: "30 seconds" }
    )
  )

  it.scoped(
    "without interruption, COMMIT waits at most commitTimeout (engine) or the unit's timeout: CommitOutcomeUnknown",
    () =>
      Effect.gen(function* () {
        // the engine's commitTimeout
        yield* viaProxy(
          (proxy) =>
            Effect.gen(function* () {
              const key = freshKey("bh-commit-timeout")
              const t0 = Date.now()
              const exit = yield* Effect.exit(Session.transact(Effect.zipRight(apply(key), proxy.blackhole(true))))
              const ms = Date.now() - t0
              expectTag(exit, ["CommitOutcomeUnknown"], "COMMIT without an answer (commitTimeout 1 s)")
              assert.isAtLeast(ms, 900, `gave up after ${ms} ms, before commitTimeout`)
              assert.isBelow(ms, 3000, `gave up after ${ms} ms`)
            }),
          { commitTimeout: "1 second" }
        )
        // the unit's own timeout, shorter than the engine's commitTimeout (default 10 s)
        yield* viaProxy(
          (proxy) =>
            Effect.gen(function* () {
              const key = freshKey("bh-unit-timeout")
              const t0 = Date.now()
              const exit = yield* Effect.exit(
                Session.transact(Effect.zipRight(apply(key), proxy.blackhole(true)), { timeout: "1500 millis" })
              )
              const ms = Date.now() - t0
              expectTag(exit, ["CommitOutcomeUnknown", "TransactionTimeout"], "COMMIT bounded by the unit's timeout")
              assert.isBelow(ms, 3000, `gave up after ${ms} ms (unit timeout 1.5 s)`)
            }),
          { commitTimeout: undefined } as any
        )
      })
  )

  // ---------------------------------------------------------------------------------------------------------------
  // exactly once under faults
  // ---------------------------------------------------------------------------------------------------------------

  it.scoped("exactly once: connections reset at COMMIT (delivered or dropped), the caller retries until applied", () =>
    viaProxy((proxy, db) =>
      Effect.gen(function* () {
        yield* setup
        const random = Prng.make(12)
        const problems: Array<string> = []
        let faults = 0
        for (let k = 0; k < 10; k++) {
          const key = freshKey("reset")
          const result = yield* untilApplied(key, applications, (i) =>
            Effect.gen(function* () {
              if (i === 0) {
                yield* proxy.resetNextAfter({ match: db.isCommit, forward: random() < 0.5 })
              }
              return yield* Session.transact(apply(key), { key, retry: true, timeout: "5 seconds" })
            })
          )
          if ((yield* proxy.armed) === false) faults++
          yield* proxy.resetNextAfter({ bytesFromClient: Number.MAX_SAFE_INTEGER })
          const n = yield* applications(key)
          if (n !== 1) problems.push(`${key}: applied ${n} times (${result.tags.join(", ")})`)
        }
        assert.deepStrictEqual(problems, [], "keyed units applied other than once")
        assert.isAbove((yield* proxy.counters).triggered, 0, "no COMMIT was ever reset: the scenario did not happen")
        assert.isAtLeast(faults, 1)
      })
    )
  )

  it.scoped(
    "exactly once: black hole at COMMIT (delivered or dropped), bounded by commitTimeout, retried until applied",
    () =>
      viaProxy(
        (proxy, db) =>
          Effect.gen(function* () {
            yield* setup
            const random = Prng.make(34)
            const problems: Array<string> = []
            for (let k = 0; k < 4; k++) {
              const key = freshKey("hole")
              const triggered0 = (yield* proxy.counters).triggered
              const t0 = Date.now()
              const result = yield* untilApplied(key, applications, (i) =>
                Effect.gen(function* () {
                  if (i === 0) {
                    yield* proxy.resetNextAfter({ match: db.isCommit, forward: random() < 0.5, action: "blackhole" })
                  }
                  // no `timeout` of its own: COMMIT is bounded by the engine's commitTimeout
                  return yield* Session.transact(apply(key), { key, retry: true })
                })
              )
              yield* proxy.resetNextAfter({ bytesFromClient: Number.MAX_SAFE_INTEGER })
              const n = yield* applications(key)
              if (n !== 1) problems.push(`${key}: applied ${n} times (${result.tags.join(", ")})`)
              // a keyed unit may resolve its own unknown outcome (then the caller sees success at once)
              if ((yield* proxy.counters).triggered === triggered0) problems.push(`${key}: the black hole never fired`)
              const ms = Date.now() - t0
              if (ms > 6_000) problems.push(`${key}: took ${ms} ms to resolve (${result.tags.join(", ")})`)
            }
            assert.deepStrictEqual(problems, [], "keyed units applied other than once")
          }),
        { commitTimeout: "700 millis" }
      )
  )

  it.scoped(
    "exactly once: the server crashes while the COMMIT's reply is lost (delivered or dropped), then recovers",
    () =>
      viaProxy(
        (proxy, db) =>
          Effect.gen(function* () {
            yield* setup
            const problems: Array<string> = []
            const seen: Array<string> = []
            for (const forward of [true, false]) {
              const key = freshKey(forward ? "crash-delivered" : "crash-dropped")
              const triggered0 = (yield* proxy.counters).triggered
              yield* proxy.resetNextAfter({ match: db.isCommit, forward, action: "blackhole" })
              // once the unit's COMMIT is in the hole (sent on or not), the server crashes and recovers
              const crash = yield* Effect.fork(
                Effect.gen(function* () {
                  const triggered = yield* settle(
                    Effect.map(proxy.counters, (c) => c.triggered),
                    (n) => n > triggered0,
                    10_000
                  )
                  if (triggered === triggered0) return yield* Effect.dieMessage("the COMMIT never reached the hole")
                  yield* db.crash
                })
              )
              const result = yield* untilApplied(key, applications, (i) =>
                Effect.zipRight(
                  // the caller's later attempts run once the server is back
                  i === 0 ? Effect.void : Fiber.join(crash),
                  Session.transact(apply(key), { key, retry: true, timeout: "5 seconds" })
                )
              )
              yield* Fiber.join(crash)
              yield* proxy.resetNextAfter({ bytesFromClient: Number.MAX_SAFE_INTEGER })
              seen.push(`${key}: ${result.tags.join(", ")}`)
              const n = yield* applications(key)
              if (n !== 1) problems.push(`${key}: applied ${n} times (${result.tags.join(", ")})`)
            }
            assert.deepStrictEqual(problems, [], `keyed units applied other than once: ${seen.join("; ")}`)
          }),
        { commitTimeout: "700 millis" }
      )
  )
}

for (const [name, db] of dialects) {
  layer(db, suiteOptions)(`keyed units and bounded COMMIT under faults (${name})`, (it) => scenarios(it, name))
}
