/**
 * The suite every query-builder integration passes: inside sessionfx units of work, against a real server, its
 * statements run on the unit's connection, are rolled back with the unit, nest as savepoints and are re-run when the
 * unit is retried.
 */
import { assert, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import type { Engine } from "@sessionfx/session"
import { Session, SessionError } from "@sessionfx/session"
import type { MysqlServer } from "@sessionfx/testing"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import { balances, createAccounts } from "../src/Accounts.js"

export interface Integration<R> {
  readonly name: string
  /** The builder's service on an Engine on a private server. */
  readonly layer: Layer.Layer<R | Engine.Engine | SqlClient.SqlClient | MysqlServer.MysqlServer, unknown>
  /** `UPDATE accounts SET balance = balance + amount WHERE id = id`, built with the builder. */
  readonly credit: (id: number, amount: number) => Effect.Effect<unknown, unknown, R>
  /** `SELECT CONNECTION_ID()`, built with the builder. */
  readonly connectionId: Effect.Effect<number, unknown, R>
  /** The example program of the integration. */
  readonly program: Effect.Effect<
    { overdrawn: string; balances: string },
    unknown,
    R | Engine.Engine | SqlClient.SqlClient
  >
}

export const joinsTheUnit = <R>(integration: Integration<R>) => {
  const credit = integration.credit
  layer(integration.layer, { timeout: 120_000, excludeTestServices: true })(
    `${integration.name} in a unit of work`,
    (it) => {
      it.effect("runs on the unit's connection and is rolled back with it", () =>
        Effect.gen(function* () {
          yield* createAccounts([100, 0])
          const exit = yield* Effect.exit(
            Session.transact(
              Effect.gen(function* () {
                assert.strictEqual(yield* integration.connectionId, yield* Session.connectionId)
                yield* credit(1, 5)
                assert.strictEqual(yield* balances, "1:105 2:0", "the unit sees its own write")
                return yield* Effect.fail("give up" as const)
              })
            )
          )
          assert.deepStrictEqual(exit._tag, "Failure")
          assert.strictEqual(yield* balances, "1:100 2:0")
        })
      )

      it.effect("a constraint violation is the unit's typed error (CheckViolation), as through sql", () =>
        Effect.gen(function* () {
          yield* createAccounts([100, 0])
          const sql = yield* SqlClient.SqlClient
          yield* sql`ALTER TABLE accounts ADD CONSTRAINT non_negative CHECK (balance >= 0)`
          const error = yield* Effect.flip(Session.transact(credit(1, -1_000)))
          assert.strictEqual((error as { readonly _tag?: unknown })._tag, "CheckViolation", String(error))
          assert.isFalse(SessionError.isRetryable(error))
          assert.strictEqual(yield* balances, "1:100 2:0")
        })
      )

      it.effect("a nested transact is a savepoint: its writes are rolled back alone", () =>
        Effect.gen(function* () {
          yield* createAccounts([100, 0])
          yield* Session.transact(
            Effect.gen(function* () {
              yield* credit(1, 1)
              const nested = yield* Effect.flip(
                Session.transact(Effect.zipRight(credit(2, 50), Effect.fail("nested fails" as const)))
              )
              assert.strictEqual(nested, "nested fails")
              yield* credit(1, 1)
            })
          )
          assert.strictEqual(yield* balances, "1:102 2:0")
        })
      )

      it.effect(
        "retry: true re-runs a deadlocked unit whose statements are all the builder's, in a fresh transaction",
        () =>
          Effect.gen(function* () {
            yield* createAccounts([0, 0])
            const aLocked = yield* Deferred.make<void>()
            const bLocked = yield* Deferred.make<void>()
            let attempts = 0
            // a locks 1 then 2, b locks 2 then 1; on the first attempts each waits until the other holds its first row
            const unit = (
              first: number,
              second: number,
              mine: Deferred.Deferred<void>,
              theirs: Deferred.Deferred<void>
            ) =>
              Session.transact(
                Effect.gen(function* () {
                  attempts++
                  yield* credit(first, 1)
                  if (!(yield* Deferred.isDone(mine))) {
                    yield* Deferred.succeed(mine, undefined)
                    yield* Deferred.await(theirs)
                  }
                  yield* credit(second, 1)
                }),
                { retry: true }
              )
            yield* Effect.all([unit(1, 2, aLocked, bLocked), unit(2, 1, bLocked, aLocked)], { concurrency: 2 })
            assert.strictEqual(attempts, 3, "one deadlock victim, retried once")
            assert.strictEqual(yield* balances, "1:2 2:2", "each unit applied exactly once")
          })
      )

      it.effect("the example program", () =>
        Effect.gen(function* () {
          const result = yield* integration.program
          assert.deepStrictEqual(result, {
            overdrawn: "account 1 would be overdrawn: rolled back",
            balances: "1:70 2:20 3:10"
          })
        })
      )
    }
  )
}
