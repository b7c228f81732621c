import { assert, layer } from "@effect/vitest"
import { PgServer } from "@sessionfx/testing"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as Pg from "pg"
import { postgres } from "../src/impls/index.js"
import { runOnce } from "../src/runner.js"
import { makePlan } from "../src/workload.js"
import { pgWorkload } from "../src/workloadPg.js"

const { createSchema, resetAccounts, checkConservation } = pgWorkload

// excludeTestServices: the live clock (the TestClock would freeze the timings and any retry backoff)
layer(PgServer.layer(), { timeout: 120_000, excludeTestServices: true })("transfer run on PostgreSQL", (it) => {
  for (const name of Object.keys(postgres.implementations)) {
    it.effect(`${name}: 200 transfers at concurrency 8 conserve money`, () =>
      Effect.gen(function* () {
        const server = yield* PgServer.PgServer
        const url = Redacted.value(server.url)
        // few accounts: the transfers contend for the same rows (and deadlock, and are retried)
        yield* Effect.promise(() => createSchema(url, 20))
        yield* Effect.promise(() => resetAccounts(url))
        const impl = postgres.implementations[name]!()
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

  it.effect("the conservation check sees a half-applied transfer", () =>
    Effect.gen(function* () {
      const server = yield* PgServer.PgServer
      const url = Redacted.value(server.url)
      yield* Effect.promise(() => createSchema(url, 20))
      yield* Effect.promise(async () => {
        const client = new Pg.Client({ connectionString: url })
        await client.connect()
        // the debit and the transfer row without the credit
        await client.query("UPDATE accounts SET balance = balance - 5 WHERE id = 1")
        await client.query("INSERT INTO transfers (src, dst, amount) VALUES (1, 2, 5)")
        await client.end()
      })
      const c = yield* Effect.promise(() => checkConservation(url, 20, 1))
      assert.isFalse(c.ok)
      assert.strictEqual(c.balanceSum, c.expectedSum - 5)
      yield* Effect.promise(() => resetAccounts(url))
      assert.isTrue((yield* Effect.promise(() => checkConservation(url, 20, 0))).ok)
    })
  )
})
