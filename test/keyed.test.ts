/**
 * Adversarial tests of keyed units and bounded COMMIT (issue 12 #9, #14; guarantees 15 and 16): a keyed unit is
 * applied at most once — across retries, unknown outcomes, interruption at any point and a new Engine — and its
 * outcome can be asked for; COMMIT against a black-holed server is bounded from outside (timeout, interrupt) and from
 * inside (`timeout`, `commitTimeout`). Faults come from the FaultProxy; every verdict counts rows on the server.
 */
import { assert, layer } from "@effect/vitest"
import { Engine, Session, SessionError } from "@sessionfx/session"
import { FaultProxy, Prng } from "@sessionfx/testing"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import {
  adminQuery,
  count,
  eventually,
  expectTag,
  failureOf,
  freshId,
  repeat,
  rootTag,
  serverLayer,
  show,
  sql,
  suiteOptions,
  theServer,
  withEngine
} from "./support/unit.js"
import * as Admin from "./support/admin.js"

const schema = [
  // no unique constraint on k: a unit applied twice shows as two rows
  `CREATE TABLE IF NOT EXISTS applied (id INT AUTO_INCREMENT PRIMARY KEY, k VARCHAR(100) NOT NULL, n INT NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS plain (id INT PRIMARY KEY)`
]

const suite = Layer.effectDiscard(Effect.forEach(schema, (s) => adminQuery(s), { discard: true })).pipe(
  Layer.provideMerge(serverLayer())
)

let keySeq = 0
const freshKey = (prefix: string) => `${prefix}-${Date.now().toString(36)}-${++keySeq}`

/** The keyed unit's own write: one row per application. */
const apply = (key: string, n = 1) => Effect.flatMap(sql, (s) => s`INSERT INTO applied (k, n) VALUES (${key}, ${n})`)

const applications = (key: string) => count("applied", "k = ?", [key])

/** Exactly a COM_QUERY whose text is COMMIT (what a unit's COMMIT looks like on the wire). */
const isCommit = (chunk: Buffer) =>
  chunk.length >= 11 && chunk[4] === 0x03 && /^\s*COMMIT\b/i.test(chunk.subarray(5).toString("latin1"))

/** A proxy in front of the suite's server and an Engine through it, for one scoped test. */
const viaProxy = <A, E, R>(
  body: (proxy: FaultProxy.FaultProxy["Type"]) => Effect.Effect<A, E, R>,
  options: Partial<Engine.EngineOptions> = {}
) =>
  Effect.gen(function* () {
    const server = yield* theServer
    const proxy = yield* FaultProxy.make({ target: { host: server.host, port: server.port } })
    return yield* withEngine(
      Effect.ensuring(body(proxy), Effect.zipRight(proxy.blackhole(false), proxy.setLatency(0))),
      {
        url: proxy.urlFor(server),
        connectTimeout: "2 seconds",
        killGrace: "500 millis",
        commitTimeout: "1 second",
        ...options,
        pool: { size: 2, acquireTimeout: "5 seconds", validateAfterIdle: "100 millis", ...options.pool }
      } as Partial<Engine.EngineOptions>
    )
  })

/**
 * The caller's loop of an exactly-once client: run the keyed unit until it succeeds or reports AlreadyApplied; after
 * every attempt whose outcome is unknown, `Session.outcome(key)` must agree with the rows on the server.
 */
const untilApplied = <E, R>(key: string, attempt: (i: number) => Effect.Effect<unknown, E, R>, maxAttempts = 25) =>
  Effect.gen(function* () {
    const tags: Array<string> = []
    for (let i = 0; i < maxAttempts; i++) {
      const exit = yield* Effect.exit(attempt(i))
      if (Exit.isSuccess(exit)) return { tags: [...tags, "success"], attempts: i + 1 }
      const tag = Exit.isInterrupted(exit) ? "interrupted" : rootTag(failureOf(exit as Exit.Exit<never, unknown>, key))
      tags.push(tag)
      if (tag === "AlreadyApplied") return { tags, attempts: i + 1 }
      if (tag === "CommitOutcomeUnknown" || tag === "TimeoutException" || tag === "interrupted") {
        const said = yield* Effect.exit(Session.outcome(key))
        if (Exit.isSuccess(said)) {
          const rows = yield* applications(key)
          assert.strictEqual(
            said.value === "committed",
            rows === 1,
            `${key}: Session.outcome says ${said.value} while ${rows} row(s) are committed (after ${tag})`
          )
        }
      }
    }
    return assert.fail(`${key}: not applied after ${maxAttempts} attempts: ${tags.join(", ")}`)
  })

layer(suite, suiteOptions)("keyed units and bounded COMMIT", (it) => {
  it.effect("the keyed API's types: createKeyTable, outcome, AlreadyApplied", () =>
    Effect.sync(() => {
      const create: Effect.Effect<void, SessionError.SessionError, Engine.Engine> = Session.createKeyTable
      const ask: Effect.Effect<"committed" | "absent", SessionError.SessionError, Engine.Engine> = Session.outcome("k")
      const applied = new SessionError.AlreadyApplied({ message: "m", key: "k" })
      assert.isTrue(Effect.isEffect(create) && Effect.isEffect(ask))
      assert.deepStrictEqual([applied._tag, applied.key, applied.retryable], ["AlreadyApplied", "k", false])
    })
  )

  it.effect("Session.createKeyTable is idempotent (sequential and concurrent) and creates a table", () =>
    withEngine(
      Effect.gen(function* () {
        const before = yield* adminQuery<{ t: string }>(
          "SELECT table_name AS t FROM information_schema.tables WHERE table_schema = DATABASE()"
        )
        yield* Session.createKeyTable
        yield* Session.createKeyTable
        yield* Effect.all([Session.createKeyTable, Session.createKeyTable, Session.createKeyTable], { concurrency: 3 })
        const after = yield* adminQuery<{ t: string }>(
          "SELECT table_name AS t FROM information_schema.tables WHERE table_schema = DATABASE()"
        )
        const created = after.map((r) => r.t).filter((t) => !before.some((b) => b.t === t))
        assert.isTrue(
          created.length === 1 || after.some((r) => /key/i.test(r.t)),
          `no key table: ${after.map((r) => r.t).join(", ")}`
        )
      })
    )
  )

  it.effect("a keyed unit records its key with its commit; outcome says committed / absent", () =>
    withEngine(
      Effect.gen(function* () {
        yield* Session.createKeyTable
        assert.strictEqual(yield* Session.outcome(freshKey("never")), "absent")

        const k1 = freshKey("k")
        yield* Session.transact(apply(k1), { key: k1, retry: true })
        assert.strictEqual(yield* applications(k1), 1)
        assert.strictEqual(yield* Session.outcome(k1), "committed")

        // a failed keyed unit does not use its key up: nothing kept, outcome absent, a later attempt applies
        const k2 = freshKey("k")
        const failed = yield* Effect.exit(
          Session.transact(Effect.zipRight(apply(k2), Effect.fail("boom" as const)), { key: k2 })
        )
        assert.deepStrictEqual(failed, Exit.fail("boom"))
        assert.strictEqual(yield* applications(k2), 0)
        assert.strictEqual(yield* Session.outcome(k2), "absent", "the key of a rolled-back unit was kept")
        yield* Session.transact(apply(k2), { key: k2 })
        assert.strictEqual(yield* Session.outcome(k2), "committed")

        // rollbackOnly / setRollbackOnly: the key is not committed either
        const k3 = freshKey("k")
        yield* Session.transact(Effect.zipRight(apply(k3), Session.setRollbackOnly), { key: k3 })
        assert.strictEqual(yield* applications(k3), 0)
        assert.strictEqual(yield* Session.outcome(k3), "absent", "the key of a rollback-only unit was committed")

        // keys are exact: similar spellings are other keys
        for (const other of [k1.toUpperCase(), `${k1} `, `${k1}x`]) {
          assert.strictEqual(yield* Session.outcome(other), "absent", `outcome(${JSON.stringify(other)})`)
        }
      })
    )
  )

  it.effect("a keyed unit retried after a retryable failure (its connection killed) is applied once", () =>
    withEngine(
      Effect.gen(function* () {
        yield* Session.createKeyTable
        const server = yield* theServer
        const key = freshKey("retried")
        let attempts = 0
        yield* Session.transact(
          Effect.gen(function* () {
            attempts++
            yield* apply(key)
            if (attempts === 1) {
              yield* Admin.kill(server, "CONNECTION", yield* Session.connectionId)
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

  it.effect("an invalid key is InvalidOption before anything is sent", () =>
    withEngine(
      Effect.gen(function* () {
        yield* Session.createKeyTable
        for (const key of ["", "k".repeat(300)]) {
          const marker = freshKey("invalid")
          const exit = yield* Effect.exit(Session.transact(apply(marker), { key }))
          const e = expectTag(exit, ["InvalidOption"], `key of ${key.length} characters`)
          assert.strictEqual(e.option, "key")
          assert.strictEqual(yield* applications(marker), 0)
        }
      })
    )
  )

  it.effect("a read-only keyed unit is InvalidOption before anything is sent (its key could never be recorded)", () =>
    withEngine(
      Effect.gen(function* () {
        yield* Session.createKeyTable
        for (const option of [{ readOnly: true }, { consistentSnapshot: true }] as const) {
          const key = freshKey("readonly")
          const exit = yield* Effect.exit(Session.transact(apply(key), { key, ...option }))
          const e = expectTag(exit, ["InvalidOption"], JSON.stringify(option))
          assert.strictEqual(e.option, Object.keys(option)[0])
          assert.strictEqual(yield* applications(key), 0)
          assert.strictEqual(yield* Session.outcome(key), "absent")
        }
      })
    )
  )

  it.effect("Session.outcome asked inside the unit with that key fails at once (it would wait on its own lock)", () =>
    withEngine(
      Effect.gen(function* () {
        yield* Session.createKeyTable
        const key = freshKey("own")
        // (before: a LockWaitTimeout after innodb_lock_wait_timeout, the read waiting on the unit's own lock)
        const inner = yield* Session.transact(Effect.exit(Session.outcome(key)), { key })
        assert.strictEqual(expectTag(inner, ["InvalidOption"], "outcome inside its unit").option, "key")
        assert.strictEqual(yield* Session.outcome(key), "committed")
      })
    )
  )

  it.effect("Session.outcome never says committed before the unit's COMMIT; after it, it does", () =>
    withEngine(
      Effect.gen(function* () {
        yield* Session.createKeyTable
        const key = freshKey("inflight")
        const written = yield* Deferred.make<void>()
        const release = yield* Deferred.make<void>()
        const unit = yield* Effect.fork(
          Session.transact(
            Effect.gen(function* () {
              yield* apply(key)
              yield* Deferred.succeed(written, undefined)
              yield* Deferred.await(release)
            }),
            { key }
          )
        )
        yield* Deferred.await(written)
        // while the unit is open: absent, or no answer yet (waiting for it to end) — never committed
        const early = yield* Effect.fork(Session.outcome(key))
        const during = yield* Effect.either(Effect.timeout(Fiber.join(early), "300 millis"))
        if (during._tag === "Right") assert.strictEqual(during.right, "absent", "committed before the COMMIT")
        yield* Deferred.succeed(release, undefined)
        yield* Fiber.join(unit)
        assert.strictEqual(yield* Session.outcome(key), "committed")
        const late = yield* Effect.exit(Fiber.join(early))
        if (Exit.isSuccess(late) && during._tag === "Left") {
          // it waited for the unit: then it must say what the unit did
          assert.strictEqual(late.value, "committed", "an outcome that waited for the unit")
        }
      }),
      { pool: { size: 3 } }
    )
  )

  it.effect("a key that already committed: AlreadyApplied (with the key), the unit changes nothing", () =>
    withEngine(
      Effect.gen(function* () {
        yield* Session.createKeyTable
        for (const retry of [false, true]) {
          const key = freshKey("dup")
          yield* Session.transact(apply(key, 1), { key, retry })
          const plainId = freshId()
          const again = yield* Effect.exit(
            Session.transact(
              Effect.zipRight(
                apply(key, 2),
                Effect.flatMap(sql, (s) => s`INSERT INTO plain (id) VALUES (${plainId})`)
              ),
              { key, retry }
            )
          )
          const e = expectTag(again, ["AlreadyApplied"], `second run of ${key} (retry ${retry})`)
          assert.strictEqual(e.key, key)
          assert.strictEqual(e.retryable, false)
          assert.strictEqual(yield* applications(key), 1, "applied twice")
          assert.strictEqual(yield* count("plain", "id = ?", [plainId]), 0, "the second run changed something")
        }
      })
    )
  )

  it.effect("concurrent units with the same key: exactly one applies, the other gets AlreadyApplied (x4)", () =>
    withEngine(
      repeat(4, () =>
        Effect.gen(function* () {
          yield* Session.createKeyTable
          const key = freshKey("race")
          const unit = (n: number) =>
            Session.transact(
              Effect.zipRight(
                apply(key, n),
                Effect.flatMap(sql, (s) => s`SELECT SLEEP(0.05)`)
              ),
              { key, retry: true }
            )
          const exits = yield* Effect.all([Effect.exit(unit(1)), Effect.exit(unit(2)), Effect.exit(unit(3))], {
            concurrency: 3
          })
          const ok = exits.filter(Exit.isSuccess).length
          assert.strictEqual(ok, 1, `successes: ${exits.map(show).join(" / ")}`)
          for (const e of exits.filter(Exit.isFailure)) expectTag(e, ["AlreadyApplied"], "the other units")
          assert.strictEqual(yield* applications(key), 1)
        })
      ),
      { pool: { size: 4 } }
    )
  )

  it.effect("two Engines (two processes) racing one key: exactly one applies (x3)", () =>
    repeat(3, () =>
      Effect.gen(function* () {
        yield* withEngine(Session.createKeyTable)
        const key = freshKey("engines")
        const unit = (n: number) =>
          withEngine(
            Effect.exit(
              Session.transact(
                Effect.zipRight(
                  apply(key, n),
                  Effect.flatMap(sql, (s) => s`SELECT SLEEP(0.05)`)
                ),
                { key, retry: true }
              )
            )
          )
        const exits = yield* Effect.all([unit(1), unit(2)], { concurrency: 2 })
        assert.strictEqual(exits.filter(Exit.isSuccess).length, 1, exits.map(show).join(" / "))
        for (const e of exits.filter(Exit.isFailure)) expectTag(e, ["AlreadyApplied"], "the other engine")
        assert.strictEqual(yield* applications(key), 1)
      })
    )
  )

  it.effect("a new Engine (a process restart) knows the key: outcome committed, AlreadyApplied", () =>
    Effect.gen(function* () {
      const key = freshKey("restart")
      yield* withEngine(Effect.zipRight(Session.createKeyTable, Session.transact(apply(key), { key })))
      yield* withEngine(
        Effect.gen(function* () {
          assert.strictEqual(yield* Session.outcome(key), "committed")
          const again = yield* Effect.exit(Session.transact(apply(key), { key, retry: true }))
          expectTag(again, ["AlreadyApplied"], "after a restart")
          assert.strictEqual(yield* applications(key), 1)
        })
      )
    })
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
                Effect.map(Engine.stats, (s) => s.inUse === 0 && s.destroyed > destroyed0),
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
            yield* Deferred.await(bodyDone)
            // the scenario: COMMIT has been written into the hole and waits for an answer that never comes
            yield* Effect.sleep("200 millis")
            const t0 = Date.now()
            yield* Fiber.interrupt(fiber)
            const ms = Date.now() - t0
            assert.isBelow(ms, 2000, `Fiber.interrupt of a unit in COMMIT took ${ms} ms`)
            yield* proxy.blackhole(false)
            yield* eventually(
              Effect.map(Engine.stats, (s) => s.inUse === 0 && s.destroyed > destroyed0),
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
    viaProxy((proxy) =>
      Effect.gen(function* () {
        yield* Session.createKeyTable
        const random = Prng.make(12)
        const problems: Array<string> = []
        let faults = 0
        for (let k = 0; k < 10; k++) {
          const key = freshKey("reset")
          const result = yield* untilApplied(key, (i) =>
            Effect.gen(function* () {
              if (i === 0) {
                yield* proxy.resetNextAfter({ match: isCommit, forward: random() < 0.5 })
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
        (proxy) =>
          Effect.gen(function* () {
            yield* Session.createKeyTable
            const random = Prng.make(34)
            const problems: Array<string> = []
            for (let k = 0; k < 4; k++) {
              const key = freshKey("hole")
              const triggered0 = (yield* proxy.counters).triggered
              const t0 = Date.now()
              const result = yield* untilApplied(key, (i) =>
                Effect.gen(function* () {
                  if (i === 0) {
                    yield* proxy.resetNextAfter({ match: isCommit, forward: random() < 0.5, action: "blackhole" })
                  }
                  return yield* Session.transact(apply(key), { key, retry: true, timeout: "3 seconds" })
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
    "without a key, under random timeouts and interrupts: a success is committed, a typed failure is absent (x24)",
    () =>
      viaProxy((proxy) =>
        Effect.gen(function* () {
          yield* proxy.setLatency(2)
          const random = Prng.make(78)
          const problems: Array<string> = []
          const seen: Record<string, number> = {}
          for (let i = 0; i < 24; i++) {
            const key = freshKey("plain")
            const ms = Math.floor(random() * 30)
            const unit = Session.transact(apply(key))
            const exit =
              i % 2 === 0
                ? yield* Effect.exit(Effect.timeout(unit, `${ms} millis`))
                : yield* Effect.gen(function* () {
                    const fiber = yield* Effect.fork(unit)
                    yield* Effect.sleep(`${ms} millis`)
                    return yield* Fiber.interrupt(fiber)
                  })
            const tag = Exit.isSuccess(exit)
              ? "success"
              : Exit.isInterrupted(exit)
                ? "interrupted"
                : rootTag(failureOf(exit, key))
            seen[tag] = (seen[tag] ?? 0) + 1
            const n = yield* applications(key)
            // TimeoutException / CommitOutcomeUnknown: either is allowed; otherwise the report must match the server
            if (tag === "success" && n !== 1) problems.push(`${key}: reported committed, ${n} rows`)
            if (
              tag !== "success" &&
              tag !== "TimeoutException" &&
              tag !== "interrupted" &&
              tag !== "CommitOutcomeUnknown" &&
              n !== 0
            ) {
              problems.push(`${key}: failed with ${tag}, yet ${n} row(s) committed`)
            }
          }
          assert.deepStrictEqual(problems, [], `outcomes ${JSON.stringify(seen)}`)
          assert.isAbove(
            (seen["TimeoutException"] ?? 0) + (seen["interrupted"] ?? 0),
            0,
            "nothing was interrupted: the scenario did not happen"
          )
        })
      )
  )

  it.scoped(
    "exactly once: interrupted at random points (Effect.timeout and Fiber.interrupt), retried until applied",
    () =>
      viaProxy((proxy) =>
        Effect.gen(function* () {
          yield* Session.createKeyTable
          yield* proxy.setLatency(3)
          const random = Prng.make(56)
          const problems: Array<string> = []
          const outcomes: Record<string, number> = {}
          for (let k = 0; k < 16; k++) {
            const key = freshKey("intr")
            const result = yield* untilApplied(key, (i) => {
              const unit = Session.transact(
                Effect.zipRight(
                  apply(key),
                  Effect.flatMap(sql, (s) => s`SELECT ${k} AS k`)
                ),
                { key, retry: true }
              )
              if (i >= 6) return unit // let it through in the end
              const ms = Math.floor(random() * 45)
              if (random() < 0.5) return Effect.timeout(unit, `${ms} millis`)
              return Effect.gen(function* () {
                const fiber = yield* Effect.fork(unit)
                yield* Effect.sleep(`${ms} millis`)
                const exit = yield* Fiber.interrupt(fiber)
                return yield* exit
              })
            })
            for (const t of result.tags) outcomes[t] = (outcomes[t] ?? 0) + 1
            const n = yield* applications(key)
            if (n !== 1) problems.push(`${key}: applied ${n} times (${result.tags.join(", ")})`)
          }
          assert.deepStrictEqual(
            problems,
            [],
            `keyed units applied other than once; outcomes ${JSON.stringify(outcomes)}`
          )
          assert.isAbove(
            (outcomes["interrupted"] ?? 0) + (outcomes["TimeoutException"] ?? 0),
            0,
            "no attempt was interrupted: the scenario did not happen"
          )
        })
      )
  )
})
