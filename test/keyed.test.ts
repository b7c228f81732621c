/**
 * Adversarial tests of keyed units (issue 12 #9, #14; guarantee 16) on MariaDB: a keyed unit is applied at most once —
 * across retries, interruption at any point and a new Engine — and its outcome can be asked for. Lost COMMIT replies,
 * server loss and COMMIT against a black-holed server (guarantee 15) are in keyedFaults.test.ts, on MariaDB and
 * PostgreSQL. Faults come from the FaultProxy; every verdict counts rows on the server.
 */
/**
 * Adversarial tests of keyed units (issue 12 #9, #14; guarantee 16), on MariaDB and on PostgreSQL from this one file:
 * a keyed unit is applied at most once — across retries, interruption at any point and a new Engine — and its
 * outcome can be asked for, also while the unit holding the key still runs (the answer waits for it). Lost COMMIT
 * replies, server loss and COMMIT against a black-holed server (guarantee 15) are in keyedFaults.test.ts. Faults come
 * from the FaultProxy; every verdict counts rows on the server (test/support/db.ts: the superuser side).
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { assert, layer, type Vitest } from "@effect/vitest"
import { Engine, Session, SessionError } from "@sessionfx/session"
import { FaultProxy, Prng } from "@sessionfx/testing"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import { type Db, type DbName, DbTag, dialects, withEngine } from "./support/db.js"
import { freshKey, untilApplied } from "./support/keyed.js"
import {
  eventually,
  expectTag,
  failureOf,
  freshId,
  repeat,
  rootTag,
  show,
  suiteOptions,
  trxPoll
} from "./support/unit.js"

const sql = SqlClient.SqlClient

/** The suite's tables; no unique constraint on k: a unit applied twice shows as two rows. */
const schema = (name: DbName) => [
  name === "postgres"
    ? `CREATE TABLE IF NOT EXISTS applied (id SERIAL PRIMARY KEY, k VARCHAR(100) NOT NULL, n INT NOT NULL)`
    : `CREATE TABLE IF NOT EXISTS applied (id INT AUTO_INCREMENT PRIMARY KEY, k VARCHAR(100) NOT NULL, n INT NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS plain (id INT PRIMARY KEY)`
]

/** One statement as the superuser (its own connection); a failure is a defect of the test. */
const adminQuery = <A = Record<string, any>>(statement: string, params: ReadonlyArray<unknown> = []) =>
  Effect.flatMap(DbTag, (db) => Effect.orDie(db.query<A>(statement, params)))

/** Committed rows of `table` matching `where`, as the server sees them. */
const count = (table: string, where: string, params: ReadonlyArray<unknown>) =>
  Effect.map(adminQuery<{ n: string | number }>(`SELECT COUNT(*) AS n FROM ${table} WHERE ${where}`, params), (rows) =>
    Number(rows[0]?.n ?? 0)
  )

/** The keyed unit's own write: one row per application. */
const apply = (key: string, n = 1) => Effect.flatMap(sql, (s) => s`INSERT INTO applied (k, n) VALUES (${key}, ${n})`)

const applications = (key: string) => count("applied", "k = ?", [key])

/** A statement that sleeps 50 ms on the server (inside the unit: its key lock is held that long). */
const nap = Effect.flatMap(sql, (s) =>
  s.onDialectOrElse({ pg: () => s`SELECT pg_sleep(0.05)`, orElse: () => s`SELECT SLEEP(0.05)` })
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

/** Tables of the database the application uses (MariaDB: its database; PostgreSQL: its schema). */
const tables = (name: DbName) =>
  adminQuery<{ t: string }>(
    name === "postgres"
      ? "SELECT table_name AS t FROM information_schema.tables WHERE table_schema = current_schema()"
      : "SELECT table_name AS t FROM information_schema.tables WHERE table_schema = DATABASE()"
  )

const scenarios = (it: Vitest.MethodsNonLive<DbTag, true>, name: DbName) => {
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
        const before = yield* tables(name)
        yield* Session.createKeyTable
        yield* Session.createKeyTable
        yield* Effect.all([Session.createKeyTable, Session.createKeyTable, Session.createKeyTable], { concurrency: 3 })
        const after = yield* tables(name)
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

  // guarantee 16: the answer is the unit's outcome, so it cannot be given before the unit has one. MariaDB's locking
  // read waits on the row lock of the unit's uncommitted key; on PostgreSQL an uncommitted row is invisible to a read
  // (FOR SHARE included), so the lookup there probes the key's unique index in a transaction it rolls back, which
  // waits for the inserting transaction the same way (before: "absent" at once, then the unit committed).
  it.effect(
    "Session.outcome asked while the unit holding the key runs waits on the server for it, then answers what it did",
    () =>
      withEngine(
        Effect.gen(function* () {
          const db = yield* DbTag
          yield* Session.createKeyTable
          for (const ending of ["commits", "rolls back"] as const) {
            const key = freshKey("inflight")
            const written = yield* Deferred.make<void>()
            const release = yield* Deferred.make<void>()
            const unit = yield* Effect.fork(
              Session.transact(
                Effect.gen(function* () {
                  yield* apply(key)
                  yield* Deferred.succeed(written, undefined)
                  yield* Deferred.await(release)
                  if (ending === "rolls back") return yield* Effect.fail("boom" as const)
                }),
                { key }
              )
            )
            yield* Deferred.await(written)
            const asked = yield* Effect.fork(Session.outcome(key))
            // the server's word: the lookup waits for the unit's lock on its key (an answer first fails the test)
            const early = yield* Effect.raceFirst(
              Effect.as(
                eventually(
                  Effect.map(db.lockWaits, (n) => n === 1),
                  `Session.outcome waits for the unit (${ending})`,
                  10,
                  name === "mariadb" ? trxPoll : 10
                ),
                undefined
              ),
              Effect.map(Fiber.join(asked), (said) => `answered ${said} while the unit was open`)
            )
            if (early !== undefined) return assert.fail(`${ending}: ${early}`)
            yield* Deferred.succeed(release, undefined)
            const exit = yield* Fiber.await(unit)
            assert.strictEqual(Exit.isSuccess(exit), ending === "commits", show(exit))
            const expected = ending === "commits" ? "committed" : "absent"
            assert.strictEqual(yield* Fiber.join(asked), expected, `the answer that waited for a unit that ${ending}`)
            assert.strictEqual(yield* applications(key), ending === "commits" ? 1 : 0)
            assert.strictEqual(yield* Session.outcome(key), expected)
          }
        }),
        { pool: { size: 3 } }
      )
  )

  // guarantee 15: that wait is bounded — by the Engine's lockWaitTimeout, else the server's (MariaDB) or 50 s
  // (PostgreSQL, whose lock_timeout defaults to none: before, a holder that never ended held the lookup forever)
  it.effect("Session.outcome waiting for a unit that does not end gives LockWaitTimeout after lockWaitTimeout", () =>
    withEngine(
      Effect.gen(function* () {
        yield* Session.createKeyTable
        const key = freshKey("held")
        const written = yield* Deferred.make<void>()
        const release = yield* Deferred.make<void>()
        const unit = yield* Effect.fork(
          Session.transact(
            Effect.zipRight(Effect.zipRight(apply(key), Deferred.succeed(written, undefined)), Deferred.await(release)),
            { key }
          )
        )
        yield* Deferred.await(written)
        const started = Date.now()
        const asked = yield* Effect.exit(Session.outcome(key).pipe(Effect.timeout("20 seconds")))
        const took = Date.now() - started
        expectTag(asked, ["LockWaitTimeout"], "the bounded lookup")
        assert.isAtLeast(took, 900, "it waited for the unit first")
        yield* Deferred.succeed(release, undefined)
        assert.isTrue(Exit.isSuccess(yield* Fiber.await(unit)))
        assert.strictEqual(yield* Session.outcome(key), "committed")
      }),
      { lockWaitTimeout: "1 second", pool: { size: 3 } }
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
          const unit = (n: number) => Session.transact(Effect.zipRight(apply(key, n), nap), { key, retry: true })
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
          withEngine(Effect.exit(Session.transact(Effect.zipRight(apply(key, n), nap), { key, retry: true })))
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
  // exactly once under interruption (lost COMMIT replies and server loss: keyedFaults.test.ts, on both databases)
  // ---------------------------------------------------------------------------------------------------------------

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
            const result = yield* untilApplied(key, applications, (i) => {
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
}

for (const [name, db] of dialects) {
  // created by the application user (on PostgreSQL the owner of a table is its creator)
  const suite = Layer.effectDiscard(
    withEngine(
      Effect.forEach(schema(name), (text) => Effect.flatMap(sql, (s) => s.unsafe(text)), {
        discard: true
      })
    )
  ).pipe(Layer.provideMerge(db))
  layer(suite, suiteOptions)(`keyed units (${name})`, (it) => scenarios(it, name))
}
