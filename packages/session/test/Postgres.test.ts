/**
 * What only PostgreSQL has, or has its own way (the guarantees both databases share are in Dialects.test.ts): the
 * url's scheme choosing the driver, SQLSTATE classes (40001 under SERIALIZABLE, lock_timeout, statement_timeout),
 * per-unit settings, a failed transaction (25P02), exact integers, `@effect/sql-pg`-style statements, and what is
 * not supported yet (replicas) refused with a typed error.
 */
import { assert, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine, Session, SessionError } from "@sessionfx/session"
import { FaultProxy, PgServer, SessionTest } from "@sessionfx/testing"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Ref from "effect/Ref"
import * as Stream from "effect/Stream"
import { eventually } from "./support.js"

const sql = SqlClient.SqlClient

const EngineLive = Layer.unwrapEffect(
  Effect.map(PgServer.PgServer, (server) => Engine.layer({ url: server.url, pool: { size: 4 } }))
)

let nextId = Math.floor(Math.random() * 1_000_000)
const freshId = () => ++nextId

const buildError = (options: Engine.EngineOptions) =>
  Effect.flatMap(Effect.flip(Effect.scoped(Layer.build(Engine.layer(options)))), (e) => Effect.succeed(e))

layer(Layer.provideMerge(EngineLive, PgServer.layer()), { timeout: 120_000, excludeTestServices: true })(
  "PostgreSQL",
  (it) => {
    it.effect("setup", () =>
      Effect.gen(function* () {
        const s = yield* sql
        yield* s`CREATE TABLE IF NOT EXISTS acct (id INT PRIMARY KEY, balance BIGINT NOT NULL)`
      })
    )

    it.effect("a postgres:// url chooses the PostgreSQL driver; postgresql:// too", () =>
      Effect.gen(function* () {
        const engine = yield* Engine.Engine
        assert.strictEqual(engine.flavor, "postgresql")
        assert.match(engine.serverVersion, /PostgreSQL 1\d/)
        const server = yield* PgServer.PgServer
        const other = Redacted.value(server.url).replace(/^postgres:/, "postgresql:")
        const rows = yield* Effect.scoped(
          Effect.flatMap(Layer.build(Engine.layer({ url: other })), (ctx) =>
            Effect.provide(
              Effect.flatMap(sql, (s) => s<{ n: number }>`SELECT 1 AS n`),
              ctx
            )
          )
        )
        assert.deepStrictEqual(rows, [{ n: 1 }])
      })
    )

    it.effect("?host= names a unix socket's directory, as libpq does", () =>
      Effect.gen(function* () {
        const server = yield* PgServer.PgServer
        if (Option.isNone(server.socketDir)) return assert.fail("the embedded server has a socket directory")
        const url = `postgres://${server.username}:${encodeURIComponent(Redacted.value(server.password))}@localhost:${server.port}/${server.database}?host=${encodeURIComponent(server.socketDir.value)}`
        const rows = yield* Effect.scoped(
          Effect.flatMap(Layer.build(Engine.layer({ url })), (ctx) =>
            Effect.provide(
              Effect.flatMap(sql, (s) => s<{ addr: string | null }>`SELECT inet_client_addr()::text AS addr`),
              ctx
            )
          )
        )
        // a unix-socket client has no address
        assert.deepStrictEqual(rows, [{ addr: null }])
      })
    )

    it.effect("an unknown scheme is a typed error that lists the schemes; replicas are refused by name", () =>
      Effect.gen(function* () {
        const e = yield* buildError({ url: "oracle://u:hunter2pw@localhost/db" })
        assert.strictEqual(e._tag, "ConnectionError")
        assert.include(e.message, "postgres://")
        assert.include(e.message, "mysql://")
        assert.notInclude(e.message, "hunter2pw")
        const server = yield* PgServer.PgServer
        const replicas = yield* buildError({ url: server.url, replicas: [server.url] })
        assert.strictEqual(replicas._tag, "InvalidOption")
        assert.include(replicas.message, "PostgreSQL")
      })
    )

    it.effect("placeholders are $n and identifiers double-quoted, as @effect/sql-pg compiles them", () =>
      Effect.gen(function* () {
        const s = yield* sql
        const id = freshId()
        const inserted = yield* Session.transact(
          s<{ id: number; balance: string }>`INSERT INTO ${s("acct")} ${s.insert({ id, balance: 5 })} RETURNING *`
        )
        assert.deepStrictEqual(inserted, [{ id, balance: "5" }])
        const [compiled] = s`SELECT * FROM ${s("acct")} WHERE id IN ${s.in([1, 2])} AND balance = ${3}`.compile()
        assert.strictEqual(compiled, `SELECT * FROM "acct" WHERE id IN ($1,$2) AND balance = $3`)
        const updated = yield* Session.transact(
          s<{
            id: number
          }>`UPDATE acct SET balance = data.balance::bigint FROM ${s.updateValues([{ id, balance: 7 }], "data")} WHERE acct.id = data.id::int RETURNING acct.id`
        )
        // values are sent untyped (text), as @effect/sql-pg sends numbers: a VALUES list's columns are text until cast
        assert.deepStrictEqual(updated, [{ id }])
      })
    )

    it.effect(
      "integers are exact (no double), what cannot be sent exactly is a BindError before anything is sent",
      () =>
        Effect.gen(function* () {
          const s = yield* sql
          const big = 2n ** 62n + 1n
          const rows = yield* Session.transact(s<{ n: string }>`SELECT ${big}::bigint + 1 AS n`)
          assert.strictEqual(rows[0]!.n, String(big + 1n))
          const error = yield* Effect.flip(Session.transact(s`SELECT ${2 ** 60}::bigint AS n`))
          assert.include(String(error.message), "cannot be sent exactly")
        })
    )

    it.effect("SERIALIZABLE: a serialization failure (40001) is retried with retry: true", () =>
      Effect.gen(function* () {
        const a = freshId()
        const b = freshId()
        const s = yield* sql
        yield* s`INSERT INTO acct (id, balance) VALUES (${a}, 100), (${b}, 100)`
        const bothRead = yield* Deferred.make<void>()
        const readers = yield* Ref.make(0)
        const attempts = yield* Ref.make(0)
        const hooks = yield* Ref.make(0)
        // write skew: each reads both rows, waits until the other has read, then writes one
        const unit = (mine: number) =>
          Session.transact(
            Effect.gen(function* () {
              const n = yield* Ref.updateAndGet(attempts, (k) => k + 1)
              yield* s`SELECT SUM(balance) FROM acct WHERE id IN (${a}, ${b})`
              if (n <= 2) {
                if ((yield* Ref.updateAndGet(readers, (k) => k + 1)) === 2) yield* Deferred.succeed(bothRead, undefined)
                yield* Deferred.await(bothRead)
              }
              yield* s`UPDATE acct SET balance = balance - 10 WHERE id = ${mine}`
              yield* Session.afterCommit(Ref.update(hooks, (k) => k + 1))
            }),
            { isolation: "SERIALIZABLE", retry: true }
          )
        yield* Effect.all([unit(a), unit(b)], { concurrency: 2 })
        assert.isAtLeast(yield* Ref.get(attempts), 3)
        assert.strictEqual(yield* Ref.get(hooks), 2)
        const rows = yield* s<{ total: string }>`SELECT SUM(balance) AS total FROM acct WHERE id IN (${a}, ${b})`
        assert.strictEqual(rows[0]!.total, "180")
      })
    )

    it.effect("lock_timeout and statement_timeout per unit: typed errors, settings gone with the unit", () =>
      Effect.gen(function* () {
        const id = freshId()
        const s = yield* sql
        yield* s`INSERT INTO acct (id, balance) VALUES (${id}, 1)`
        const locked = yield* Deferred.make<void>()
        const release = yield* Deferred.make<void>()
        const holder = yield* Effect.fork(
          Session.transact(
            Effect.zipRight(
              Effect.zipRight(s`SELECT * FROM acct WHERE id = ${id} FOR UPDATE`, Deferred.succeed(locked, undefined)),
              Deferred.await(release)
            )
          )
        )
        yield* Deferred.await(locked)
        const waited = yield* Effect.flip(
          Session.transact(s`UPDATE acct SET balance = 2 WHERE id = ${id}`, { lockWaitTimeout: "200 millis" })
        )
        assert.strictEqual(waited._tag, "LockWaitTimeout")
        yield* Deferred.succeed(release, undefined)
        yield* holder.await
        const slow = yield* Effect.flip(Session.transact(s`SELECT pg_sleep(5)`, { statementTimeout: "100 millis" }))
        assert.strictEqual(slow._tag, "StatementTimeout")
        // the next unit runs with the server's settings again
        const settings = yield* Session.transact(
          s<{
            lt: string
            st: string
          }>`SELECT current_setting('lock_timeout') AS lt, current_setting('statement_timeout') AS st`
        )
        assert.deepStrictEqual(settings, [{ lt: "0", st: "0" }])
      })
    )

    it.effect("a nested unit's settings survive the rollback that undoes its SET on the server", () =>
      Effect.gen(function* () {
        const server = yield* PgServer.PgServer
        const one = yield* Layer.build(Engine.layer({ url: server.url, pool: { size: 1 } }))
        const run = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.provide(effect, one)
        const lockTimeout = Effect.map(
          Effect.flatMap(sql, (s) => s<{ lt: string }>`SELECT current_setting('lock_timeout') AS lt`),
          (rows) => rows[0]!.lt
        )
        for (const undo of ["rollback", "rollbackTo"] as const) {
          // PostgreSQL undoes a SET made inside a transaction (or savepoint) that rolls back
          yield* run(
            Effect.exit(
              Session.transact(
                Effect.zipRight(
                  Effect.exit(
                    Session.transact(Effect.zipRight(lockTimeout, Effect.fail("inner")), {
                      lockWaitTimeout: "300 millis"
                    })
                  ),
                  undo === "rollback" ? Effect.fail("outer") : Effect.void
                )
              )
            )
          )
          // (a unit's lock wait is set in whole seconds, rounded up, as on MariaDB)
          assert.strictEqual(yield* run(Session.transact(lockTimeout, { lockWaitTimeout: "300 millis" })), "1s")
          assert.strictEqual(yield* run(Session.transact(lockTimeout)), "0")
        }
      }).pipe(Effect.scoped)
    )

    it.effect("a cancel never reaches the next statement on the connection (pool of one)", () =>
      Effect.gen(function* () {
        const server = yield* PgServer.PgServer
        const one = yield* Layer.build(Engine.layer({ url: server.url, pool: { size: 1 } }))
        const s = Context.get(one, SqlClient.SqlClient)
        const admin = yield* Layer.build(Engine.layer({ url: server.admin.url, pool: { size: 1 } }))
        const a = Context.get(admin, SqlClient.SqlClient)
        // the admin engine's own client, outside any unit
        const running = (marker: string) =>
          Effect.map(
            a<{
              n: string
            }>`SELECT count(*) AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE ${`%${marker}%`} AND query NOT LIKE '%pg_stat_activity%'`,
            (rows) => Number(rows[0]!.n)
          )
        for (let round = 0; round < 5; round++) {
          const marker = `cancel_${freshId()}`
          const fiber = yield* Effect.fork(
            Effect.provide(Session.transact(s.unsafe(`SELECT pg_sleep(30) /* ${marker} */`)), one)
          )
          yield* eventually(
            Effect.map(running(marker), (n) => n === 1),
            "the sleep runs"
          )
          yield* Fiber.interrupt(fiber)
          // at once, on the same (only) connection: none of these is cancelled
          for (let i = 0; i < 10; i++) {
            const rows = yield* Effect.provide(Session.transact(s<{ n: number }>`SELECT ${i}::int AS n`), one)
            assert.deepStrictEqual(rows, [{ n: i }])
          }
        }
      }).pipe(Effect.scoped)
    )

    it.effect("COMMIT whose reply is lost: outcome unknown; a keyed unit learns it from its key, exactly once", () =>
      Effect.gen(function* () {
        const server = yield* PgServer.PgServer
        const proxy = yield* FaultProxy.make({ target: { host: server.host, port: server.port } })
        const engine = yield* Layer.build(
          Engine.layer({
            url: proxy.urlFor(server),
            pool: { size: 2 },
            commitTimeout: "2 seconds",
            killGrace: "500 millis"
          })
        )
        const s = Context.get(engine, SqlClient.SqlClient)
        const run = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.provide(effect, engine)
        yield* run(Session.createKeyTable)
        yield* run(s`CREATE TABLE IF NOT EXISTS acct (id INT PRIMARY KEY, balance BIGINT NOT NULL)`)
        const rowsOf = (id: number) =>
          Effect.map(run(s<{ n: string }>`SELECT count(*) AS n FROM acct WHERE id = ${id}`), (r) => Number(r[0]!.n))
        // the extended protocol's Parse message of sessionfx's COMMIT (a unit's COMMIT on the wire)
        const isCommit = (chunk: Buffer) => chunk[0] === 0x50 && chunk.includes("\0COMMIT\0", 0, "latin1")
        const unit = (id: number, key?: string) =>
          run(Session.transact(s`INSERT INTO acct (id, balance) VALUES (${id}, 1)`, key === undefined ? {} : { key }))

        // delivered, the reply lost: committed on the server
        const delivered = freshId()
        yield* proxy.resetNextAfter({ match: isCommit, forward: true })
        const unknown = yield* Effect.flip(unit(delivered))
        assert.strictEqual(unknown._tag, "CommitOutcomeUnknown")
        assert.strictEqual(yield* rowsOf(delivered), 1)

        // keyed, delivered: the key says committed, the unit succeeds; a retry is not applied again
        const key = `lost-${freshId()}`
        const keyed = freshId()
        yield* proxy.resetNextAfter({ match: isCommit, forward: true })
        yield* unit(keyed, key)
        assert.strictEqual(yield* run(Session.outcome(key)), "committed")
        assert.strictEqual((yield* Effect.flip(unit(freshId(), key)))._tag, "AlreadyApplied")
        assert.strictEqual(yield* rowsOf(keyed), 1)

        // keyed, dropped before the server saw it: nothing applied, a retryable ConnectionLost, then applied once
        const key2 = `lost-${freshId()}`
        const dropped = freshId()
        yield* proxy.resetNextAfter({ match: isCommit, forward: false })
        const lost = yield* Effect.flip(unit(dropped, key2))
        assert.strictEqual(lost._tag, "ConnectionLost")
        assert.strictEqual(yield* run(Session.outcome(key2)), "absent")
        assert.strictEqual(yield* rowsOf(dropped), 0)
        yield* unit(dropped, key2)
        assert.strictEqual(yield* rowsOf(dropped), 1)
      }).pipe(Effect.scoped)
    )

    it.effect("SessionTest on PostgreSQL: the test's writes are visible inside, rolled back after", () =>
      Effect.gen(function* () {
        const s = yield* sql
        const id = freshId()
        const inside = yield* Effect.provide(
          Effect.zipRight(
            // a nested unit inside the test session: a savepoint, still rolled back at the end
            Session.transact(s`INSERT INTO acct (id, balance) VALUES (${id}, 1)`),
            s<{ n: string }>`SELECT count(*) AS n FROM acct WHERE id = ${id}`
          ),
          SessionTest.SessionTest
        )
        assert.strictEqual(inside[0]!.n, "1")
        const after = yield* s<{ n: string }>`SELECT count(*) AS n FROM acct WHERE id = ${id}`
        assert.strictEqual(after[0]!.n, "0")
      })
    )

    it.effect("a stream that fails midway fails the consumer; a slow consumer is interrupted mid-stream", () =>
      Effect.gen(function* () {
        const s = yield* sql
        // rows 1..999 arrive, then division by zero: the unit rolls back with that error
        const failed = yield* Effect.flip(
          Session.transact(Stream.runCount(s`SELECT 1 / (n - 1000) AS x FROM generate_series(1, 5000) AS n`.stream))
        )
        assert.include(String(failed.message), "division by zero")
        // a consumer that stops between batches (paused, no read pending), interrupted by a timeout
        const slow = yield* Effect.exit(
          Session.transact(
            Stream.runDrain(
              Stream.tap(s`SELECT n FROM generate_series(1, 1000000) AS n`.stream, () => Effect.sleep("10 millis"))
            ).pipe(Effect.timeout("300 millis"))
          )
        )
        assert.isTrue(Exit.isFailure(slow))
        // the pool is fine afterwards
        const rows = yield* Session.transact(s<{ n: number }>`SELECT 1::int AS n`)
        assert.deepStrictEqual(rows, [{ n: 1 }])
      })
    )

    it.effect("idle_in_transaction_session_timeout ends the unit's connection: ConnectionLost, retried", () =>
      Effect.gen(function* () {
        const s = yield* sql
        const server = yield* PgServer.PgServer
        const admin = yield* Layer.build(Engine.layer({ url: server.admin.url, pool: { size: 1 } }))
        const a = Context.get(admin, SqlClient.SqlClient)
        const alive = (pid: number) =>
          Effect.map(
            a<{ n: string }>`SELECT count(*) AS n FROM pg_stat_activity WHERE pid = ${pid}`,
            (r) => r[0]!.n === "1"
          )
        const id = freshId()
        const attempts = yield* Ref.make(0)
        yield* Session.transact(
          Effect.gen(function* () {
            if ((yield* Ref.updateAndGet(attempts, (n) => n + 1)) === 1) {
              yield* s`SET LOCAL idle_in_transaction_session_timeout = '100ms'`
              const pid = yield* Session.connectionId
              // the server ends the backend once the transaction has been idle that long
              yield* eventually(
                Effect.map(alive(pid), (up) => !up),
                "the server ends the idle transaction's backend"
              )
            }
            yield* s`INSERT INTO acct (id, balance) VALUES (${id}, 1)`
          }),
          { retry: true }
        )
        assert.strictEqual(yield* Ref.get(attempts), 2)
        const rows = yield* s<{ n: string }>`SELECT count(*) AS n FROM acct WHERE id = ${id}`
        assert.strictEqual(rows[0]!.n, "1")
      }).pipe(Effect.scoped)
    )

    it.effect("isolation, READ ONLY and consistentSnapshot as the server reports them inside the unit", () =>
      Effect.gen(function* () {
        const s = yield* sql
        const mode = s<{
          iso: string
          ro: string
        }>`SELECT current_setting('transaction_isolation') AS iso, current_setting('transaction_read_only') AS ro`
        assert.deepStrictEqual(yield* Session.transact(mode), [{ iso: "read committed", ro: "off" }])
        assert.deepStrictEqual(yield* Session.transact(mode, { isolation: "SERIALIZABLE" }), [
          { iso: "serializable", ro: "off" }
        ])
        assert.deepStrictEqual(yield* Session.transact(mode, { readOnly: true }), [{ iso: "read committed", ro: "on" }])
        assert.deepStrictEqual(yield* Session.transact(mode, { consistentSnapshot: true }), [
          { iso: "repeatable read", ro: "on" }
        ])
        // and back to the server's default for the next unit
        assert.deepStrictEqual(yield* Session.transact(mode), [{ iso: "read committed", ro: "off" }])
      })
    )

    it.effect("streams stopped early, many times in one unit: the unit's transaction survives and commits", () =>
      Effect.gen(function* () {
        const s = yield* sql
        const id = freshId()
        const taken = yield* Session.transact(
          Effect.gen(function* () {
            yield* s`INSERT INTO acct (id, balance) VALUES (${id}, 1)`
            let total = 0
            for (let i = 0; i < 30; i++) {
              // a lazy set-returning function: the server computes rows as they are fetched, so the core's cancel
              // can land while a batch is being computed (the stream's own savepoint then undoes only the stream)
              const rows = yield* Stream.runCollect(
                Stream.take(
                  s.unsafe<{ n: number }>("SELECT generate_series(1, 50000000) AS n").stream,
                  1 + (i % 7) * 300
                )
              )
              total += rows.length
            }
            const [row] = yield* s<{ balance: string }>`SELECT balance FROM acct WHERE id = ${id}`
            assert.strictEqual(row!.balance, "1")
            return total
          })
        )
        assert.isAbove(taken, 30)
        const rows = yield* s<{ n: string }>`SELECT count(*) AS n FROM acct WHERE id = ${id}`
        assert.strictEqual(rows[0]!.n, "1")
      })
    )

    it.effect(
      "a statement interrupted in a forked fiber is stopped and undone alone: the unit goes on and commits (guarantee 13)",
      () =>
        Effect.gen(function* () {
          const s = yield* sql
          const id = freshId()
          const marker = `child_${freshId()}`
          const server = yield* PgServer.PgServer
          const admin = yield* Layer.build(Engine.layer({ url: server.admin.url, pool: { size: 1 } }))
          const a = Context.get(admin, SqlClient.SqlClient)
          const running = a<{
            n: string
          }>`SELECT count(*) AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE ${`%${marker}%`} AND query NOT LIKE '%pg_stat_activity%'`
          yield* Session.transact(
            Effect.gen(function* () {
              yield* s`INSERT INTO acct (id, balance) VALUES (${id}, 1)`
              // the child's own write, then its sleep: interrupting it undoes both (its statement is one text)
              const child = yield* Effect.fork(
                s.unsafe(
                  `WITH w AS (UPDATE acct SET balance = 100 WHERE id = ${id} RETURNING 1) SELECT pg_sleep(30) FROM w /* ${marker} */`
                )
              )
              yield* eventually(
                Effect.map(running, (r) => r[0]!.n === "1"),
                "the child's statement runs"
              )
              yield* Fiber.interrupt(child)
              assert.strictEqual((yield* running)[0]!.n, "0")
              // MariaDB: KILL QUERY stops that statement only; PostgreSQL: the statement ran under a savepoint of
              // its own, rolled back to: the transaction is not failed and the unit goes on
              yield* s`UPDATE acct SET balance = balance + 1 WHERE id = ${id}`
            })
          )
          const rows = yield* s<{ balance: string }>`SELECT balance FROM acct WHERE id = ${id}`
          assert.strictEqual(rows[0]!.balance, "2")
        }).pipe(Effect.scoped)
    )

    it.effect(
      "a statement of a forked fiber that fails on its own fails the transaction, as any failed statement",
      () =>
        Effect.gen(function* () {
          const s = yield* sql
          const id = freshId()
          const exit = yield* Effect.exit(
            Session.transact(
              Effect.gen(function* () {
                yield* s`INSERT INTO acct (id, balance) VALUES (${id}, 1)`
                const failed = yield* Effect.fork(s`INSERT INTO acct (id, balance) VALUES (${id}, 1)`).pipe(
                  Effect.flatMap(Fiber.join),
                  Effect.flip
                )
                assert.strictEqual(failed._tag, "SqlError")
                yield* s`UPDATE acct SET balance = 2 WHERE id = ${id}`
              })
            )
          )
          assert.isTrue(Exit.isFailure(exit))
          const rows = yield* s<{ n: string }>`SELECT count(*) AS n FROM acct WHERE id = ${id}`
          assert.strictEqual(rows[0]!.n, "0")
        })
    )

    it.effect("statements of concurrent forked fibers each run under their own savepoint and all commit", () =>
      Effect.gen(function* () {
        const s = yield* sql
        const base = freshId() * 100
        const ids = Array.from({ length: 12 }, (_, k) => base + k)
        yield* Session.transact(
          Effect.forEach(ids, (id) => s`INSERT INTO acct (id, balance) VALUES (${id}, ${id})`, { concurrency: 4 })
        )
        const rows = yield* s<{
          n: string
          total: string
        }>`SELECT count(*) AS n, sum(balance) AS total FROM acct WHERE id >= ${base} AND id < ${base + 12}`
        assert.strictEqual(rows[0]!.n, "12")
        assert.strictEqual(rows[0]!.total, String(ids.reduce((a, b) => a + b, 0)))
      })
    )

    it.effect("Session.keyTableDdlPostgres is the table createKeyTable makes: keyed units run on it", () =>
      Effect.gen(function* () {
        const s = yield* sql
        yield* s`DROP TABLE IF EXISTS sessionfx_unit_keys`
        yield* s.unsafe(Session.keyTableDdlPostgres)
        const key = `ddl-${freshId()}`
        yield* Session.transact(Effect.void, { key })
        assert.strictEqual(yield* Session.outcome(key), "committed")
        const again = yield* Effect.flip(Session.transact(Effect.void, { key }))
        assert.strictEqual(again._tag, "AlreadyApplied")
        // idempotent, as createKeyTable is
        yield* s.unsafe(Session.keyTableDdlPostgres)
        yield* Session.createKeyTable
        assert.strictEqual(yield* Session.outcome(key), "committed")
      })
    )

    it.effect("READ ONLY units refuse writes (25006, typed)", () =>
      Effect.gen(function* () {
        const s = yield* sql
        const e = yield* Effect.flip(
          Session.transact(s`INSERT INTO acct (id, balance) VALUES (${freshId()}, 1)`, { readOnly: true })
        )
        assert.strictEqual(e._tag, "ReadOnlyTransaction")
      })
    )

    it.effect("a failed transaction (25P02): later statements fail, COMMIT is refused with the first error", () =>
      Effect.gen(function* () {
        const s = yield* sql
        const id = freshId()
        const exit = yield* Effect.exit(
          Session.transact(
            Effect.gen(function* () {
              yield* s`INSERT INTO acct (id, balance) VALUES (${id}, 1)`
              yield* Effect.ignore(s`SELECT 1 / 0`)
              const later = yield* Effect.flip(s`SELECT 1`)
              assert.include(String(later.message), "aborted")
            })
          )
        )
        assert.isTrue(Exit.isFailure(exit))
        const error = Exit.isFailure(exit) && exit.cause._tag === "Fail" ? exit.cause.error : undefined
        assert.strictEqual((error as { readonly _tag?: string } | undefined)?._tag, "CommitFailed")
        assert.include(JSON.stringify(error), "division by zero")
        const rows = yield* s`SELECT 1 FROM acct WHERE id = ${id}`
        assert.strictEqual(rows.length, 0)
      })
    )

    it.effect("session state a statement leaves (SET) does not reach the next unit", () =>
      Effect.gen(function* () {
        const s = yield* sql
        yield* Session.transact(s`SET search_path TO pg_catalog`)
        for (let i = 0; i < 4; i++) {
          const rows = yield* Session.transact(s<{ p: string }>`SELECT current_setting('search_path') AS p`)
          assert.strictEqual(rows[0]!.p, `"$user", public`)
        }
      })
    )

    it.effect("errors are SessionErrors with retryable", () =>
      Effect.sync(() => {
        assert.isTrue(SessionError.isSessionError(new SessionError.Deadlock({ message: "x" })))
      })
    )
  }
)
