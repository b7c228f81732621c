/**
 * The README's example, type-checked and run in CI: units of work per call, the Engine provided once at the edge.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine, Session, SessionLive } from "@sessionfx/session"
import * as Config from "effect/Config"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"

export class Overdrawn extends Data.TaggedError("Overdrawn")<{ readonly account: number }> {}

const transfer = (from: number, to: number, amount: number) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient // the session's client: every statement joins its transaction
    yield* sql`UPDATE accounts SET balance = balance - ${amount} WHERE id = ${from}`
    yield* sql`UPDATE accounts SET balance = balance + ${amount} WHERE id = ${to}`
    const [row] = yield* sql<{ readonly balance: number }>`SELECT balance FROM accounts WHERE id = ${from}`
    if (row === undefined || Number(row.balance) < 0) return yield* new Overdrawn({ account: from }) // rolls back
  })

// one unit of work per call: the Layer spelling (Python's `with ManagedSession() as s:`) …
export const handle = (from: number, to: number, amount: number) =>
  transfer(from, to, amount).pipe(Effect.provide(SessionLive))
// … or the combinator spelling, with retries of deadlocks in a fresh transaction
export const handleWithRetry = (from: number, to: number, amount: number) =>
  Session.transact(transfer(from, to, amount), { retry: true })

export const EngineLive = Engine.layerConfig({
  url: Config.redacted("DATABASE_URL"),
  pool: { size: Config.integer("DB_POOL_SIZE").pipe(Config.withDefault(16)) }
})

export const main = Effect.forEach([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], (i) => handleWithRetry(i, i + 1, 10), {
  concurrency: "unbounded"
}).pipe(Effect.zipRight(handle(1, 2, 10)))

// in the README: main.pipe(Effect.provide(EngineLive), NodeRuntime.runMain)
export const program = main.pipe(Effect.provide(EngineLive))
