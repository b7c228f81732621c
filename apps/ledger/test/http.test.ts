import { assert, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import { dialects } from "./dialects.js"
import { http, startApp, TOKEN } from "./utils.js"

for (const [name, db] of dialects) {
  layer(db, { timeout: 120_000, excludeTestServices: true })(`ledger HTTP API (${name})`, (it) => {
    it.scoped("every operation over HTTP, with typed errors and statuses", () =>
      Effect.gen(function* () {
        const { baseUrl } = yield* startApp()
        const a = yield* http(baseUrl, "POST", "/accounts", { name: "alice" })
        assert.strictEqual(a.status, 201)
        const b = yield* http(baseUrl, "POST", "/accounts", { name: "bob" })
        const dep = yield* http(baseUrl, "POST", `/accounts/${a.json.id}/deposit`, { amount: 500 })
        assert.deepStrictEqual([dep.status, dep.json.kind, dep.json.amount], [200, "deposit", 500])
        const wd = yield* http(baseUrl, "POST", `/accounts/${a.json.id}/withdraw`, { amount: 100 })
        assert.strictEqual(wd.json.kind, "withdrawal")
        const body = { from: a.json.id, to: b.json.id, amount: 150, idempotencyKey: `h-${a.json.id}` }
        const tr = yield* http(baseUrl, "POST", "/transfers", body)
        const retry = yield* http(baseUrl, "POST", "/transfers", body)
        assert.deepStrictEqual(retry.json, tr.json)
        const bal = yield* http(baseUrl, "GET", `/accounts/${a.json.id}`)
        assert.deepStrictEqual(bal.json, { id: a.json.id, name: "alice", balance: 250 })
        const hist = yield* http(baseUrl, "GET", `/accounts/${a.json.id}/history?limit=2`)
        assert.deepStrictEqual([hist.json.items.length, hist.json.next], [2, wd.json.id])
        const batch = yield* http(baseUrl, "POST", "/batch", {
          ops: [
            { op: "deposit", account: b.json.id, amount: 1 },
            { op: "withdraw", account: b.json.id, amount: 1000 }
          ]
        })
        assert.deepStrictEqual([batch.status, batch.json._tag], [409, "InsufficientFunds"])
        assert.strictEqual((yield* http(baseUrl, "GET", `/accounts/${b.json.id}`)).json.balance, 150)
        const missing = yield* http(baseUrl, "GET", "/accounts/99999999")
        assert.deepStrictEqual([missing.status, missing.json._tag], [404, "AccountNotFound"])
        const conflict = yield* http(baseUrl, "POST", "/transfers", { ...body, amount: 1 })
        assert.strictEqual(conflict.status, 422)
        const bad = yield* http(baseUrl, "POST", "/transfers", { from: "x", amount: 1.5 })
        assert.strictEqual(bad.status, 400)
        const malformed = yield* http(baseUrl, "POST", "/transfers", "{nope")
        assert.strictEqual(malformed.status, 400)
        assert.notMatch(bad.text + malformed.text + missing.text, /SELECT|INSERT|\.ts:\d+/)
      })
    )

    it.scoped("bearer token: no token, no data", () =>
      Effect.gen(function* () {
        const { baseUrl } = yield* startApp()
        const none = yield* http(baseUrl, "GET", "/accounts/1", undefined, null)
        assert.deepStrictEqual([none.status, none.json._tag], [401, "Unauthorized"])
        const wrong = yield* http(baseUrl, "POST", "/accounts", { name: "x" }, "wrong")
        assert.strictEqual(wrong.status, 401)
        assert.notInclude(wrong.text, TOKEN)
      })
    )

    it.scoped("the start-up summary reports the durability settings of the database in use", () =>
      Effect.gen(function* () {
        const logs: Array<string> = []
        yield* startApp({}, { logs })
        const summary = logs.find((l) => l.includes('message="ledger started"'))
        assert.isDefined(summary)
        // the test servers trade durability for speed; the summary says so, in the database's own terms
        assert.match(
          summary!,
          name === "postgres"
            ? /durability="not fully durable \(fsync=off, synchronous_commit=off, full_page_writes=off\)"/
            : /durability="(not fully )?durable \(innodb_flush_log_at_trx_commit=\d, doublewrite (on|off)\)"/
        )
      })
    )

    it.scoped("health, metrics, OpenAPI and docs", () =>
      Effect.gen(function* () {
        const { baseUrl } = yield* startApp()
        yield* http(baseUrl, "POST", "/accounts", { name: "m" })
        const health = yield* http(baseUrl, "GET", "/health", undefined, null)
        assert.strictEqual(health.status, 200)
        assert.strictEqual(health.json.database.reachable, true)
        assert.isAbove(health.json.pool.size, 0)
        const metrics = yield* http(baseUrl, "GET", "/metrics", undefined, null)
        assert.include(metrics.type, "text/plain")
        assert.match(metrics.text, /# TYPE ledger_request_duration_ms histogram/)
        assert.match(metrics.text, /ledger_request_duration_ms_bucket\{.*op="create_account".*le="\+Inf"\} \d+/)
        assert.match(metrics.text, /sessionfx_session_commits_total/)
        assert.match(metrics.text, /sessionfx_pool_in_use/)
        const openapi = yield* http(baseUrl, "GET", "/openapi.json", undefined, null)
        assert.strictEqual(openapi.json.openapi, "3.1.0")
        assert.property(openapi.json.paths, "/transfers")
        const docs = yield* http(baseUrl, "GET", "/docs", undefined, null)
        assert.include(docs.text, "swagger-ui")
      })
    )
  })
}
