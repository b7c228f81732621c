/**
 * The unit of work, the same test on MariaDB and PostgreSQL (see `support/dialects.ts`); where the databases must
 * differ, the test says so and asserts each one's behaviour.
 */
import { assert, describe, expect, it as vitestIt, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import { Engine, Session, SessionError, SessionLive } from "@sessionfx/session"
import { FaultProxy } from "@sessionfx/testing"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Redacted from "effect/Redacted"
import * as Ref from "effect/Ref"
import { eventually } from "./support.js"
import { DbTag, dialects, engineOn } from "./support/dialects.js"

type Spelling = {
  readonly name: string
  readonly run: <A, E, R>(
    effect: Effect.Effect<A, E, R>
  ) => Effect.Effect<
    A,
    E | SessionError.SessionError,
    Exclude<R, Session.Session | SqlClient.SqlClient> | Engine.Engine
  >
}

/** Both spellings of a unit of work share one implementation and must agree. */
const spellings: ReadonlyArray<Spelling> = [
  { name: "Session.transact", run: (effect) => Session.transact(effect) },
  { name: "Effect.provide(SessionLive)", run: (effect) => Effect.provide(effect, SessionLive) as any }
]

const sql = SqlClient.SqlClient

const countRows = (table: string, id: number) =>
  Effect.flatMap(DbTag, (db) =>
    Effect.map(db.admin(`SELECT COUNT(*) AS n FROM ${table} WHERE id = ?`, [id]), (rows) => Number(rows[0]!.n))
  )

/** How many statements carrying `marker` the server is running now. */
const running = (marker: string) => Effect.flatMap(DbTag, (db) => db.running(marker))

/** A statement that sleeps `seconds` on the server, marked. */
const sleep = (seconds: number, marker: string) =>
  Effect.flatMap(DbTag, (db) => Effect.flatMap(sql, (s) => s.unsafe(db.sleep(seconds, marker))))

/** Adds what `effect` answers to `lines`, or the SQLSTATE it failed with. */
const record = <E, R>(lines: Ref.Ref<ReadonlyArray<string>>, effect: Effect.Effect<string, E, R>) =>
  Effect.flatMap(
    Effect.match(effect, {
      onSuccess: (line) => line,
      onFailure: (e) => `failed: ${((e as { cause?: { code?: string } }).cause ?? {}).code}`
    }),
    (line) => Ref.update(lines, (l) => [...l, line])
  )

/** Ends the unit's connection from the server's side. */
const killOwnConnection = Effect.flatMap(DbTag, (db) => Effect.flatMap(Session.connectionId, db.kill))

// ids unique per run: the suite may run against a long-lived server (MYSQL_URL)
let nextId = Math.floor(Math.random() * 1_000_000_000)
const freshId = () => ++nextId

const setup = Effect.gen(function* () {
  const s = yield* sql
  yield* s`CREATE TABLE IF NOT EXISTS items (id INT PRIMARY KEY, label VARCHAR(50) NOT NULL, qty INT NOT NULL DEFAULT 0, CONSTRAINT qty_nonneg CHECK (qty >= 0))`
  yield* s`CREATE TABLE IF NOT EXISTS children (id INT PRIMARY KEY, item_id INT NOT NULL, FOREIGN KEY (item_id) REFERENCES items(id))`
})

const insert = (id: number, label = "x") =>
  Effect.flatMap(sql, (s) => s`INSERT INTO items (id, label) VALUES (${id}, ${label})`)

for (const [name, dbLayer] of dialects) {
  layer(dbLayer, { timeout: 120_000, excludeTestServices: true })(`Session (${name})`, (it) => {
    const withEngine = <A, E, R>(effect: Effect.Effect<A, E, R>, options: Partial<Engine.EngineOptions> = {}) =>
      Effect.provide(Effect.zipRight(setup, effect), engineOn(options))

    for (const spelling of spellings) {
      it.scoped(`${spelling.name}: commits on success`, () =>
        withEngine(
          Effect.gen(function* () {
            const id = freshId()
            yield* spelling.run(insert(id))
            assert.strictEqual(yield* countRows("items", id), 1)
          })
        )
      )

      it.scoped(`${spelling.name}: rolls back on failure, defect and interruption`, () =>
        withEngine(
          Effect.gen(function* () {
            const a = freshId()
            const failed = yield* Effect.exit(spelling.run(Effect.zipRight(insert(a), Effect.fail("boom" as const))))
            assert.deepStrictEqual(failed, Exit.fail("boom"))
            assert.strictEqual(yield* countRows("items", a), 0)

            const b = freshId()
            const died = yield* Effect.exit(spelling.run(Effect.zipRight(insert(b), Effect.die("defect"))))
            assert.isTrue(Exit.isFailure(died) && !Exit.isInterrupted(died))
            assert.strictEqual(yield* countRows("items", b), 0)

            const c = freshId()
            const inserted = yield* Deferred.make<void>()
            const fiber = yield* Effect.fork(
              spelling.run(
                Effect.zipRight(insert(c), Effect.zipRight(Deferred.succeed(inserted, undefined), Effect.never))
              )
            )
            yield* Deferred.await(inserted)
            yield* Fiber.interrupt(fiber)
            assert.strictEqual(yield* countRows("items", c), 0)
            const stats = yield* Engine.stats
            assert.strictEqual(stats.inUse, 0)
          })
        )
      )

      it.scoped(`${spelling.name}: a connection killed before COMMIT is a typed error, not a defect`, () =>
        withEngine(
          Effect.gen(function* () {
            const id = freshId()
            const exit = yield* Effect.exit(spelling.run(Effect.zipRight(insert(id), killOwnConnection)))
            assert.isTrue(Exit.isFailure(exit))
            if (Exit.isSuccess(exit)) return
            assert.strictEqual(exit.cause._tag, "Fail", "a typed failure, not a defect")
            const error = (exit.cause as any).error as SessionError.SessionError
            assert.include(["ConnectionLost", "CommitOutcomeUnknown"], error._tag)
            assert.strictEqual(yield* countRows("items", id), 0)
            yield* eventually(
              Effect.map(Engine.stats, (s) => s.inUse === 0),
              "connection returned"
            )
          })
        )
      )
    }

    it.scoped("interrupting a statement running on the server stops it there and returns promptly", () =>
      withEngine(
        Effect.gen(function* () {
          const marker = `sfx-sleep-marker-${freshId()}`
          const fiber = yield* Effect.fork(Session.transact(sleep(20, marker)))
          yield* eventually(
            Effect.map(running(marker), (n) => n === 1),
            "the statement runs on the server"
          )
          const t0 = Date.now()
          yield* Fiber.interrupt(fiber)
          assert.isBelow(Date.now() - t0, 2000)
          assert.strictEqual(yield* running(marker), 0)
          yield* eventually(
            Effect.map(Engine.stats, (s) => s.inUse === 0),
            "connection returned"
          )
          // the engine goes on: the next unit works
          const id = freshId()
          yield* Session.transact(insert(id))
          assert.strictEqual(yield* countRows("items", id), 1)
        })
      )
    )

    it.scoped("an interrupted statement that outlives killGrace: its connection is destroyed and nothing hangs", () =>
      Effect.gen(function* () {
        // the statement is stopped over loopback within a millisecond: through a proxy that slows every round trip
        // down, it is sure to outlive the grace period
        const db = yield* DbTag
        const target = new URL(Redacted.value(db.url))
        const proxy = yield* FaultProxy.make({ target: { host: target.hostname, port: Number(target.port) } })
        yield* withEngine(
          Effect.gen(function* () {
            const marker = `sfx-grace-marker-${freshId()}`
            const fiber = yield* Effect.fork(Session.transact(sleep(3, marker)))
            yield* eventually(
              Effect.map(running(marker), (n) => n === 1),
              "the statement runs on the server"
            )
            yield* proxy.setLatency(300)
            const t0 = Date.now()
            yield* Fiber.interrupt(fiber)
            assert.isBelow(Date.now() - t0, 1500)
            const stats = yield* Engine.stats
            assert.strictEqual(stats.inUse, 0)
            assert.isAtLeast(stats.destroyed, 1)
            yield* proxy.setLatency(0)
            // the pool replaces it and serves the next unit
            const ok = yield* Session.transact(Effect.flatMap(sql, (s) => s<{ one: number }>`SELECT 1 AS one`))
            assert.strictEqual(Number(ok[0]!.one), 1)
          }),
          { url: proxy.urlFor(db), pool: { size: 1 }, killGrace: "50 millis" }
        )
      })
    )

    // The fiber that opened the session runs its statements without a per-statement interruption hook; whatever it
    // does next in the session after an interruption must stop the statement first. One case per place that does so.
    it.scoped("interrupted mid-statement, the unit's own fiber stops the statement before anything else it runs", () =>
      withEngine(
        Effect.gen(function* () {
          const cases: ReadonlyArray<{
            readonly name: string
            readonly unit: (
              marker: string,
              after: Ref.Ref<ReadonlyArray<string>>
            ) => Effect.Effect<unknown, unknown, any>
            readonly after: ReadonlyArray<string>
          }> = [
            {
              name: "a finalizer runs another statement (PostgreSQL: in a failed transaction)",
              unit: (marker, after) =>
                Session.transact(
                  Effect.onInterrupt(sleep(20, marker), () =>
                    record(
                      after,
                      Effect.flatMap(sql, (s) =>
                        Effect.map(s<{ one: number }>`SELECT 1 AS one`, (rows) => `statement ${Number(rows[0]!.one)}`)
                      )
                    )
                  )
                ),
              // PostgreSQL: the cancel that stopped the unit's own statement failed its transaction (the unit is
              // being interrupted and rolls back): the finalizer's statement fails with 25P02; MariaDB's KILL QUERY
              // stops the statement only
              after: name === "postgres" ? ["failed: 25P02"] : ["statement 1"]
            },
            {
              name: "inside a savepoint",
              unit: (marker) =>
                Session.transact(Effect.zipRight(insert(freshId()), Session.transact(sleep(20, marker)))),
              after: []
            },
            {
              name: "a finalizer opens a savepoint (PostgreSQL: in a failed transaction)",
              unit: (marker, after) =>
                Session.transact(
                  Effect.onInterrupt(sleep(20, marker), () =>
                    record(after, Effect.as(Session.transact(Effect.void), "savepoint"))
                  )
                ),
              after: name === "postgres" ? ["failed: 25P02"] : ["savepoint"]
            },
            {
              name: "the Layer spelling",
              unit: (marker) => Effect.provide(sleep(20, marker), SessionLive),
              after: []
            }
          ]
          for (const [i, c] of cases.entries()) {
            const marker = `sfx-owner-marker-${freshId()}-${i}`
            const after = yield* Ref.make<ReadonlyArray<string>>([])
            const fiber = yield* Effect.fork(c.unit(marker, after))
            yield* eventually(
              Effect.map(running(marker), (n) => n === 1),
              `${c.name}: the statement runs on the server`
            )
            const t0 = Date.now()
            yield* Fiber.interrupt(fiber)
            assert.isBelow(Date.now() - t0, 2000, c.name)
            assert.strictEqual(yield* running(marker), 0, `${c.name}: the statement is gone from the server`)
            assert.deepStrictEqual(yield* Ref.get(after), c.after, c.name)
            yield* eventually(
              Effect.map(Engine.stats, (s) => s.inUse === 0),
              `${c.name}: connection returned`
            )
          }
        })
      )
    )

    // guarantee 13. PostgreSQL: a cancelled statement fails the whole transaction, so statements of fibers other than
    // the unit's own run under a savepoint of their own, rolled back to when the fiber is interrupted
    // (Postgres.test.ts shows the child's own write undone)
    it.scoped("a statement interrupted in a forked fiber is stopped while its unit goes on", () =>
      withEngine(
        Effect.gen(function* () {
          const id = freshId()
          const marker = `sfx-forked-marker-${freshId()}`
          const t0 = Date.now()
          const timedOut = yield* Session.transact(
            Effect.gen(function* () {
              // Effect.timeout runs the statement in a fiber of its own and interrupts it
              const first = yield* Effect.timeout(sleep(20, marker), "300 millis").pipe(Effect.option)
              assert.strictEqual(yield* running(marker), 0)
              yield* insert(id)
              return first._tag === "None"
            })
          )
          assert.isTrue(timedOut)
          assert.isBelow(Date.now() - t0, 5000)
          assert.strictEqual(yield* countRows("items", id), 1)
        })
      )
    )

    it.scoped("isolation and read-only are what the server reports", () =>
      withEngine(
        Effect.gen(function* () {
          const db = yield* DbTag
          const level = yield* Session.transact(
            Effect.gen(function* () {
              const s = yield* sql
              yield* s`SELECT COUNT(*) FROM items`
              const rows = yield* s.unsafe<{ iso: string }>(db.isolation)
              return rows[0]?.iso
            }),
            { isolation: "SERIALIZABLE" }
          )
          assert.strictEqual(level?.toUpperCase(), "SERIALIZABLE")
          const error = yield* Effect.flip(Session.transact(insert(freshId()), { readOnly: true }))
          assert.strictEqual(error._tag, "ReadOnlyTransaction")
        })
      )
    )

    it.scoped("statementTimeout and whole-unit timeout", () =>
      withEngine(
        Effect.gen(function* () {
          const t0 = Date.now()
          const st = yield* Effect.flip(
            Session.transact(sleep(5, `st-${freshId()}`), { statementTimeout: "300 millis" })
          )
          assert.isBelow(Date.now() - t0, 4000)
          assert.strictEqual(st._tag, "StatementTimeout")
          const t1 = Date.now()
          const tt = yield* Effect.flip(Session.transact(sleep(10, `tt-${freshId()}`), { timeout: "300 millis" }))
          assert.strictEqual(tt._tag, "TransactionTimeout")
          assert.isBelow(Date.now() - t1, 2500)
        })
      )
    )

    it.scoped("concurrent sibling savepoints cannot roll back each other's work", () =>
      withEngine(
        Effect.gen(function* () {
          const ok = freshId()
          const bad = freshId()
          const ok2 = freshId()
          const bad2 = freshId()
          yield* Session.transact(
            Effect.gen(function* () {
              const s = yield* sql
              const results = yield* Effect.all(
                [
                  Effect.either(Session.savepoint(Effect.zipRight(insert(ok), Effect.yieldNow()))),
                  Effect.either(Session.savepoint(Effect.zipRight(insert(bad), Effect.fail("sibling fails" as const))))
                ],
                { concurrency: "unbounded" }
              )
              assert.strictEqual(results[0]._tag, "Right")
              assert.strictEqual(results[1]._tag, "Left")
              // @effect/sql's own spelling of nesting joins the same mechanism
              yield* Effect.all(
                [
                  Effect.either(s.withTransaction(Effect.zipRight(insert(ok2), Effect.yieldNow()))),
                  Effect.either(s.withTransaction(Effect.zipRight(insert(bad2), Effect.fail("sibling fails" as const))))
                ],
                { concurrency: "unbounded" }
              )
            })
          )
          assert.strictEqual(yield* countRows("items", ok), 1)
          assert.strictEqual(yield* countRows("items", bad), 0)
          assert.strictEqual(yield* countRows("items", ok2), 1)
          assert.strictEqual(yield* countRows("items", bad2), 0)
        })
      )
    )

    it.scoped("concurrent child fibers run their statements one at a time on the session's connection", () =>
      withEngine(
        Effect.gen(function* () {
          const db = yield* DbTag
          const ids = yield* Session.transact(
            Effect.forEach(
              Array.from({ length: 20 }, (_, i) => i),
              () => Effect.flatMap(sql, (s) => s.unsafe<{ id: number }>(db.connectionId)),
              { concurrency: "unbounded" }
            )
          )
          assert.strictEqual(new Set(ids.map((r) => Number(r[0]!.id))).size, 1)
        })
      )
    )

    it.scoped("a fiber that outlives its session gets SessionClosed, never another session's connection", () =>
      withEngine(
        Effect.gen(function* () {
          const go = yield* Deferred.make<void>()
          const [daemon, stored] = yield* Session.transact(
            Effect.gen(function* () {
              const session = yield* Session.Session
              const daemon = yield* Effect.forkDaemon(
                Effect.zipRight(
                  Deferred.await(go),
                  Effect.flatMap(sql, (s) => s`SELECT 1`)
                )
              )
              return [daemon, session] as const
            })
          )
          // another session now holds the (only) connection
          yield* Session.transact(
            Effect.gen(function* () {
              yield* Deferred.succeed(go, undefined)
              const result = yield* Fiber.await(daemon)
              assert.isTrue(Exit.isFailure(result))
              if (Exit.isFailure(result)) {
                const error = (result.cause as any).error
                assert.instanceOf(error, SqlError)
                assert.strictEqual((error.cause as SessionError.SessionError)._tag, "SessionClosed")
              }
              const viaStored = yield* Effect.flip(stored.sql`SELECT 1`)
              assert.strictEqual((viaStored.cause as SessionError.SessionError)._tag, "SessionClosed")
            })
          )
        }),
        { pool: { size: 1 } }
      )
    )

    it.scoped("a lost connection fails the unit with ConnectionLost; retry succeeds on a new connection", () =>
      withEngine(
        Effect.gen(function* () {
          const attempts = yield* Ref.make(0)
          const errors = yield* Ref.make<ReadonlyArray<string>>([])
          const id = freshId()
          yield* Session.transact(
            Effect.gen(function* () {
              const n = yield* Ref.updateAndGet(attempts, (n) => n + 1)
              yield* insert(id)
              if (n === 1) {
                yield* killOwnConnection
                yield* Effect.flatMap(sql, (s) => s`SELECT 1`).pipe(
                  Effect.tapError((e) => Ref.update(errors, (l) => [...l, SessionError.classify(e)._tag]))
                )
              }
            }),
            { retry: true }
          )
          assert.strictEqual(yield* Ref.get(attempts), 2)
          assert.deepStrictEqual(yield* Ref.get(errors), ["ConnectionLost"])
          assert.strictEqual(yield* countRows("items", id), 1)
        })
      )
    )

    it.scoped("a swallowed lost connection does not commit half a unit", () =>
      withEngine(
        Effect.gen(function* () {
          const id = freshId()
          const exit = yield* Effect.exit(
            Session.transact(
              Effect.gen(function* () {
                yield* insert(id)
                yield* killOwnConnection
                // the user swallows the failure and carries on
                yield* Effect.ignore(Effect.flatMap(sql, (s) => s`SELECT 1`))
                yield* Effect.ignore(insert(freshId()))
              })
            )
          )
          assert.isTrue(Exit.isFailure(exit))
          assert.strictEqual(yield* countRows("items", id), 0)
        })
      )
    )

    it.scoped("setRollbackOnly: the unit succeeds and nothing is kept", () =>
      withEngine(
        Effect.gen(function* () {
          const id = freshId()
          const value = yield* Session.transact(Effect.zipRight(insert(id), Effect.as(Session.setRollbackOnly, "done")))
          assert.strictEqual(value, "done")
          assert.strictEqual(yield* countRows("items", id), 0)
        })
      )
    )

    it.scoped("constraint failures are classified; a nested unit's failure is caught by tag and the unit commits", () =>
      withEngine(
        Effect.gen(function* () {
          const id = freshId()
          yield* Session.transact(insert(id))
          const dup = yield* Effect.flip(Session.transact(insert(id)))
          assert.strictEqual(dup._tag, "DuplicateKey")
          // the key as each server names it: MariaDB the index, PostgreSQL the detail's columns and values
          if (dup._tag === "DuplicateKey") assert.strictEqual(dup.key, name === "postgres" ? `id=${id}` : "PRIMARY")
          const fk = yield* Effect.flip(
            Session.transact(Effect.flatMap(sql, (s) => s`INSERT INTO children VALUES (${freshId()}, -1)`))
          )
          assert.strictEqual(fk._tag, "ForeignKeyViolation")
          const check = yield* Effect.flip(
            Session.transact(Effect.flatMap(sql, (s) => s`UPDATE items SET qty = -5 WHERE id = ${id}`))
          )
          assert.strictEqual(check._tag, "CheckViolation")
          const nn = yield* Effect.flip(
            Session.transact(Effect.flatMap(sql, (s) => s`INSERT INTO items (id, label) VALUES (${freshId()}, NULL)`))
          )
          assert.strictEqual(nn._tag, "NotNullViolation")
          assert.isFalse(SessionError.isRetryable(nn))
          // inside the unit, a failure can be caught by tag and the unit goes on: in a nested unit, whose savepoint
          // undoes the statement on both databases (a statement error caught without one: Dialects.test.ts)
          const kept = freshId()
          yield* Session.transact(
            Effect.gen(function* () {
              yield* insert(kept)
              yield* Session.transact(insert(kept)).pipe(Effect.catchTag("DuplicateKey", () => Effect.void))
            })
          )
          assert.strictEqual(yield* countRows("items", kept), 1)
        })
      )
    )

    it.scoped("the engine's client captured outside a session joins it; propagation new does not", () =>
      withEngine(
        Effect.gen(function* () {
          const captured = yield* sql // the Engine's autocommit client
          const joined = freshId()
          const separate = freshId()
          yield* Effect.exit(
            Session.transact(
              Effect.gen(function* () {
                yield* captured`INSERT INTO items (id, label) VALUES (${joined}, 'j')`
                yield* Session.transact(insert(separate), { propagation: "new" })
                return yield* Effect.fail("roll back" as const)
              })
            )
          )
          assert.strictEqual(yield* countRows("items", joined), 0)
          assert.strictEqual(yield* countRows("items", separate), 1)
        })
      )
    )

    it.scoped("Effect.provide(SessionLive) nested in a session is a savepoint too", () =>
      withEngine(
        Effect.gen(function* () {
          const outer = freshId()
          const inner = freshId()
          yield* Session.transact(
            Effect.gen(function* () {
              yield* insert(outer)
              const outerId = yield* Session.connectionId
              const innerId = yield* Effect.exit(
                Effect.provide(
                  Effect.zipRight(insert(inner), Effect.zipRight(Session.connectionId, Effect.fail("x"))),
                  SessionLive
                )
              )
              assert.isTrue(Exit.isFailure(innerId))
              assert.isNumber(outerId)
            })
          )
          assert.strictEqual(yield* countRows("items", outer), 1)
          assert.strictEqual(yield* countRows("items", inner), 0)
        })
      )
    )

    it.scoped("the transaction opens with the first statement, also when its text holds a literal '?'", () =>
      withEngine(
        Effect.gen(function* () {
          const db = yield* DbTag
          const rows = yield* Session.transact(
            Effect.gen(function* () {
              const s = yield* sql
              const first = yield* s<{ q: string; n: number }>`SELECT 'why?' AS q, ${5} AS n`
              const open = yield* db.inTransaction(yield* Session.connectionId)
              assert.isTrue(open, "a transaction is open after the first statement")
              return first
            }),
            { consistentSnapshot: true }
          )
          assert.strictEqual(rows[0]!.q, "why?")
          assert.strictEqual(Number(rows[0]!.n), 5)
          // a unit that runs no statement commits without a round trip
          const hooks = yield* Ref.make(0)
          yield* Session.transact(Session.afterCommit(Ref.update(hooks, (n) => n + 1)))
          assert.strictEqual(yield* Ref.get(hooks), 1)
        })
      )
    )

    it.scoped("engine url secrets never reach a message", () =>
      Effect.gen(function* () {
        const db = yield* DbTag
        const password = decodeURIComponent(new URL(Redacted.value(db.url)).password)
        assert.isAbove(password.length, 0)
        const error = yield* Effect.flip(
          Effect.provide(Session.transact(Effect.flatMap(sql, (s) => s`SELEC broken`)), Engine.layer({ url: db.url }))
        )
        expect(String(error.message)).not.toContain(password)
        expect(JSON.stringify(error)).not.toContain(password)
        assert.strictEqual(error._tag, "SqlError")
      })
    )
  })
}

describe("Session (types)", () => {
  vitestIt.effect("an effect that requires Session does not compile without one", () =>
    Effect.sync(() => {
      const needsSession: Effect.Effect<number, never, Session.Session> = Session.connectionId
      const runWithoutDeps = (effect: Effect.Effect<number>) => effect
      // @ts-expect-error Session is required and not provided
      const typed = () => runWithoutDeps(needsSession)
      expect(typeof typed).toBe("function")
    })
  )
})
