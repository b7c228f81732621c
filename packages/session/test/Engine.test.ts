/**
 * The Engine (pool, eviction, reset, connection errors, shutdown), the same test on MariaDB and PostgreSQL (see
 * `support/dialects.ts`); where the databases must differ, the test says so.
 */
import { assert, expect, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine, Session } from "@sessionfx/session"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Redacted from "effect/Redacted"
import * as Ref from "effect/Ref"
import * as Scope from "effect/Scope"
import * as net from "node:net"
import { eventually } from "./support.js"
import { DbTag, dialects, engineOn } from "./support/dialects.js"

/** The id of the connection the statement runs on, as the server names it. */
const connectionId = Effect.flatMap(DbTag, (db) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.map(sql.unsafe<{ id: number }>(db.connectionId), (rows) => Number(rows[0]!.id))
  )
)

/** The dialect's url with some of its parts replaced. */
const urlWith = (
  url: Redacted.Redacted<string>,
  parts: Partial<Pick<URL, "hostname" | "port" | "password" | "pathname">>
) => {
  const u = new URL(Redacted.value(url))
  Object.assign(u, parts)
  return Redacted.make(u.toString())
}

/** Holds a session open until `release` completes. */
const holdSession = (started: Deferred.Deferred<void>, release: Deferred.Deferred<void>) =>
  Session.transact(Effect.zipRight(Deferred.succeed(started, undefined), Deferred.await(release)))

const freePort = Effect.async<number>((resume) => {
  const srv = net.createServer()
  srv.listen(0, "127.0.0.1", () => {
    const port = (srv.address() as net.AddressInfo).port
    srv.close(() => resume(Effect.succeed(port)))
  })
})

for (const [name, dbLayer] of dialects) {
  const engineLayer = engineOn
  layer(dbLayer, { timeout: 120_000, excludeTestServices: true })(`Engine (${name})`, (it) => {
    it.scoped("answers statements and detects the server", () =>
      Effect.gen(function* () {
        const engine = yield* Engine.Engine
        const sql = yield* SqlClient.SqlClient
        const rows = yield* sql<{ one: number }>`SELECT 1 AS one`
        assert.strictEqual(Number(rows[0]!.one), 1)
        const db = yield* DbTag
        assert.strictEqual(engine.flavor, db.flavor)
        // SELECT VERSION() as each server answers it: `11.4.2-MariaDB…`, `PostgreSQL 15.18 (Debian …) on …`
        assert.match(engine.serverVersion, name === "postgres" ? /^PostgreSQL \d+\.\d+/ : /^\d+\.\d+/)
        const stats = yield* Engine.stats
        assert.strictEqual(stats.inUse, 0)
        assert.isAtLeast(stats.size, 1)
      }).pipe(Effect.provide(engineLayer()))
    )

    it.scoped("PoolTimeout after acquireTimeout, carrying the stats", () =>
      Effect.gen(function* () {
        const started = yield* Deferred.make<void>()
        const release = yield* Deferred.make<void>()
        const holder = yield* Effect.fork(holdSession(started, release))
        yield* Deferred.await(started)
        const t0 = Date.now()
        const error = yield* Effect.flip(Session.transact(Effect.void))
        const elapsed = Date.now() - t0
        assert.strictEqual(error._tag, "PoolTimeout")
        if (error._tag !== "PoolTimeout") return
        assert.strictEqual(error.stats.inUse, 1)
        assert.strictEqual(error.stats.size, 1)
        assert.isTrue(error.retryable)
        assert.isAtLeast(elapsed, 240)
        assert.isBelow(elapsed, 1500)
        yield* Deferred.succeed(release, undefined)
        yield* Fiber.join(holder)
        const stats = yield* Engine.stats
        assert.strictEqual(stats.acquireTimeouts, 1)
        assert.strictEqual(stats.inUse, 0)
      }).pipe(Effect.provide(engineLayer({ pool: { size: 1, acquireTimeout: "250 millis" } })))
    )

    it.scoped("queueLimit refuses at once when too many fibers wait", () =>
      Effect.gen(function* () {
        const started = yield* Deferred.make<void>()
        const release = yield* Deferred.make<void>()
        const holder = yield* Effect.fork(holdSession(started, release))
        yield* Deferred.await(started)
        const waiter = yield* Effect.fork(Session.transact(Effect.void))
        yield* eventually(
          Effect.map(Engine.stats, (s) => s.waiting === 1),
          "one waiter"
        )
        const t0 = Date.now()
        const error = yield* Effect.flip(Session.transact(Effect.void))
        assert.strictEqual(error._tag, "PoolTimeout")
        assert.isBelow(Date.now() - t0, 1000)
        yield* Deferred.succeed(release, undefined)
        yield* Fiber.join(holder)
        yield* Fiber.join(waiter)
      }).pipe(Effect.provide(engineLayer({ pool: { size: 1, queueLimit: 1, acquireTimeout: "20 seconds" } })))
    )

    it.scoped("interrupted waiters leave the queue and nothing leaks", () =>
      Effect.gen(function* () {
        const started = yield* Deferred.make<void>()
        const release = yield* Deferred.make<void>()
        const holder = yield* Effect.fork(holdSession(started, release))
        yield* Deferred.await(started)
        const waiters = yield* Effect.forEach(Array.from({ length: 5 }), () =>
          Effect.fork(Session.transact(Effect.void))
        )
        yield* eventually(
          Effect.map(Engine.stats, (s) => s.waiting === 5),
          "five waiters"
        )
        const tA = Date.now()
        yield* Fiber.interruptAll(waiters)
        assert.isBelow(Date.now() - tA, 1000, "interrupting waiters is prompt")
        const afterInterrupt = yield* Engine.stats
        assert.strictEqual(afterInterrupt.waiting, 0)
        yield* Deferred.succeed(release, undefined)
        yield* Fiber.join(holder)
        yield* eventually(
          Effect.map(Engine.stats, (s) => s.idle === s.size && s.inUse === 0),
          "all idle"
        )
        // the pool still serves
        yield* Session.transact(connectionId)
      }).pipe(Effect.provide(engineLayer({ pool: { size: 1 } })))
    )

    it.scoped("waiters are served first come, first served", () =>
      Effect.gen(function* () {
        const started = yield* Deferred.make<void>()
        const release = yield* Deferred.make<void>()
        const holder = yield* Effect.fork(holdSession(started, release))
        yield* Deferred.await(started)
        const order = yield* Ref.make<Array<number>>([])
        const fibers: Array<Fiber.RuntimeFiber<void, unknown>> = []
        for (let i = 0; i < 8; i++) {
          fibers.push(yield* Effect.fork(Session.transact(Ref.update(order, (o) => [...o, i]))))
          yield* eventually(
            Effect.map(Engine.stats, (s) => s.waiting === i + 1),
            `waiter ${i}`
          )
        }
        yield* Deferred.succeed(release, undefined)
        yield* Fiber.join(holder)
        yield* Fiber.joinAll(fibers)
        assert.deepStrictEqual(yield* Ref.get(order), [0, 1, 2, 3, 4, 5, 6, 7])
      }).pipe(Effect.provide(engineLayer({ pool: { size: 1 } })))
    )

    it.scoped("a connection killed by the server is evicted; the next acquire succeeds", () =>
      Effect.gen(function* () {
        const db = yield* DbTag
        const first = yield* connectionId
        yield* db.kill(first)
        yield* eventually(
          Effect.map(Engine.stats, (s) => s.destroyed >= 1),
          "eviction"
        )
        const second = yield* connectionId
        assert.notStrictEqual(second, first)
      }).pipe(Effect.provide(engineLayer({ pool: { size: 1 } })))
    )

    it.scoped("validation after idle catches a dead connection before lending it", () =>
      Effect.gen(function* () {
        const db = yield* DbTag
        const first = yield* connectionId
        yield* db.kill(first)
        // no waiting for the eviction event: validation on borrow must catch it
        const second = yield* connectionId
        assert.notStrictEqual(second, first)
      }).pipe(Effect.provide(engineLayer({ pool: { size: 1, validateAfterIdle: 0 } })))
    )

    it.scoped("maxLifetime retires a connection on return", () =>
      Effect.gen(function* () {
        const first = yield* connectionId
        yield* Effect.sleep("400 millis") // the subject of the test is elapsed wall time
        const second = yield* connectionId
        assert.notStrictEqual(second, first)
        const stats = yield* Engine.stats
        assert.isAtLeast(stats.destroyed, 1)
      }).pipe(Effect.provide(engineLayer({ pool: { size: 1, maxLifetime: "300 millis" } })))
    )

    it.scoped("session variables and temporary tables do not reach the next borrower", () =>
      Effect.gen(function* () {
        const db = yield* DbTag
        const sql = yield* SqlClient.SqlClient
        const variable = (v: string) => Effect.map(sql.unsafe<{ v: unknown }>(db.getVar(v)), (rows) => rows[0]!.v)
        const id1 = yield* Session.transact(
          Effect.gen(function* () {
            const s = yield* SqlClient.SqlClient
            yield* s.unsafe(db.setVar("leak", 42))
            yield* s`CREATE TEMPORARY TABLE leak_tmp (id INT)`
            assert.strictEqual(String(yield* variable("leak")), "42")
            return yield* connectionId
          })
        )
        yield* sql.unsafe(db.setVar("leak2", 7))
        const [a, b] = yield* Session.transact(Effect.all([variable("leak"), variable("leak2")]))
        // unset: NULL on MariaDB; on PostgreSQL a custom setting once defined reads as empty after DISCARD ALL
        assert.include([null, ""], a)
        assert.include([null, ""], b)
        const tmp = yield* Effect.either(sql`SELECT * FROM leak_tmp`)
        assert.isTrue(tmp._tag === "Left")
        const id2 = yield* connectionId
        assert.strictEqual(id1, id2, "the same connection was reused after reset")
      }).pipe(Effect.provide(engineLayer({ pool: { size: 1 } })))
    )

    it.scoped("prepared statements: reused across units, after a reset and past the per-connection cap", () =>
      Effect.gen(function* () {
        const sql = yield* SqlClient.SqlClient
        const double = (n: number) =>
          Session.transact(Effect.flatMap(SqlClient.SqlClient, (s) => s<{ x: number }>`SELECT ${n} * 2 AS x`))
        assert.strictEqual(Number((yield* double(1))[0]!.x), 2)
        // a unit that changes session state: its connection is reset (COM_RESET_CONNECTION, DISCARD ALL: both drop
        // the server's prepared statements) before the next unit gets it
        const db = yield* DbTag
        yield* Session.transact(Effect.flatMap(SqlClient.SqlClient, (s) => s.unsafe(db.setVar("reset_me", 1))))
        assert.strictEqual(Number((yield* double(2))[0]!.x), 4)
        // more distinct texts than a connection keeps: the first is prepared again when it comes back
        const texts = Array.from({ length: 300 }, (_, i) => `SELECT ${db.param(1)} + ${i} AS x`)
        const results = yield* Session.transact(Effect.forEach(texts, (text) => sql.unsafe<{ x: number }>(text, [1])))
        assert.deepStrictEqual(
          results.map((rows) => Number(rows[0]!.x)),
          texts.map((_, i) => 1 + i)
        )
        assert.strictEqual(Number((yield* double(3))[0]!.x), 6)
        assert.strictEqual(Number((yield* sql.unsafe<{ x: number }>(texts[0]!, [5]))[0]!.x), 5)
      }).pipe(Effect.provide(engineLayer({ pool: { size: 1 } })))
    )

    it.scoped("a bind value the driver cannot send is a typed failure; the connection goes on", () =>
      Effect.gen(function* () {
        const failure = yield* Effect.flip(
          Session.transact(Effect.flatMap(SqlClient.SqlClient, (s) => s`SELECT ${undefined} AS x`))
        )
        assert.include(String(failure.message), "undefined")
        const rows = yield* Session.transact(
          Effect.flatMap(SqlClient.SqlClient, (s) => s<{ one: number }>`SELECT 1 AS one`)
        )
        assert.strictEqual(Number(rows[0]!.one), 1)
        assert.strictEqual((yield* Engine.stats).inUse, 0)
      }).pipe(Effect.provide(engineLayer({ pool: { size: 1 } })))
    )

    it.scoped("wrong password: ConnectionError naming host, port and user, never the password", () =>
      Effect.gen(function* () {
        const db = yield* DbTag
        const server = new URL(Redacted.value(db.url))
        const secret = "Sup3rSecretPw_" + Math.random().toString(36).slice(2)
        const logs: Array<string> = []
        const logger = Logger.make(({ message }) => logs.push(String(message)))
        const t0 = Date.now()
        const exit = yield* Effect.exit(
          Layer.build(Engine.layer({ url: urlWith(db.url, { password: secret }) })).pipe(
            Effect.provide(Logger.replace(Logger.defaultLogger, logger))
          )
        )
        assert.isBelow(Date.now() - t0, 5000)
        assert.isTrue(Exit.isFailure(exit))
        if (Exit.isSuccess(exit)) return
        const error = exit.cause._tag === "Fail" ? exit.cause.error : undefined
        assert.strictEqual(error?._tag, "ConnectionError")
        const message = String(error?.message)
        expect(message).toContain(server.hostname)
        expect(message).toContain(server.port)
        expect(message).toContain(server.username)
        // each server's own words: MariaDB's 1045, PostgreSQL's 28P01
        expect(message).toMatch(name === "postgres" ? /password authentication failed/i : /access denied/i)
        for (const text of [message, String(error), JSON.stringify(error), ...logs]) {
          expect(text).not.toContain(secret)
        }
      })
    )

    it.effect("refused port and unreachable host fail within their timeout", () =>
      Effect.gen(function* () {
        const db = yield* DbTag
        const port = yield* freePort
        const t0 = Date.now()
        const refused = yield* Effect.flip(
          Layer.build(Engine.layer({ url: urlWith(db.url, { hostname: "127.0.0.1", port: String(port) }) })).pipe(
            Effect.scoped
          )
        )
        assert.strictEqual(refused._tag, "ConnectionError")
        expect(refused.message).toMatch(/ECONNREFUSED/)
        assert.isBelow(Date.now() - t0, 3000)
        const t1 = Date.now()
        // TEST-NET-1 (RFC 5737): never routed
        const unreachable = yield* Effect.flip(
          Layer.build(
            Engine.layer({ url: urlWith(db.url, { hostname: "192.0.2.1" }), connectTimeout: "500 millis" })
          ).pipe(Effect.scoped)
        )
        assert.strictEqual(unreachable._tag, "ConnectionError")
        assert.isBelow(Date.now() - t1, 3000)
      })
    )

    it.effect("a malformed URL is a clear error that does not echo the password", () =>
      Effect.gen(function* () {
        const scheme = name === "postgres" ? "postgres" : "mysql"
        const bad = yield* Effect.flip(
          Layer.build(Engine.layer({ url: `${scheme}://u:hunter2pw@host:notaport/db` })).pipe(Effect.scoped)
        )
        assert.strictEqual(bad._tag, "ConnectionError")
        expect(bad.message).toMatch(/not a valid URL/)
        expect(bad.message).not.toContain("hunter2pw")
        const unknown = yield* Effect.flip(
          Layer.build(Engine.layer({ url: "mssql://u:hunter2pw@h/db" })).pipe(Effect.scoped)
        )
        // postgres:// and postgresql:// choose the PostgreSQL driver (Postgres.test.ts); the message lists the schemes
        expect(unknown.message).toMatch(/scheme "mssql:".*mysql:\/\/.*postgres:\/\//)
        expect(unknown.message).not.toContain("hunter2pw")
      })
    )

    it.scoped("shutdown drains in-flight sessions, then closes", () =>
      Effect.gen(function* () {
        const db = yield* DbTag
        const scope = yield* Scope.make()
        const context = yield* Layer.buildWithScope(Engine.layer({ url: db.url, pool: { size: 2 } }), scope)
        const started = yield* Deferred.make<void>()
        const release = yield* Deferred.make<void>()
        const unit = yield* Effect.fork(
          Session.transact(
            Effect.gen(function* () {
              const sql = yield* SqlClient.SqlClient
              yield* Deferred.succeed(started, undefined)
              yield* Deferred.await(release)
              return yield* sql<{ one: number }>`SELECT 1 AS one`
            })
          ).pipe(Effect.provide(context))
        )
        yield* Deferred.await(started)
        const closing = yield* Effect.fork(Scope.close(scope, Exit.void))
        // while the unit is in flight, the close waits for it
        const engine = yield* Effect.provide(Engine.Engine, context)
        yield* eventually(
          Effect.sync(() => engine[Engine.TypeId].pool.closing),
          "closing started"
        )
        assert.isNull(closing.unsafePoll())
        yield* Deferred.succeed(release, undefined)
        const rows = yield* Fiber.join(unit)
        assert.strictEqual(Number(rows[0]!.one), 1)
        yield* Fiber.join(closing)
        const stats = yield* engine.stats
        assert.strictEqual(stats.size, 0)
      })
    )

    it.scoped("shutdownTimeout bounds the drain; the rest is rolled back by closing", () =>
      Effect.gen(function* () {
        const db = yield* DbTag
        const scope = yield* Scope.make()
        const context = yield* Layer.buildWithScope(
          Engine.layer({ url: db.url, pool: { size: 1 }, shutdownTimeout: "200 millis" }),
          scope
        )
        const started = yield* Deferred.make<void>()
        const never = yield* Deferred.make<void>()
        // DDL commits implicitly in MySQL (and rolls back with the unit on PostgreSQL): create the table before it
        yield* Effect.flatMap(
          SqlClient.SqlClient,
          (sql) => sql`CREATE TABLE IF NOT EXISTS shutdown_t (id INT PRIMARY KEY)`
        ).pipe(Effect.provide(context))
        const unit = yield* Effect.fork(
          Session.transact(
            Effect.gen(function* () {
              const sql = yield* SqlClient.SqlClient
              yield* sql`INSERT INTO shutdown_t VALUES (1)`
              yield* Deferred.succeed(started, undefined)
              yield* Deferred.await(never)
              yield* sql`SELECT 1`
            })
          ).pipe(Effect.provide(context))
        )
        yield* Deferred.await(started)
        const t0 = Date.now()
        yield* Scope.close(scope, Exit.void)
        assert.isBelow(Date.now() - t0, 2000)
        yield* Fiber.interrupt(unit)
        const rows = yield* db.admin("SELECT COUNT(*) AS n FROM shutdown_t")
        assert.strictEqual(Number(rows[0]!.n), 0)
      })
    )

    it.scoped("two engines on two databases stay separate", () =>
      Effect.gen(function* () {
        const db = yield* DbTag
        yield* db.createDatabase("second_db")
        const database = new URL(Redacted.value(db.url)).pathname.slice(1)
        const url2 = urlWith(db.url, { pathname: "/second_db" })
        const a = yield* Layer.build(Engine.layer({ url: db.url, name: "a" }))
        const b = yield* Layer.build(Engine.layer({ url: url2, name: "b" }))
        const sqlA = (yield* Effect.provide(Engine.Engine, a)).sql
        const sqlB = (yield* Effect.provide(Engine.Engine, b)).sql
        yield* sqlB`CREATE TABLE IF NOT EXISTS marks (id INT PRIMARY KEY)`
        const result = yield* Effect.exit(
          Session.transact(
            Effect.gen(function* () {
              const dbA = yield* sqlA.unsafe<{ db: string }>(db.database)
              const dbB = yield* sqlB.unsafe<{ db: string }>(db.database)
              yield* sqlB`INSERT INTO marks VALUES (1)`
              assert.strictEqual(dbA[0]!.db, database)
              assert.strictEqual(dbB[0]!.db, "second_db")
              return yield* Effect.fail("roll back A" as const)
            })
          ).pipe(Effect.provide(a))
        )
        assert.isTrue(Exit.isFailure(result))
        // B's statement ran on B in autocommit: A's rollback did not touch it
        const marks = yield* sqlB<{ n: number }>`SELECT COUNT(*) AS n FROM marks`
        assert.strictEqual(Number(marks[0]!.n), 1)
      })
    )
  })
}
