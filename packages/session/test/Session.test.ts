import { assert, expect, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import { Engine, Session, SessionError, SessionLive } from "@sessionfx/session"
import { FaultProxy, MysqlServer } from "@sessionfx/testing"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Redacted from "effect/Redacted"
import * as Ref from "effect/Ref"
import { admin, adminConnection, appConnection, engineLayer, eventually, ServerLive } from "./support.js"

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
  Effect.flatMap(appConnection, (conn) =>
    Effect.promise(() =>
      conn.query(`SELECT COUNT(*) AS n FROM ${table} WHERE id = ?`, [id]).then(([rows]) => Number((rows as any)[0].n))
    )
  )

// ids unique per run: the suite may run against a long-lived server (MYSQL_URL)
/** How many statements carrying `marker` the server is running now. */
const running = (conn: Parameters<typeof admin>[0], marker: string) =>
  Effect.map(
    admin(
      conn,
      "SELECT COUNT(*) AS n FROM information_schema.processlist WHERE info LIKE ? AND info NOT LIKE '%processlist%'",
      [`%${marker}%`]
    ),
    (rows) => Number(rows[0].n)
  )

let nextId = Math.floor(Math.random() * 1_000_000_000)
const freshId = () => ++nextId

const setup = Effect.gen(function* () {
  const s = yield* sql
  yield* s`CREATE TABLE IF NOT EXISTS items (id INT PRIMARY KEY, label VARCHAR(50) NOT NULL, qty INT NOT NULL DEFAULT 0, CONSTRAINT qty_nonneg CHECK (qty >= 0))`
  yield* s`CREATE TABLE IF NOT EXISTS children (id INT PRIMARY KEY, item_id INT NOT NULL, FOREIGN KEY (item_id) REFERENCES items(id))`
  yield* s`CREATE TABLE IF NOT EXISTS accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL)`
})

const insert = (id: number, label = "x") =>
  Effect.flatMap(sql, (s) => s`INSERT INTO items (id, label) VALUES (${id}, ${label})`)

layer(ServerLive, { timeout: 120_000, excludeTestServices: true })("Session", (it) => {
  const withEngine = <A, E, R>(effect: Effect.Effect<A, E, R>, options: Partial<Engine.EngineOptions> = {}) =>
    Effect.provide(Effect.zipRight(setup, effect), engineLayer(options))

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
          const conn = yield* adminConnection
          const id = freshId()
          const exit = yield* Effect.exit(
            spelling.run(
              Effect.gen(function* () {
                yield* insert(id)
                const connId = yield* Session.connectionId
                yield* admin(conn, `KILL CONNECTION ${connId}`)
              })
            )
          )
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
        const conn = yield* adminConnection
        const fiber = yield* Effect.fork(
          Session.transact(Effect.flatMap(sql, (s) => s`SELECT SLEEP(20) AS slept /* sfx-sleep-marker */`))
        )
        yield* eventually(
          Effect.map(running(conn, "sfx-sleep-marker"), (n) => n === 1),
          "the statement runs on the server"
        )
        const t0 = Date.now()
        yield* Fiber.interrupt(fiber)
        assert.isBelow(Date.now() - t0, 2000)
        assert.strictEqual(yield* running(conn, "sfx-sleep-marker"), 0)
        yield* eventually(
          Effect.map(Engine.stats, (s) => s.inUse === 0),
          "connection returned"
        )
      })
    )
  )

  it.scoped("an interrupted statement that outlives killGrace: its connection is destroyed and nothing hangs", () =>
    Effect.gen(function* () {
      // KILL QUERY over loopback can land within a millisecond: through a proxy that slows every round trip down,
      // the statement is sure to outlive the grace period
      const server = yield* MysqlServer.MysqlServer
      const proxy = yield* FaultProxy.make({ target: { host: server.host, port: server.port } })
      yield* withEngine(
        Effect.gen(function* () {
          const conn = yield* adminConnection
          const fiber = yield* Effect.fork(
            Session.transact(Effect.flatMap(sql, (s) => s`SELECT SLEEP(3) AS slept /* sfx-grace-marker */`))
          )
          yield* eventually(
            Effect.map(running(conn, "sfx-grace-marker"), (n) => n === 1),
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
        { url: proxy.urlFor(server), pool: { size: 1 }, killGrace: "50 millis" }
      )
    })
  )

  // The fiber that opened the session runs its statements without a per-statement interruption hook; whatever it
  // does next in the session after an interruption must stop the statement first. One case per place that does so.
  it.scoped("interrupted mid-statement, the unit's own fiber stops the statement before anything else it runs", () =>
    withEngine(
      Effect.gen(function* () {
        const conn = yield* adminConnection
        const sleep = (marker: string) =>
          Effect.flatMap(sql, (s) => s.unsafe(`SELECT SLEEP(20) AS slept /* ${marker} */`))
        const cases: ReadonlyArray<{
          readonly name: string
          readonly unit: (marker: string, after: Ref.Ref<ReadonlyArray<string>>) => Effect.Effect<unknown, unknown, any>
          readonly after: ReadonlyArray<string>
        }> = [
          {
            name: "a finalizer runs another statement",
            unit: (marker, after) =>
              Session.transact(
                Effect.onInterrupt(sleep(marker), () =>
                  Effect.flatMap(sql, (s) => s<{ one: number }>`SELECT 1 AS one`).pipe(
                    Effect.flatMap((rows) => Ref.update(after, (l) => [...l, `statement ${Number(rows[0]!.one)}`])),
                    Effect.orDie
                  )
                )
              ),
            after: ["statement 1"]
          },
          {
            name: "inside a savepoint",
            unit: (marker) => Session.transact(Effect.zipRight(insert(freshId()), Session.transact(sleep(marker)))),
            after: []
          },
          {
            name: "a finalizer opens a savepoint",
            unit: (marker, after) =>
              Session.transact(
                Effect.onInterrupt(sleep(marker), () =>
                  Session.transact(Ref.update(after, (l) => [...l, "savepoint"])).pipe(Effect.orDie)
                )
              ),
            after: ["savepoint"]
          },
          {
            name: "the Layer spelling",
            unit: (marker) => Effect.provide(sleep(marker), SessionLive),
            after: []
          }
        ]
        for (const [i, c] of cases.entries()) {
          const marker = `sfx-owner-marker-${i}`
          const after = yield* Ref.make<ReadonlyArray<string>>([])
          const fiber = yield* Effect.fork(c.unit(marker, after))
          yield* eventually(
            Effect.map(running(conn, marker), (n) => n === 1),
            `${c.name}: the statement runs on the server`
          )
          const t0 = Date.now()
          yield* Fiber.interrupt(fiber)
          assert.isBelow(Date.now() - t0, 2000, c.name)
          assert.strictEqual(yield* running(conn, marker), 0, `${c.name}: the statement is gone from the server`)
          assert.deepStrictEqual(yield* Ref.get(after), c.after, c.name)
          yield* eventually(
            Effect.map(Engine.stats, (s) => s.inUse === 0),
            `${c.name}: connection returned`
          )
        }
      })
    )
  )

  it.scoped("a statement interrupted in a forked fiber is stopped while its unit goes on", () =>
    withEngine(
      Effect.gen(function* () {
        const conn = yield* adminConnection
        const id = freshId()
        const t0 = Date.now()
        const timedOut = yield* Session.transact(
          Effect.gen(function* () {
            const s = yield* sql
            // Effect.timeout runs the statement in a fiber of its own and interrupts it
            const first = yield* Effect.timeout(
              s`SELECT SLEEP(20) AS slept /* sfx-forked-marker */`,
              "300 millis"
            ).pipe(Effect.option)
            assert.strictEqual(yield* running(conn, "sfx-forked-marker"), 0)
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
        const conn = yield* adminConnection
        const level = yield* Session.transact(
          Effect.gen(function* () {
            const s = yield* sql
            yield* s`SELECT COUNT(*) FROM items FOR UPDATE`
            const id = yield* Session.connectionId
            const rows = yield* admin(
              conn,
              `SELECT trx_isolation_level AS l FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = ${id}`
            )
            return rows[0]?.l
          }),
          { isolation: "SERIALIZABLE" }
        )
        assert.strictEqual(level, "SERIALIZABLE")
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
          Session.transact(
            Effect.flatMap(sql, (s) => s`SELECT SLEEP(5)`),
            {
              statementTimeout: "300 millis"
            }
          )
        )
        assert.isBelow(Date.now() - t0, 4000)
        assert.strictEqual(st._tag, "StatementTimeout")
        const t1 = Date.now()
        const tt = yield* Effect.flip(
          Session.transact(
            Effect.flatMap(sql, (s) => s`SELECT SLEEP(10)`),
            { timeout: "300 millis" }
          )
        )
        assert.strictEqual(tt._tag, "TransactionTimeout")
        assert.isBelow(Date.now() - t1, 2500)
      })
    )
  )

  it.scoped("a deadlock between two sessions: one is retried, both commit, afterCommit runs once each", () =>
    withEngine(
      Effect.gen(function* () {
        const s = yield* sql
        yield* s`DELETE FROM accounts`
        yield* s`INSERT INTO accounts VALUES (1, 100), (2, 100)`
        const aLocked = yield* Deferred.make<void>()
        const bLocked = yield* Deferred.make<void>()
        const attempts = yield* Ref.make(0)
        const hooks = yield* Ref.make(0)
        const unit = (first: number, second: number, mine: Deferred.Deferred<void>, theirs: Deferred.Deferred<void>) =>
          Session.transact(
            Effect.gen(function* () {
              const s = yield* sql
              yield* Ref.update(attempts, (n) => n + 1)
              yield* Session.afterCommit(Ref.update(hooks, (n) => n + 1))
              yield* s`SELECT balance FROM accounts WHERE id = ${first} FOR UPDATE`
              yield* Deferred.succeed(mine, undefined)
              yield* Deferred.await(theirs)
              yield* s`UPDATE accounts SET balance = balance - 10 WHERE id = ${second}`
              yield* s`UPDATE accounts SET balance = balance + 10 WHERE id = ${first}`
            }),
            { retry: true }
          )
        yield* Effect.all([unit(1, 2, aLocked, bLocked), unit(2, 1, bLocked, aLocked)], { concurrency: 2 })
        assert.isAtLeast(yield* Ref.get(attempts), 3)
        assert.strictEqual(yield* Ref.get(hooks), 2)
        const rows = yield* s<{ total: number }>`SELECT SUM(balance) AS total FROM accounts`
        assert.strictEqual(Number(rows[0]!.total), 200)
      }),
      { lockWaitTimeout: "10 seconds" }
    )
  )

  it.scoped("afterCommit never runs on rollback", () =>
    withEngine(
      Effect.gen(function* () {
        const hooks = yield* Ref.make(0)
        yield* Effect.exit(
          Session.transact(Effect.zipRight(Session.afterCommit(Ref.update(hooks, (n) => n + 1)), Effect.fail("no")))
        )
        assert.strictEqual(yield* Ref.get(hooks), 0)
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
        const ids = yield* Session.transact(
          Effect.forEach(
            Array.from({ length: 20 }, (_, i) => i),
            () => Effect.flatMap(sql, (s) => s<{ id: number }>`SELECT CONNECTION_ID() AS id`),
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
        const conn = yield* adminConnection
        const attempts = yield* Ref.make(0)
        const id = freshId()
        yield* Session.transact(
          Effect.gen(function* () {
            const n = yield* Ref.updateAndGet(attempts, (n) => n + 1)
            yield* insert(id)
            if (n === 1) {
              yield* admin(conn, `KILL CONNECTION ${yield* Session.connectionId}`)
              yield* Effect.flatMap(sql, (s) => s`SELECT 1`)
            }
          }),
          { retry: true }
        )
        assert.strictEqual(yield* Ref.get(attempts), 2)
        assert.strictEqual(yield* countRows("items", id), 1)
      })
    )
  )

  it.scoped("a swallowed deadlock does not commit half a unit", () =>
    withEngine(
      Effect.gen(function* () {
        const conn = yield* adminConnection
        const id = freshId()
        const exit = yield* Effect.exit(
          Session.transact(
            Effect.gen(function* () {
              yield* insert(id)
              yield* admin(conn, `KILL CONNECTION ${yield* Session.connectionId}`)
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

  it.scoped("constraint failures are classified", () =>
    withEngine(
      Effect.gen(function* () {
        const id = freshId()
        yield* Session.transact(insert(id))
        const dup = yield* Effect.flip(Session.transact(insert(id)))
        assert.strictEqual(dup._tag, "DuplicateKey")
        if (dup._tag === "DuplicateKey") assert.strictEqual(dup.key, "PRIMARY")
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
        // inside the unit, a statement-level failure can be caught by tag and the unit goes on
        const kept = freshId()
        yield* Session.transact(
          Effect.gen(function* () {
            yield* insert(kept)
            yield* insert(kept).pipe(
              Effect.mapError((e) => SessionError.classify(e)),
              Effect.catchTag("DuplicateKey", () => Effect.void)
            )
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

  it.scoped("nested transact is a savepoint: its failure does not abort the outer unit", () =>
    withEngine(
      Effect.gen(function* () {
        const outer = freshId()
        const inner = freshId()
        yield* Session.transact(
          Effect.gen(function* () {
            yield* insert(outer)
            yield* Effect.ignore(Session.transact(Effect.zipRight(insert(inner), Effect.fail("inner"))))
          })
        )
        assert.strictEqual(yield* countRows("items", outer), 1)
        assert.strictEqual(yield* countRows("items", inner), 0)
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
        const conn = yield* adminConnection
        const rows = yield* Session.transact(
          Effect.gen(function* () {
            const s = yield* sql
            const first = yield* s<{ q: string; n: number }>`SELECT 'why?' AS q, ${5} AS n`
            const trx = yield* admin(
              conn,
              `SELECT COUNT(*) AS n FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = ${yield* Session.connectionId}`
            )
            assert.strictEqual(Number(trx[0].n), 1, "a transaction is open after the first statement")
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

  it.effect("an effect that requires Session does not compile without one", () =>
    Effect.sync(() => {
      const needsSession: Effect.Effect<number, never, Session.Session> = Session.connectionId
      const runWithoutDeps = (effect: Effect.Effect<number>) => effect
      // @ts-expect-error Session is required and not provided
      const typed = () => runWithoutDeps(needsSession)
      expect(typeof typed).toBe("function")
    })
  )

  it.scoped("engine url secrets never reach a message", () =>
    Effect.gen(function* () {
      const server = yield* MysqlServer.MysqlServer
      const password = Redacted.value(server.password)
      const error = yield* Effect.flip(
        Effect.provide(Session.transact(Effect.flatMap(sql, (s) => s`SELEC broken`)), Engine.layer({ url: server.url }))
      )
      expect(String(error.message)).not.toContain(password)
      expect(JSON.stringify(error)).not.toContain(password)
      assert.strictEqual(error._tag, "SqlError")
    })
  )
})
