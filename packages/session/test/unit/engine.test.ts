/**
 * Units of work on the scripted fake driver: what the core sends, in order, for every way a unit can go — and for a
 * server that fails, lies or never answers. No server.
 */
import { assert, describe, it } from "@effect/vitest"
import type * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberId from "effect/FiberId"
import * as TestClock from "effect/TestClock"
import * as SessionError from "../../src/SessionError.js"
import { SessionTag } from "../../src/internal/session.js"
import { deadlock, FakeServer, fakeEngine, once, syntaxError, transact } from "./fake.js"

const BEGIN = "START TRANSACTION"
const UPDATE = "UPDATE t SET v = v + 1 WHERE id = ?"

/** A unit that runs `n` UPDATEs through the engine's SqlClient. */
const updates = (impl: Effect.Effect.Success<ReturnType<typeof fakeEngine>>, n = 2) =>
  Effect.forEach(
    Array.from({ length: n }, (_, i) => i),
    (i) => impl.client`UPDATE t SET v = v + 1 WHERE id = ${i}`,
    { discard: true }
  )

/** The failure of an exit (the `SessionError` inside `SqlError`s unwrapped). */
const failureOf = (exit: Exit.Exit<unknown, unknown>): unknown => {
  assert.isTrue(Exit.isFailure(exit), "the unit should have failed")
  const e = Exit.isFailure(exit) ? exit.cause : undefined
  const failure = e === undefined ? undefined : (e as { _tag: string; error?: unknown }).error
  return SessionError.classify(failure)
}

/** `f` of a service the unit provides (Session): the fake's `transact` does not take it off the requirements. */
const inUnit = <S, I>(
  tag: Context.Tag<I, S>,
  f: (s: S) => Effect.Effect<void, unknown>
): Effect.Effect<void, unknown> => Effect.flatMap(tag, f) as Effect.Effect<void, unknown>

/** A fake server whose COMMIT never answers by itself; `started` completes when it has been sent. */
const hangingCommit = Effect.gen(function* () {
  const server = new FakeServer()
  const started = yield* Deferred.make<void>()
  server.script = (sql) => {
    if (sql !== "COMMIT") return undefined
    Deferred.unsafeDone(started, Exit.void)
    return { _tag: "hang" }
  }
  return { server, started }
})

describe("engine on a fake driver", () => {
  it.scoped("a unit that succeeds: settings untouched, START TRANSACTION, its statements, COMMIT; nothing else", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      const impl = yield* fakeEngine(server)
      yield* transact(impl, updates(impl))
      assert.deepStrictEqual(server.statements(), [BEGIN, UPDATE, UPDATE, "COMMIT"])
      assert.strictEqual(impl.pool.stats().inUse, 0)
    })
  )

  it.scoped("a unit that runs no statement sends nothing at all", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      const impl = yield* fakeEngine(server)
      assert.strictEqual(yield* transact(impl, Effect.succeed(42)), 42)
      assert.deepStrictEqual(server.statements(), [])
    })
  )

  it.scoped("a unit that fails rolls back, and its failure is the caller's", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      const impl = yield* fakeEngine(server)
      const exit = yield* Effect.exit(transact(impl, Effect.zipRight(updates(impl, 1), Effect.fail("boom" as const))))
      assert.deepStrictEqual(exit, Exit.fail("boom"))
      assert.deepStrictEqual(server.statements(), [BEGIN, UPDATE, "ROLLBACK"])
    })
  )

  it.scoped("a defect rolls back", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      const impl = yield* fakeEngine(server)
      const exit = yield* Effect.exit(transact(impl, Effect.zipRight(updates(impl, 1), Effect.die("bug"))))
      assert.isTrue(Exit.isFailure(exit))
      assert.deepStrictEqual(server.statements(), [BEGIN, UPDATE, "ROLLBACK"])
    })
  )

  it.scoped("failure before the transaction starts: START TRANSACTION refused, the statement is never sent", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      once(server, /^START/, syntaxError)
      const impl = yield* fakeEngine(server)
      const exit = yield* Effect.exit(transact(impl, updates(impl)))
      assert.isTrue(Exit.isFailure(exit))
      assert.deepStrictEqual(server.statements(), [BEGIN])
      assert.strictEqual(impl.pool.stats().inUse, 0)
    })
  )

  it.scoped("connection lost while the transaction opens: the unit fails retryable, nothing else is sent", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      once(server, /^START/, { _tag: "lose" })
      const impl = yield* fakeEngine(server)
      const e = failureOf(yield* Effect.exit(transact(impl, updates(impl))))
      assert.strictEqual((e as { _tag: string })._tag, "ConnectionLost")
      assert.isTrue(SessionError.isRetryable(e))
      assert.deepStrictEqual(server.statements(), [BEGIN])
    })
  )

  it.scoped("a deadlock ends the server's transaction: the unit is aborted, later statements are refused", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      let n = 0
      server.script = (sql) => (sql === UPDATE && ++n === 1 ? deadlock : undefined)
      const impl = yield* fakeEngine(server)
      const caught = Effect.catchAll(impl.client`UPDATE t SET v = v + 1 WHERE id = ${1}`, () => Effect.void)
      const exit = yield* Effect.exit(transact(impl, Effect.zipRight(caught, updates(impl, 1))))
      const e = failureOf(exit)
      assert.strictEqual((e as { _tag: string })._tag, "Deadlock")
      // the status probe after the failure, and no ROLLBACK: the server already rolled back
      assert.deepStrictEqual(server.statements(), [BEGIN, UPDATE, "DO 0"])
    })
  )

  it.scoped("a failed statement that leaves the transaction open: the unit goes on and commits", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      once(server, /^UPDATE/, syntaxError)
      const impl = yield* fakeEngine(server)
      const caught = Effect.catchAll(impl.client`UPDATE t SET v = v + 1 WHERE id = ${1}`, () => Effect.void)
      yield* transact(impl, Effect.zipRight(caught, updates(impl, 1)))
      assert.deepStrictEqual(server.statements(), [BEGIN, UPDATE, "DO 0", UPDATE, "COMMIT"])
    })
  )

  it.scoped("the server says the transaction ended (an implicit commit): the next statement opens a new one", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      once(server, /^UPDATE/, { _tag: "lie", inTransaction: false })
      const impl = yield* fakeEngine(server)
      yield* transact(impl, updates(impl, 2))
      assert.deepStrictEqual(server.statements(), [BEGIN, UPDATE, BEGIN, UPDATE, "COMMIT"])
    })
  )

  it.scoped(
    "a COMMIT whose reply never comes: CommitOutcomeUnknown after commitTimeout, the connection destroyed",
    () =>
      Effect.gen(function* () {
        const server = new FakeServer()
        once(server, /^COMMIT$/, { _tag: "hang" })
        const impl = yield* fakeEngine(server, { commitTimeoutMs: 100 })
        const e = failureOf(yield* Effect.exit(transact(impl, updates(impl, 1))))
        assert.strictEqual((e as { _tag: string })._tag, "CommitOutcomeUnknown")
        assert.isFalse(SessionError.isRetryable(e))
        assert.isTrue(server.conns[1]!.destroyed || server.conns[0]!.destroyed)
        assert.strictEqual(impl.pool.stats().size, 0)
      })
  )

  it.scoped(
    "COMMIT failing on a Galera node that left its primary component while replicating (1180): outcome unknown, never retried",
    () =>
      Effect.gen(function* () {
        const server = new FakeServer()
        once(server, /^COMMIT$/, {
          _tag: "error",
          errno: 1180,
          code: "ER_ERROR_DURING_COMMIT",
          message:
            'Got error 6 "No such device or address" during COMMIT: Error while appending streaming replication fragment(provider status: Not connected to Primary Component)'
        })
        const impl = yield* fakeEngine(server)
        const e = failureOf(yield* Effect.exit(transact(impl, updates(impl, 1), { retry: true })))
        assert.strictEqual((e as { _tag: string })._tag, "CommitOutcomeUnknown")
        assert.strictEqual(server.statements().filter((s) => s === "COMMIT").length, 1, "not retried")
      })
  )

  it.scoped("COMMIT refused by the server: CommitFailed, rolled back, the connection reset before reuse", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      once(server, /^COMMIT$/, deadlock)
      const impl = yield* fakeEngine(server)
      const e = failureOf(yield* Effect.exit(transact(impl, updates(impl, 1))))
      assert.strictEqual((e as { _tag: string })._tag, "CommitFailed")
      assert.isTrue(SessionError.isRetryable(e))
      assert.include(server.statements(), "(reset)")
    })
  )

  it.scoped("a connection lost between the last statement and COMMIT: ConnectionLost, never a COMMIT", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      const impl = yield* fakeEngine(server)
      const exit = yield* Effect.exit(
        transact(
          impl,
          Effect.zipRight(
            updates(impl, 1),
            Effect.sync(() => {
              for (const c of server.conns) c.destroy()
              for (const pc of impl.pool.all) pc.broken = true
            })
          )
        )
      )
      const e = failureOf(exit)
      assert.strictEqual((e as { _tag: string })._tag, "ConnectionLost")
      assert.notInclude(server.statements(), "COMMIT")
    })
  )

  it.scoped("the server closed the connection between two statements: the next fails at once, the unit too", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      const impl = yield* fakeEngine(server)
      const gone = Effect.sync(() => {
        for (const pc of impl.pool.all) pc.broken = true
      })
      const later = Effect.either(impl.client`UPDATE t SET v = v + 1 WHERE id = ${1}`)
      let second: unknown
      const exit = yield* Effect.exit(
        transact(
          impl,
          Effect.gen(function* () {
            yield* updates(impl, 1)
            yield* gone
            second = yield* later
          })
        )
      )
      assert.strictEqual((failureOf(exit) as { _tag: string })._tag, "ConnectionLost")
      assert.strictEqual((second as { _tag: string })._tag, "Left")
      assert.deepStrictEqual(server.statements(), [BEGIN, UPDATE])
    })
  )

  it.scoped("interrupted while a statement runs: KILL QUERY for that connection, ROLLBACK, nothing committed", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      const started = yield* Deferred.make<void>()
      server.script = (sql) => {
        if (sql !== UPDATE) return undefined
        Deferred.unsafeDone(started, Exit.void)
        return { _tag: "hang" }
      }
      const impl = yield* fakeEngine(server)
      const fiber = yield* Effect.fork(transact(impl, updates(impl, 1)))
      yield* Deferred.await(started)
      yield* Fiber.interrupt(fiber)
      const thread = server.conns.find((c) => server.sent.some((s) => s.sql === UPDATE && s.thread === c.threadId))!
      assert.include(
        server.sent.map((s) => s.sql),
        `KILL QUERY ${thread.threadId}`
      )
      assert.notInclude(server.statements(), "COMMIT")
      assert.include(server.statements(), "ROLLBACK")
    })
  )

  it.scoped("interrupted while START TRANSACTION is in flight: nothing runs after it, nothing is committed", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      const started = yield* Deferred.make<void>()
      server.script = (sql) => {
        if (!sql.startsWith("START")) return undefined
        Deferred.unsafeDone(started, Exit.void)
        return { _tag: "hang" }
      }
      const impl = yield* fakeEngine(server)
      const fiber = yield* Effect.fork(transact(impl, updates(impl, 1)))
      yield* Deferred.await(started)
      yield* Fiber.interrupt(fiber)
      assert.notInclude(server.statements(), UPDATE)
      assert.notInclude(server.statements(), "COMMIT")
    })
  )

  it.scoped("interrupted while COMMIT is in flight: the connection is destroyed (outcome unknown), never reused", () =>
    Effect.gen(function* () {
      const { server, started } = yield* hangingCommit
      const impl = yield* fakeEngine(server)
      const fiber = yield* Effect.fork(transact(impl, updates(impl, 1)))
      yield* Deferred.await(started)
      yield* Fiber.interrupt(fiber)
      const committing = server.conns.find((c) =>
        server.sent.some((s) => s.sql === "COMMIT" && s.thread === c.threadId)
      )!
      assert.isTrue(committing.destroyed)
      assert.strictEqual(impl.pool.stats().size, 0)
    })
  )

  it.scoped(
    "COMMIT answered, then the unit's fiber interrupted before it resumes: settled as committed (the connection back to the pool, afterCommit once), the exit is the interruption",
    () =>
      Effect.gen(function* () {
        const { server, started } = yield* hangingCommit
        const impl = yield* fakeEngine(server)
        let hooks = 0
        const hook = inUnit(SessionTag, (session) =>
          session.afterCommit(
            Effect.sync(() => {
              hooks++
            })
          )
        )
        const fiber = yield* Effect.fork(transact(impl, Effect.zipRight(updates(impl, 1), hook)))
        yield* Deferred.await(started)
        const committing = server.conns.find((c) => c.hanging)!
        // in one turn: the reply, then the interruption — both reach the fiber before it runs again
        committing.commitHanging()
        fiber.unsafeInterruptAsFork(FiberId.none)
        const exit = yield* Fiber.await(fiber)
        assert.isTrue(Exit.isInterrupted(exit))
        assert.strictEqual(hooks, 1)
        assert.isFalse(committing.destroyed)
        assert.deepStrictEqual(
          [impl.pool.stats().size, impl.pool.stats().idle],
          [1, 1],
          "the connection is back in the pool, idle"
        )
        assert.notInclude(server.statements(), "ROLLBACK")
      })
  )

  it.scoped(
    "a keyed unit whose COMMIT reply is lost and whose key lookup never answers: CommitOutcomeUnknown after commitTimeout, the lookup stopped (the unit's ending is uninterruptible, the lookup bounds itself)",
    () =>
      Effect.gen(function* () {
        const server = new FakeServer()
        const lookup = yield* Deferred.make<void>()
        let lost = false
        server.script = (sql) => {
          if (sql === "COMMIT" && !lost) {
            lost = true
            return { _tag: "lose" }
          }
          if (/LOCK IN SHARE MODE/.test(sql)) {
            Deferred.unsafeDone(lookup, Exit.void)
            return { _tag: "hang" }
          }
          return undefined
        }
        const impl = yield* fakeEngine(server, { commitTimeoutMs: 300 })
        const fiber = yield* Effect.fork(transact(impl, updates(impl, 1), { key: "k1" }))
        yield* Deferred.await(lookup)
        yield* TestClock.adjust("300 millis")
        const e = failureOf(yield* Fiber.await(fiber))
        assert.strictEqual((e as { _tag: string })._tag, "CommitOutcomeUnknown")
        assert.isTrue(
          server.sent.some((s) => /^KILL QUERY/.test(s.sql)),
          "the hanging lookup was stopped"
        )
      })
  )

  it.scoped(
    "afterCommit hooks run to completion: an interruption that lands while one runs waits for it (the unit is committed)",
    () =>
      Effect.gen(function* () {
        const server = new FakeServer()
        const impl = yield* fakeEngine(server)
        const started = yield* Deferred.make<void>()
        let finished = 0
        const hook = inUnit(SessionTag, (session) =>
          session.afterCommit(
            Effect.zipRight(
              Deferred.succeed(started, undefined),
              Effect.zipRight(
                Effect.sleep("1 second"),
                Effect.sync(() => {
                  finished++
                })
              )
            )
          )
        )
        const fiber = yield* Effect.fork(transact(impl, Effect.zipRight(updates(impl, 1), hook)))
        yield* Deferred.await(started)
        const interrupting = yield* Effect.fork(Fiber.interrupt(fiber))
        yield* TestClock.adjust("1 second")
        const exit = yield* Fiber.join(interrupting)
        assert.isTrue(Exit.isInterrupted(exit))
        assert.strictEqual(finished, 1)
        assert.include(server.statements(), "COMMIT")
      })
  )

  it.scoped("a savepoint that fails rolls back to itself; the unit commits the rest", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      const impl = yield* fakeEngine(server)
      const inner = transact(impl, Effect.zipRight(updates(impl, 1), Effect.fail("inner" as const)))
      yield* transact(impl, Effect.zipRight(updates(impl, 1), Effect.ignore(inner)))
      assert.deepStrictEqual(server.statements(), [
        BEGIN,
        UPDATE,
        "SAVEPOINT sfx_sp_1",
        UPDATE,
        "ROLLBACK TO SAVEPOINT sfx_sp_1",
        "COMMIT"
      ])
    })
  )

  it.scoped("a failing SAVEPOINT aborts the unit: it rolls back even if the caller catches the failure", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      once(server, /^SAVEPOINT/, syntaxError)
      const impl = yield* fakeEngine(server)
      const inner = transact(impl, updates(impl, 1))
      const exit = yield* Effect.exit(transact(impl, Effect.zipRight(updates(impl, 1), Effect.ignore(inner))))
      assert.isTrue(Exit.isFailure(exit))
      assert.deepStrictEqual(server.statements(), [BEGIN, UPDATE, "SAVEPOINT sfx_sp_1", "ROLLBACK"])
    })
  )

  it.scoped("two fibers of one unit: their statements run one at a time, in the unit's one transaction", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      const impl = yield* fakeEngine(server)
      yield* transact(impl, Effect.all([updates(impl, 3), updates(impl, 3)], { concurrency: 2, discard: true }))
      const statements = server.statements()
      assert.deepStrictEqual(statements, [BEGIN, ...Array.from({ length: 6 }, () => UPDATE), "COMMIT"])
      const threads = new Set(server.sent.filter((s) => s.sql === UPDATE).map((s) => s.thread))
      assert.strictEqual(threads.size, 1)
    })
  )

  it.scoped("a unit whose request the pool sheds (queueLimit) is not retried: one PoolTimeout, at once", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      const started = yield* Deferred.make<void>()
      server.script = (sql) => {
        if (sql !== UPDATE) return undefined
        Deferred.unsafeDone(started, Exit.void)
        return { _tag: "hang" }
      }
      const impl = yield* fakeEngine(server, { size: 1, queueLimit: 1 })
      // the one connection is held by a unit whose statement never ends; one more unit waits in the queue
      const holder = yield* Effect.fork(transact(impl, updates(impl, 1)))
      yield* Deferred.await(started)
      const waiter = yield* Effect.fork(transact(impl, Effect.void))
      yield* Effect.yieldNow()
      const exit = yield* Effect.exit(transact(impl, updates(impl, 1), { retry: true }))
      const e = failureOf(exit) as SessionError.PoolTimeout
      assert.strictEqual(e._tag, "PoolTimeout")
      assert.isTrue(e.shed)
      assert.strictEqual(impl.pool.stats().acquireTimeouts, 1, "shed once, not retried")
      yield* Fiber.interrupt(waiter)
      yield* Fiber.interrupt(holder)
    })
  )

  it.scoped("a fiber that outlives its unit cannot run a statement in autocommit: SessionClosed", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      const impl = yield* fakeEngine(server)
      const late = yield* transact(
        impl,
        Effect.sync(() => impl.client`UPDATE t SET v = v + 1 WHERE id = ${1}`)
      )
      const exit = yield* Effect.exit(late)
      const e = failureOf(exit)
      assert.strictEqual((e as { _tag: string })._tag, "SessionClosed")
      assert.deepStrictEqual(server.statements(), [])
    })
  )
})
