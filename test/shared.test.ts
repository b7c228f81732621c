/**
 * No request shares a unit of work by accident (issue 24 #1): `Session.layer()` (`SessionLive`) built into a
 * `ManagedRuntime` and run once per request, or shared through `Layer.memoize`, would hand every request the same
 * connection and transaction. Every use from a fiber the unit's own program did not start fails with
 * `SharedSession` before anything is sent, and nothing it tried is committed; the ways a program legitimately
 * reaches its unit from other fibers (forks, `Effect.all`, a parallel layer build, `Runtime.runPromise` from inside
 * the unit) keep working. Verdicts count rows on the server.
 */
import { assert, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine, Session } from "@sessionfx/session"
import { SessionTest } from "@sessionfx/testing"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Option from "effect/Option"
import * as Runtime from "effect/Runtime"
import * as Stream from "effect/Stream"
import {
  adminQuery,
  count,
  engineLayer,
  freshId,
  rootTag,
  serverLayer,
  show,
  sql,
  suiteOptions
} from "./support/unit.js"

const suite = Layer.effectDiscard(adminQuery(`CREATE TABLE IF NOT EXISTS shared (id INT PRIMARY KEY)`)).pipe(
  Layer.provideMerge(serverLayer())
)

const insert = (id: number) => Effect.flatMap(sql, (s) => s`INSERT INTO shared (id) VALUES (${id})`)

/** The tag at the root of a failure (a SessionError travels as a SqlError's cause through `sql`). */
const failedWith = (exit: Exit.Exit<unknown, unknown>): string => {
  if (Exit.isSuccess(exit)) return "success"
  const failure = Cause.failureOption(exit.cause)
  return Option.isSome(failure) ? rootTag(failure.value) : `not a failure: ${Cause.pretty(exit.cause)}`
}

layer(suite, suiteOptions)("a unit of work is never shared by independent requests", (it) => {
  it.scoped(
    "SessionLive in a ManagedRuntime: every request's statement, unit and hook fails with SharedSession, nothing is committed at dispose",
    () =>
      Effect.gen(function* () {
        const engine = yield* Layer.build(engineLayer())
        const runtime = ManagedRuntime.make(Session.layer().pipe(Layer.provideMerge(Layer.succeedContext(engine))))
        const a = freshId()
        const b = freshId()
        const c = freshId()
        // from a request callback (no fiber running), as an Express or Next handler calls it
        const plain = yield* Effect.promise(
          () =>
            new Promise<Exit.Exit<unknown, unknown>>((resolve) =>
              setImmediate(() => void runtime.runPromiseExit(insert(a)).then(resolve))
            )
        )
        assert.strictEqual(failedWith(plain), "SharedSession", show(plain))
        // from inside another fiber (a test, a server built on Effect)
        const nested = yield* Effect.promise(() => runtime.runPromiseExit(Session.transact(insert(b))))
        assert.strictEqual(failedWith(nested), "SharedSession", show(nested))
        const hook = yield* Effect.promise(() => runtime.runPromiseExit(Session.afterCommit(Effect.void)))
        assert.strictEqual(failedWith(hook), "SharedSession", show(hook))
        const stream = yield* Effect.promise(() =>
          runtime.runPromiseExit(
            Effect.flatMap(SqlClient.SqlClient, (s) => Stream.runCollect(s`SELECT id FROM shared`.stream))
          )
        )
        assert.strictEqual(failedWith(stream), "SharedSession", show(stream))
        const savepoint = yield* Effect.promise(() =>
          runtime.runPromiseExit(Effect.flatMap(Session.Session, (session) => session.savepoint(insert(b))))
        )
        assert.strictEqual(failedWith(savepoint), "SharedSession", show(savepoint))
        // the error says what to write
        const error = Exit.isFailure(nested) ? String(nested.cause) : ""
        assert.include(error, "Session.transact(handler)")
        // a unit of its own (propagation "new") is not shared: it commits
        const own = yield* Effect.promise(() =>
          runtime.runPromiseExit(Session.transact(insert(c), { propagation: "new" }))
        )
        assert.isTrue(Exit.isSuccess(own), show(own))
        yield* Effect.promise(() => runtime.dispose())
        assert.strictEqual(yield* count("shared", "id IN (?, ?)", [a, b]), 0)
        assert.strictEqual(yield* count("shared", "id = ?", [c]), 1)
      })
  )

  it.scoped(
    "a runtime built from the Engine layer only, one Session.transact per request: each request its own unit",
    () =>
      Effect.gen(function* () {
        const engine = yield* Layer.build(engineLayer())
        const runtime = ManagedRuntime.make(Layer.succeedContext(engine))
        const ok = freshId()
        const failing = freshId()
        const results = yield* Effect.promise(() =>
          Promise.all([
            runtime.runPromiseExit(Session.transact(insert(ok))),
            runtime.runPromiseExit(Session.transact(Effect.zipRight(insert(failing), Effect.fail("handler failed"))))
          ])
        )
        assert.isTrue(Exit.isSuccess(results[0]), show(results[0]))
        assert.isTrue(Exit.isFailure(results[1]))
        yield* Effect.promise(() => runtime.dispose())
        assert.strictEqual(yield* count("shared", "id = ?", [ok]), 1)
        assert.strictEqual(yield* count("shared", "id = ?", [failing]), 0)
      })
  )

  it.scoped("Layer.memoize(SessionLive) shared by two handlers: the one that did not build it gets SharedSession", () =>
    Effect.gen(function* () {
      const engine = yield* Layer.build(engineLayer())
      const shared = yield* Layer.memoize(Session.layer().pipe(Layer.provide(Layer.succeedContext(engine))))
      const first = freshId()
      const second = freshId()
      const exits = yield* Effect.all(
        [
          Effect.exit(Effect.provide(insert(first), shared)),
          Effect.exit(
            Effect.provide(
              Effect.flatMap(Effect.sleep("10 millis"), () => insert(second)),
              shared
            )
          )
        ],
        { concurrency: 2 }
      )
      assert.isTrue(Exit.isSuccess(exits[0]), show(exits[0]))
      assert.strictEqual(failedWith(exits[1]), "SharedSession", show(exits[1]))
      assert.strictEqual(yield* count("shared", "id = ?", [second]), 0)
    })
  )

  it.scoped(
    "what a program does inside its own unit still works: forks, Effect.all, a parallel layer build, Runtime.runPromise from inside",
    () =>
      Effect.gen(function* () {
        const engine = yield* Layer.build(engineLayer())
        const ids = [freshId(), freshId(), freshId(), freshId(), freshId()]
        const program = Effect.gen(function* () {
          yield* insert(ids[0]!)
          yield* Effect.all([insert(ids[1]!), insert(ids[2]!)], { concurrency: 2 })
          const fiber = yield* Effect.fork(insert(ids[3]!))
          yield* fiber.await
          const runtime = yield* Effect.runtime<SqlClient.SqlClient>()
          yield* Effect.promise(() => Runtime.runPromise(runtime)(insert(ids[4]!)))
          const session = yield* Session.Session
          return yield* session.isOpen
        })
        // a parallel build: SessionLive merged with another layer is built on a fiber of its own
        const open = yield* program.pipe(
          Effect.provide(Layer.mergeAll(Session.layer(), Layer.succeed(Marker, "m"))),
          Effect.provide(Layer.succeedContext(engine))
        )
        assert.isTrue(open)
        assert.strictEqual(yield* count("shared", `id IN (${ids.join(",")})`), ids.length)
      })
  )

  it.scoped(
    "a fiber started from inside a unit with a runtime captured outside it: its statements are refused, its own units work",
    () =>
      Effect.gen(function* () {
        const engine = yield* Layer.build(engineLayer())
        const outside = yield* Effect.runtime<never>().pipe(Effect.provide(Layer.succeedContext(engine)))
        const stray = freshId()
        const own = freshId()
        const inUnit = freshId()
        const [strayExit, ownExit] = yield* Session.transact(
          Effect.gen(function* () {
            yield* insert(inUnit)
            // as a time-window data loader starts its batch: Runtime.runFork of the runtime it captured when built
            const run = <A, E>(effect: Effect.Effect<A, E, SqlClient.SqlClient | Engine.Engine>) =>
              Effect.promise(() =>
                Runtime.runPromiseExit(outside as Runtime.Runtime<SqlClient.SqlClient | Engine.Engine>)(effect)
              )
            const strayExit = yield* run(insert(stray))
            const ownExit = yield* run(Session.transact(insert(own)))
            return [strayExit, ownExit] as const
          })
        ).pipe(Effect.provide(Layer.succeedContext(engine)))
        assert.strictEqual(failedWith(strayExit), "SharedSession", show(strayExit))
        assert.isTrue(Exit.isSuccess(ownExit), show(ownExit))
        assert.strictEqual(yield* count("shared", "id = ?", [stray]), 0)
        assert.strictEqual(yield* count("shared", "id = ?", [own]), 1)
        assert.strictEqual(yield* count("shared", "id = ?", [inUnit]), 1)
      })
  )

  it.scoped("the engine's own client in a ManagedRuntime is autocommit, per request, as before", () =>
    Effect.gen(function* () {
      const engine = yield* Layer.build(engineLayer())
      const runtime = ManagedRuntime.make(Layer.succeedContext(engine))
      const id = freshId()
      const exit = yield* Effect.promise(() => runtime.runPromiseExit(insert(id)))
      assert.isTrue(Exit.isSuccess(exit), show(exit))
      yield* Effect.promise(() => runtime.dispose())
      assert.strictEqual(yield* count("shared", "id = ?", [id]), 1)
    })
  )
})

class Marker extends Effect.Tag("test/Marker")<Marker, string>() {}

layer(SessionTest.SessionTest.pipe(Layer.provideMerge(engineLayer()), Layer.provideMerge(serverLayer())), suiteOptions)(
  "SessionTest given to @effect/vitest's layer(…) instead of to each test",
  (it) => {
    // each test gets the file's runtime patched into its own fiber: the first test to use the unit claims it
    it.effect("the first test uses the file's rollback-only unit", () =>
      Effect.gen(function* () {
        const rows = yield* Effect.flatMap(sql, (s) => s<{ one: number }>`SELECT 1 AS one`)
        assert.strictEqual(Number(rows[0]?.one), 1)
      })
    )
    it.effect("the next test is refused with SharedSession: the tests would share one transaction", () =>
      Effect.gen(function* () {
        const error = yield* Effect.flip(Effect.flatMap(sql, (s) => s`SELECT 1`))
        assert.strictEqual(rootTag(error), "SharedSession", String(error))
        assert.include(String(error), "@effect/vitest")
      })
    )
  }
)
