import { assert, layer } from "@effect/vitest"
import { Prng } from "@sessionfx/testing"
import * as Effect from "effect/Effect"
import type * as Client from "../src/Client.js"
import { startApp, sumBalances } from "./utils.js"
import { mariadb } from "./dialects.js"

/** Bounded by default; `SESSIONFX_SOAK=1` sends ten times as many lines. */
const LINES = process.env.SESSIONFX_SOAK === "1" ? 5000 : 500

/** Lines no valid request can be made of: each must get one error response and change nothing. */
const malformed = (random: () => number, accounts: ReadonlyArray<number>): string => {
  const pick = <A>(xs: ReadonlyArray<A>) => xs[Math.floor(random() * xs.length)]!
  const a = pick(accounts)
  const b = pick(accounts.filter((x) => x !== a))
  const kind = Math.floor(random() * 9)
  switch (kind) {
    case 0: {
      // random printable and control bytes (never a newline), starting with a non-space
      const n = 1 + Math.floor(random() * 200)
      let s = "#"
      for (let i = 0; i < n; i++) {
        const c = Math.floor(random() * 0x7f)
        s += c === 10 || c === 13 ? "x" : String.fromCharCode(c)
      }
      return s
    }
    case 1: {
      // a valid request cut short
      const full = JSON.stringify({ id: 1, op: "transfer", from: a, to: b, amount: 5 })
      return full.slice(0, 1 + Math.floor(random() * (full.length - 2)))
    }
    case 2:
      // amounts of the wrong type or out of range
      return JSON.stringify({
        id: 2,
        op: "transfer",
        from: a,
        to: b,
        amount: pick(["5.0", " 5", "0x5", -5, 0, 1.5, 1e308, null, true, [5], { v: 5 }, "NaN", 2 ** 63])
      })
    case 3:
      return JSON.stringify({ id: 3, op: pick(["transfr", "DROP TABLE accounts", "", "__proto__", "batch!"]), a })
    case 4:
      // deep nesting
      return "[".repeat(2000 + Math.floor(random() * 3000)) + "]".repeat(10)
    case 5:
      // an oversized line (the limit is 64 KiB)
      return JSON.stringify({ id: 5, op: "balance", account: a, pad: "x".repeat(70_000) })
    case 6:
      // accounts that are not numbers, or do not exist
      return JSON.stringify({ id: 6, op: "withdraw", account: pick(["1", -1, 1.5, null, 9_999_999]), amount: 1 })
    case 7:
      // a batch with one bad op: all or nothing
      return JSON.stringify({
        id: 7,
        op: "batch",
        ops: [
          { op: "transfer", from: a, to: b, amount: 1 },
          { op: "withdraw", account: b, amount: "lots" }
        ]
      })
    default:
      // JSON that is not an object, or SQL in a string field
      return pick(["42", '"transfer"', "null", "[]", JSON.stringify({ id: 8, op: "balance", account: "1 OR 1=1" })])
  }
}

layer(mariadb, { timeout: 120_000, excludeTestServices: true })("ledger protocol fuzzing", (it) => {
  it.scoped(`${LINES} random and malformed lines: no crash, an error for each, no balance changes`, () =>
    Effect.gen(function* () {
      const app = yield* startApp()
      const setup = yield* app.connect()
      const ids: Array<number> = []
      for (let i = 0; i < 4; i++) {
        const acc = yield* setup.call("create_account", { name: `fuzz${i}` })
        yield* setup.call("deposit", { account: acc.id, amount: 1000 })
        ids.push(acc.id)
      }
      const before = yield* Effect.forEach(ids, (account) => setup.call("balance", { account }))
      const random = Prng.make(20261121)
      let client: Client.LineClient = yield* app.connect()
      let errors = 0
      let closed = 0
      for (let i = 0; i < LINES; i++) {
        const line = malformed(random, ids)
        yield* client.send(line + "\n")
        const response = yield* client.next.pipe(
          Effect.timeoutFail({ duration: "10 seconds", onTimeout: () => new Error(`no answer to line ${i}`) }),
          Effect.either
        )
        if (response._tag === "Left") {
          if (response.left instanceof Error) return yield* Effect.die(response.left)
          // the server may close a connection after a protocol error: take a new one
          closed++
          client = yield* app.connect()
          continue
        }
        assert.isFalse(response.right.ok, `line ${i} was accepted: ${line.slice(0, 120)}`)
        assert.isString(response.right.error?.code)
        assert.notMatch(JSON.stringify(response.right), /SELECT|INSERT|UPDATE|at .*\.ts:\d+/)
        errors++
      }
      // the server is alive, serves a fresh connection, and nothing moved
      const probe = yield* app.connect()
      const after = yield* Effect.forEach(ids, (account) => probe.call("balance", { account }))
      assert.deepStrictEqual(
        after.map((x: { balance: number }) => x.balance),
        before.map((x: { balance: number }) => x.balance)
      )
      assert.strictEqual(yield* sumBalances(app.sql, ids), 4000)
      assert.strictEqual(errors + closed, LINES)
      assert.isAbove(errors, LINES / 2)
    })
  )
})
