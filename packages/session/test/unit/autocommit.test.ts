/**
 * Units on connections with autocommit off (MySQL's dialect as shipped): no START TRANSACTION travels, the server
 * opens the transaction at the unit's first statement. What the core sends, in order, for every way such a unit can
 * go — a first statement that fails, deadlocks, opens nothing, is interrupted or loses the connection; a user's
 * `SET autocommit = 1`; statements outside units on the same connection. No server.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as SessionError from "../../src/SessionError.js"
import { deadlock, FakeServer, fakeEngine, once, type Script, transact } from "./fake.js"

const OFF = "SET SESSION autocommit = 0"
const ON = "SET SESSION autocommit = 1"
const UPDATE = "UPDATE t SET v = v + 1 WHERE id = ?"
const PROBE = "DO 0"
const duplicate: Script = {
  _tag: "error",
  errno: 1062,
  code: "ER_DUP_ENTRY",
  message: "Duplicate entry '1' for key 'PRIMARY'"
}

type Impl = Effect.Effect.Success<ReturnType<typeof fakeEngine>>

const update = (impl: Impl) => impl.client`UPDATE t SET v = v + 1 WHERE id = ${1}`

/** The pooled connection the units ran on (not the control connection, which the engine opens first). */
const unitConn = (server: FakeServer) => {
  const conn = server.conns.find((c) => server.sent.some((s) => s.sql === UPDATE && s.thread === c.threadId))
  assert.isDefined(conn)
  return conn!
}

const tagOf = (exit: Exit.Exit<unknown, unknown>): string | undefined => {
  if (!Exit.isFailure(exit)) return undefined
  const failure = (exit.cause as { error?: unknown }).error
  return (SessionError.classify(failure) as { _tag?: string } | undefined)?._tag
}

/** A fresh server with one connection, autocommit off for units. */
const setup = Effect.gen(function* () {
  const server = new FakeServer({ autocommitOff: true })
  const impl = yield* fakeEngine(server, { size: 1 })
  return { server, impl }
})

describe("units with autocommit off: the first statement opens the transaction", () => {
  it.scoped(
    "the first unit on a connection turns autocommit off instead of START TRANSACTION; later units send only their statements and COMMIT",
    () =>
      Effect.gen(function* () {
        const { impl, server } = yield* setup
        yield* transact(impl, Effect.zipRight(update(impl), update(impl)))
        yield* transact(impl, Effect.zipRight(update(impl), update(impl)))
        assert.deepStrictEqual(server.statements(), [OFF, UPDATE, UPDATE, "COMMIT", UPDATE, UPDATE, "COMMIT"])
        assert.notInclude(server.statements(), "START TRANSACTION")
        assert.isFalse(unitConn(server).inTransaction)
      })
  )

  it.scoped(
    "a statement outside any unit turns autocommit on first (it commits on its own); the next unit turns it off",
    () =>
      Effect.gen(function* () {
        const { impl, server } = yield* setup
        yield* transact(impl, update(impl))
        yield* update(impl)
        assert.isFalse(unitConn(server).inTransaction, "the autocommit statement left no transaction open")
        yield* transact(impl, update(impl))
        assert.deepStrictEqual(server.statements(), [OFF, UPDATE, "COMMIT", ON, UPDATE, OFF, UPDATE, "COMMIT"])
      })
  )

  it.scoped(
    "a failing first statement: the server is asked whether it opened the transaction; caught, the unit goes on in it and commits",
    () =>
      Effect.gen(function* () {
        const { impl, server } = yield* setup
        once(server, /^UPDATE/, duplicate)
        yield* transact(impl, Effect.zipRight(Effect.ignore(update(impl)), update(impl)))
        assert.deepStrictEqual(server.statements(), [OFF, UPDATE, PROBE, UPDATE, "COMMIT"])
      })
  )

  it.scoped(
    "a failing first statement, not caught: the transaction it opened (it holds its locks) is rolled back",
    () =>
      Effect.gen(function* () {
        const { impl, server } = yield* setup
        once(server, /^UPDATE/, duplicate)
        const exit = yield* Effect.exit(transact(impl, update(impl)))
        assert.strictEqual(tagOf(exit), "DuplicateKey")
        assert.deepStrictEqual(server.statements(), [OFF, UPDATE, PROBE, "ROLLBACK"])
        assert.isFalse(unitConn(server).inTransaction)
      })
  )

  it.scoped(
    "a deadlock on the first statement aborts the unit as after START TRANSACTION: the next statement is refused, nothing commits",
    () =>
      Effect.gen(function* () {
        const { impl, server } = yield* setup
        once(server, /^UPDATE/, deadlock)
        let second: unknown
        const exit = yield* Effect.exit(
          transact(
            impl,
            Effect.gen(function* () {
              yield* Effect.ignore(update(impl))
              second = yield* Effect.either(update(impl))
            })
          )
        )
        assert.strictEqual(tagOf(exit), "Deadlock")
        assert.strictEqual((second as { _tag: string })._tag, "Left")
        assert.deepStrictEqual(server.statements(), [OFF, UPDATE, PROBE])
      })
  )

  it.scoped("a first statement that opens nothing (no table): nothing to commit, nothing sent at the end", () =>
    Effect.gen(function* () {
      const { impl, server } = yield* setup
      yield* transact(impl, impl.client`SELECT 1`)
      yield* transact(impl, Effect.zipRight(impl.client`SELECT 1`, update(impl)))
      assert.deepStrictEqual(server.statements(), [OFF, "SELECT 1", "SELECT 1", UPDATE, "COMMIT"])
    })
  )

  it.scoped(
    "interrupted while the first statement runs: KILL QUERY, the server is asked, ROLLBACK; the connection is clean for the next unit",
    () =>
      Effect.gen(function* () {
        const { impl, server } = yield* setup
        const started = yield* Deferred.make<void>()
        once(server, /^UPDATE/, { _tag: "hang" })
        const script = server.script
        server.script = (sql, conn) => {
          const s = script(sql, conn)
          if (s?._tag === "hang") Deferred.unsafeDone(started, Exit.void)
          return s
        }
        const fiber = yield* Effect.fork(transact(impl, update(impl)))
        yield* Deferred.await(started)
        yield* Fiber.interrupt(fiber)
        const thread = unitConn(server).threadId
        assert.include(
          server.sent.map((s) => s.sql),
          `KILL QUERY ${thread}`
        )
        assert.include(server.statements(), "ROLLBACK")
        assert.notInclude(server.statements(), "COMMIT")
        assert.isFalse(unitConn(server).inTransaction, "nothing of the interrupted unit is left open")
        yield* transact(impl, update(impl))
        assert.deepStrictEqual(server.statements().slice(-2), [UPDATE, "COMMIT"])
      })
  )

  it.scoped("the connection is lost under the first statement: ConnectionLost (retryable), nothing else is sent", () =>
    Effect.gen(function* () {
      const { impl, server } = yield* setup
      once(server, /^UPDATE/, { _tag: "lose" })
      const exit = yield* Effect.exit(transact(impl, update(impl)))
      assert.strictEqual(tagOf(exit), "ConnectionLost")
      assert.deepStrictEqual(server.statements(), [OFF, UPDATE])
    })
  )

  it.scoped(
    "a user's SET autocommit = 1 commits on the server: the unit sees the implicit commit, goes on after START TRANSACTION (the server's word decides), and the connection is reset",
    () =>
      Effect.gen(function* () {
        const { impl, server } = yield* setup
        yield* transact(
          impl,
          Effect.all([update(impl), impl.client`SET autocommit = 1`, update(impl)], { discard: true })
        )
        yield* transact(impl, update(impl))
        assert.deepStrictEqual(server.statements(), [
          OFF,
          UPDATE,
          "SET autocommit = 1",
          "START TRANSACTION",
          UPDATE,
          "COMMIT",
          "(reset)",
          OFF,
          UPDATE,
          "COMMIT"
        ])
        assert.isFalse(unitConn(server).inTransaction)
      })
  )

  it.scoped(
    "a user's SET autocommit = 0 outside units is left alone (nothing commits it), and the connection is reset before the next borrower",
    () =>
      Effect.gen(function* () {
        const { impl, server } = yield* setup
        yield* Effect.scoped(
          Effect.gen(function* () {
            const conn = yield* impl.client.reserve
            yield* conn.executeUnprepared("SET autocommit = 0", [], undefined)
            yield* conn.execute(UPDATE, [1], undefined)
          })
        )
        yield* update(impl)
        assert.deepStrictEqual(server.statements(), ["SET autocommit = 0", UPDATE, "(reset)", UPDATE])
      })
  )

  it.scoped(
    "a read-only unit still sends START TRANSACTION READ ONLY (only a plain read-write transaction opens by itself)",
    () =>
      Effect.gen(function* () {
        const { impl, server } = yield* setup
        yield* transact(impl, impl.client`SELECT v FROM t`, { readOnly: true })
        assert.deepStrictEqual(server.statements(), [OFF, "START TRANSACTION READ ONLY", "SELECT v FROM t", "COMMIT"])
      })
  )

  it.scoped(
    "a savepoint before any statement: START TRANSACTION first (SAVEPOINT opens nothing with autocommit off)",
    () =>
      Effect.gen(function* () {
        const { impl, server } = yield* setup
        yield* transact(impl, transact(impl, update(impl)))
        assert.deepStrictEqual(server.statements(), [
          OFF,
          "START TRANSACTION",
          "SAVEPOINT sfx_sp_1",
          UPDATE,
          "RELEASE SAVEPOINT sfx_sp_1",
          "COMMIT"
        ])
      })
  )

  it.scoped("two fibers race to the first statement: one opens, the other runs after it, in the same transaction", () =>
    Effect.gen(function* () {
      const { impl, server } = yield* setup
      yield* transact(impl, Effect.all([update(impl), update(impl)], { concurrency: 2, discard: true }))
      assert.deepStrictEqual(server.statements(), [OFF, UPDATE, UPDATE, "COMMIT"])
    })
  )

  it.scoped(
    "a server that says no transaction is open after a write (it lies): the unit releases, and the pool resets nothing it was not told of",
    () =>
      Effect.gen(function* () {
        const { impl, server } = yield* setup
        once(server, /^UPDATE/, { _tag: "lie", inTransaction: false })
        yield* transact(impl, update(impl))
        // the same as after START TRANSACTION: the server's word is what the unit goes by
        assert.deepStrictEqual(server.statements(), [OFF, UPDATE])
      })
  )
})
