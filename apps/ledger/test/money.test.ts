import { assert, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import type * as Client from "../src/Client.js"
import { dialects } from "./dialects.js"
import { http, startApp } from "./utils.js"

const MAX = 9223372036854775807n

/** The exact balance in the database (as text: no driver conversion in between). */
const stored = (sql: Effect.Effect.Success<ReturnType<typeof startApp>>["sql"], id: number) =>
  Effect.map(
    sql.onDialectOrElse({
      pg: () => sql<{ b: string }>`SELECT CAST(balance AS text) AS b FROM accounts WHERE id = ${id}`,
      orElse: () => sql<{ b: string }>`SELECT CAST(balance AS CHAR) AS b FROM accounts WHERE id = ${id}`
    }),
    (rows) => BigInt(rows[0]!.b)
  )

const transfersOf = (sql: Effect.Effect.Success<ReturnType<typeof startApp>>["sql"], id: number) =>
  Effect.map(
    sql<{ n: number | string }>`SELECT COUNT(*) AS n FROM transfers WHERE src = ${id} OR dst = ${id}`,
    (rows) => Number(rows[0]!.n)
  )

const account = (c: Client.LineClient, name: string) => Effect.map(c.call("create_account", { name }), (a) => a.id)

for (const [name, db] of dialects) {
  layer(db, { timeout: 120_000, excludeTestServices: true })(`ledger money and keys (${name})`, (it) => {
    it.scoped("money above 2^53 is exact on the wire, in SQL and over HTTP", () =>
      Effect.gen(function* () {
        const app = yield* startApp()
        const c = yield* app.connect()
        const a = yield* account(c, "rich")
        const b = yield* account(c, "other")
        // ten deposits of the largest amount: 10^16, above 2^53
        yield* c.call("batch", {
          ops: Array.from({ length: 10 }, () => ({ op: "deposit", account: a, amount: 1_000_000_000_000_000 }))
        })
        const one = yield* c.call("deposit", { account: a, amount: 1 })
        assert.strictEqual(one.amount, 1)
        const r = yield* c.call("balance", { account: a })
        assert.strictEqual(r.balance, "10000000000000001")
        assert.strictEqual(yield* stored(app.sql, a), 10_000_000_000_000_001n)
        // transfers of 1 move exactly 1
        yield* c.call("transfer", { from: a, to: b, amount: 1 })
        yield* c.call("transfer", { from: a, to: b, amount: "3" })
        assert.strictEqual(yield* stored(app.sql, a), 9_999_999_999_999_997n)
        assert.strictEqual((yield* c.call("balance", { account: b })).balance, 4)
        // over HTTP the same exact value, not a decode error
        const h = yield* http(app.baseUrl, "GET", `/accounts/${a}`)
        assert.deepStrictEqual([h.status, h.json.balance], [200, "9999999999999997"])
        const w = yield* http(app.baseUrl, "POST", `/accounts/${a}/withdraw`, { amount: "999999999999997" })
        assert.deepStrictEqual([w.status, w.json.amount], [200, 999_999_999_999_997])
        assert.strictEqual(yield* stored(app.sql, a), 9_000_000_000_000_000n)
        assert.strictEqual((yield* http(app.baseUrl, "GET", `/accounts/${a}`)).json.balance, 9_000_000_000_000_000)
      })
    )

    it.scoped("an amount over the limit is amount_too_large and moves nothing", () =>
      Effect.gen(function* () {
        const app = yield* startApp()
        const c = yield* app.connect()
        const a = yield* account(c, "a")
        for (const amount of [1_000_000_000_000_001, "1000000000000001", "9223372036854775808"]) {
          const r = yield* c.request({ id: 1, op: "deposit", account: a, amount })
          assert.deepStrictEqual([r.error?.code, r.error?.limit], ["amount_too_large", 1_000_000_000_000_000])
        }
        // a JSON number that is not a safe integer cannot be read exactly: it is refused, not rounded
        const unsafe = yield* c.request({ id: 2, op: "deposit", account: a, amount: 2 ** 60 })
        assert.strictEqual(unsafe.error?.code, "invalid_request")
        const h = yield* http(app.baseUrl, "POST", `/accounts/${a}/deposit`, { amount: "1000000000000001" })
        assert.deepStrictEqual([h.status, h.json._tag], [422, "AmountTooLarge"])
        assert.strictEqual(yield* stored(app.sql, a), 0n)
        assert.strictEqual(yield* transfersOf(app.sql, a), 0)
      })
    )

    it.scoped("at the BIGINT ceiling a deposit or transfer is balance_overflow, never a silent no-op", () =>
      Effect.gen(function* () {
        const app = yield* startApp()
        const c = yield* app.connect()
        const full = yield* account(c, "full")
        const src = yield* account(c, "src")
        yield* c.call("deposit", { account: src, amount: 100 })
        yield* app.sql`UPDATE accounts SET balance = 9223372036854775800 WHERE id = ${full}`
        const fits = yield* c.call("deposit", { account: full, amount: 7 })
        assert.strictEqual(fits.kind, "deposit")
        assert.strictEqual(yield* stored(app.sql, full), MAX)
        const r = yield* c.request({ id: 1, op: "deposit", account: full, amount: 1 })
        assert.deepStrictEqual(
          [r.error?.code, r.error?.balance, r.error?.limit],
          ["balance_overflow", MAX.toString(), MAX.toString()]
        )
        const t = yield* c.request({ id: 2, op: "transfer", from: src, to: full, amount: 1 })
        assert.strictEqual(t.error?.code, "balance_overflow")
        const h = yield* http(app.baseUrl, "POST", `/accounts/${full}/deposit`, { amount: 1 })
        assert.deepStrictEqual([h.status, h.json._tag], [409, "BalanceOverflow"])
        assert.strictEqual(yield* stored(app.sql, full), MAX)
        assert.strictEqual(yield* stored(app.sql, src), 100n)
        assert.strictEqual(yield* transfersOf(app.sql, full), 1)
      })
    )

    it.scoped("idempotency keys are compared byte for byte", () =>
      Effect.gen(function* () {
        const app = yield* startApp()
        const c = yield* app.connect()
        const a = yield* account(c, "keys")
        const tag = `${a}-`
        // pairs the old collation (utf8mb4_general_ci) took for one key
        const pairs: ReadonlyArray<readonly [string, string]> = [
          [`${tag}Pay-1`, `${tag}pay-1`],
          [`${tag}pay-2`, `${tag}pay-2 `],
          [`${tag}résumé`, `${tag}resume`],
          [`${tag}caf\u00e9`, `${tag}cafe\u0301`], // NFC and NFD of the same text: different bytes
          [`${tag}ß`, `${tag}ss`]
        ]
        let expected = 0n
        for (const [first, second] of pairs) {
          const x = yield* c.call("deposit", { account: a, amount: 10, idempotencyKey: first })
          const y = yield* c.call("deposit", { account: a, amount: 10, idempotencyKey: second })
          expected += 20n
          assert.notStrictEqual(x.id, y.id, `${JSON.stringify(first)} and ${JSON.stringify(second)} are different keys`)
          assert.deepStrictEqual([x.idempotencyKey, y.idempotencyKey], [first, second])
          // each key still replays its own transfer, exactly
          const again = yield* c.call("deposit", { account: a, amount: 10, idempotencyKey: second })
          assert.deepStrictEqual(again, y)
          const conflict = yield* c.request({ id: 1, op: "deposit", account: a, amount: 11, idempotencyKey: first })
          assert.strictEqual(conflict.error?.code, "idempotency_conflict")
        }
        assert.strictEqual(yield* stored(app.sql, a), expected)
        assert.strictEqual(yield* transfersOf(app.sql, a), pairs.length * 2)
        const column = yield* app.sql<{ t: string }>`
        SELECT data_type AS t FROM information_schema.columns
        WHERE table_schema = ${name === "postgres" ? app.sql.literal("current_schema()") : app.sql.literal("DATABASE()")}
          AND table_name = 'transfers' AND column_name = 'idempotency_key'`
        assert.strictEqual(column[0]!.t.toLowerCase(), name === "postgres" ? "bytea" : "varbinary")
      })
    )
  })
}
