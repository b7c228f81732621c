import { assert, describe, it, layer } from "@effect/vitest"
import { MysqlServer } from "@sessionfx/testing"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import { mariadb } from "../src/impls/index.js"
import { runOnce } from "../src/runner.js"
import { runScale } from "../src/stress.js"
import { checkConservation, createSchema, makePlan, resetAccounts } from "../src/workload.js"

describe("makePlan", () => {
  it("is deterministic and never transfers to the same account", () => {
    const p1 = makePlan(1000, 10, 7)
    const p2 = makePlan(1000, 10, 7)
    assert.deepStrictEqual(p1, p2)
    for (let i = 0; i < p1.size; i++) {
      assert.notStrictEqual(p1.src[i], p1.dst[i])
      assert.isTrue(p1.src[i]! >= 1 && p1.src[i]! <= 10 && p1.dst[i]! >= 1 && p1.dst[i]! <= 10)
      assert.isTrue(p1.amount[i]! >= 1 && p1.amount[i]! <= 100)
    }
  })
})

// excludeTestServices: the live clock (the TestClock would freeze the timings and any retry backoff)
layer(MysqlServer.layer(), { timeout: 120_000, excludeTestServices: true })("transfer run", (it) => {
  for (const name of ["mysql2", "sessionfx-transact"]) {
    it.effect(`${name}: 200 transfers at concurrency 8 conserve money`, () =>
      Effect.gen(function* () {
        const server = yield* MysqlServer.MysqlServer
        const url = Redacted.value(server.url)
        // few accounts: the transfers contend for the same rows
        yield* Effect.promise(() => createSchema(url, 20))
        yield* Effect.promise(() => resetAccounts(url))
        const impl = mariadb.implementations[name]!()
        yield* Effect.acquireUseRelease(
          Effect.promise(() => impl.setup(url)),
          () =>
            Effect.gen(function* () {
              const m = yield* Effect.promise(() => runOnce(impl, makePlan(200, 20, 1), 8, { done: 0 }))
              assert.strictEqual(m.failed, 0, m.errors.join("\n"))
              assert.strictEqual(m.completed, 200)
              const c = yield* Effect.promise(() => checkConservation(url, 20, m.completed))
              assert.isTrue(c.ok, JSON.stringify(c))
              assert.strictEqual(c.transferRows, 200)
              assert.isAbove(c.movedAmount, 0)
            }),
          () => Effect.promise(() => impl.close())
        )
      })
    )
  }

  for (const spawn of ["fiber", "forEach"] as const) {
    it.effect(`scale (${spawn}): 400 units waiting at once on the pool complete in order and conserve money`, () =>
      Effect.gen(function* () {
        const server = yield* MysqlServer.MysqlServer
        const url = Redacted.value(server.url)
        yield* Effect.promise(() => createSchema(url, 50))
        const progress = { done: 0 }
        const r = yield* Effect.promise(() => runScale(url, 50, 400, 3, spawn, progress))
        assert.strictEqual(r.failed, 0)
        assert.strictEqual(r.completed, 400)
        assert.strictEqual(progress.done, 400)
        assert.strictEqual(r.spawn, spawn)
        // the pool serves its waiters first come, first served: no unit enters more than a pool's width out of order
        assert.isAtMost(r.maxRankDisplacement, r.pool)
        assert.strictEqual(r.inOrderFraction, 1)
        assert.isTrue(r.conservation.ok, JSON.stringify(r.conservation))
        assert.strictEqual(r.conservation.transferRows, 400)
        assert.isAbove(r.peakRssMb, 0)
      })
    )
  }
})
