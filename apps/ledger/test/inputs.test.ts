/**
 * Every input costs bounded CPU and memory and ends in a clear error for that request only (issue 23, items 1, 3, 5):
 * deep nesting anywhere in a request, validation errors of any size, and text that is not valid Unicode — on both
 * transports, over real sockets.
 */
import { assert, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import { rawClient } from "./raw.js"
import { countTransfers, http, startApp, TOKEN } from "./utils.js"
import { mariadb } from "./dialects.js"

const deep = (levels: number, leaf = "1") => "[".repeat(levels) + leaf + "]".repeat(levels)
const deepObject = (levels: number) => '{"a":'.repeat(levels) + "1" + "}".repeat(levels)

/** Raw bytes as one HTTP POST with a JSON content type. */
const post = (baseUrl: string, path: string, body: string | Uint8Array) =>
  Effect.promise(async () => {
    const response = await fetch(baseUrl + path, {
      method: "POST",
      headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
      body
    })
    const text = await response.text()
    return { status: response.status, text, json: text === "" ? undefined : JSON.parse(text) }
  })

layer(mariadb, { timeout: 120_000, excludeTestServices: true })("ledger inputs are bounded", (it) => {
  it.scoped(
    "TCP: a request nested thousands of levels deep, anywhere, is refused; the process and others carry on",
    () =>
      Effect.gen(function* () {
        const app = yield* startApp()
        const c = yield* rawClient(app.tcp.port)
        const other = yield* app.connect()
        const a = (yield* other.call("create_account", { name: "deep" })).id
        const lines = [
          `{"id":1,"op":"deposit","account":${deep(5000)},"amount":1}`,
          `{"id":2,"op":"transfer","from":${deepObject(5000)},"to":1,"amount":1}`,
          `{"id":3,"op":"batch","ops":${deep(5000, '{"op":"balance","account":1}')}}`,
          `{"id":4,"op":"batch","ops":[{"op":"deposit","account":1,"amount":${deep(3000)}}]}`,
          `{"id":5,"op":"history","account":1,"limit":${deepObject(8000)}}`,
          `{"id":6,"op":"create_account","name":${deep(4000, '"x"')}}`,
          `{"id":${deep(5000)},"op":"balance","account":${deep(5000)}}`
        ]
        for (const line of lines) assert.isBelow(line.length, 64 * 1024)
        yield* c.write(lines.join("\n") + "\n")
        const answers = yield* Effect.forEach(lines, () => Effect.orDie(c.next))
        assert.deepStrictEqual(
          answers.map((r) => [r.id, r.error?.code]),
          [
            [1, "invalid_request"],
            [2, "invalid_request"],
            [3, "invalid_request"],
            [4, "invalid_request"],
            [5, "invalid_request"],
            [6, "invalid_request"],
            [null, "invalid_request"]
          ]
        )
        for (const r of answers) assert.isBelow(JSON.stringify(r).length, 2048)
        // the same connection and another one still work, and nothing was moved
        yield* c.write(JSON.stringify({ id: "after", op: "balance", account: a }) + "\n")
        const after = yield* Effect.orDie(c.next)
        assert.deepStrictEqual([after.id, after.result.balance], ["after", 0])
        assert.strictEqual((yield* other.call("balance", { account: a })).balance, 0)
      })
  )

  it.scoped("HTTP: a deeply nested JSON body is a 400 with a JSON body, on every route", () =>
    Effect.gen(function* () {
      const app = yield* startApp()
      const a = (yield* http(app.baseUrl, "POST", "/accounts", { name: "deep-http" })).json.id
      const bodies: ReadonlyArray<readonly [string, string]> = [
        ["/transfers", `{"from":${deep(5000)},"to":1,"amount":1}`],
        ["/batch", `{"ops":${deep(5000)}}`],
        [`/accounts/${a}/deposit`, `{"amount":${deepObject(5000)}}`],
        ["/accounts", deep(10000)]
      ]
      for (const [path, body] of bodies) {
        const r = yield* post(app.baseUrl, path, body)
        assert.strictEqual(r.status, 400, path)
        assert.strictEqual(r.json._tag, "InvalidRequest", path)
        assert.match(r.json.message, /nests at most/)
      }
      assert.strictEqual((yield* http(app.baseUrl, "GET", `/accounts/${a}`)).json.balance, 0)
    })
  )

  it.scoped("TCP: an error answer is bounded in size and cost: the first few problems and a count", () =>
    Effect.gen(function* () {
      const app = yield* startApp()
      const c = yield* rawClient(app.tcp.port)
      const items = Array.from({ length: 20_000 }, () => "1")
      const batch = `{"id":"big","op":"batch","ops":[${items.join(",")}]}`
      const longValue = `{"id":"long","op":"deposit","account":"${"x".repeat(60_000)}","amount":1}`
      const wide = `{"id":"wide","op":"transfer","from":[${Array.from({ length: 15_000 }, () => "0").join(",")}],"to":[],"amount":{}}`
      const longOp = `{"id":"op","op":"a${"\ud83d\ude00".repeat(15_000)}"}`
      const started = performance.now()
      yield* c.write([batch, longValue, wide, longOp].join("\n") + "\n")
      const all = yield* Effect.forEach([1, 2, 3, 4], () => Effect.orDie(c.next))
      const answers = all.slice(0, 3)
      const unknown = all[3]
      // an unknown operation is named in its answer, cut to its first 100 UTF-16 units (never half an emoji)
      assert.deepStrictEqual([unknown.id, unknown.error.code], ["op", "unknown_operation"])
      assert.strictEqual(unknown.error.op, "a" + "\ud83d\ude00".repeat(49) + "…")
      assert.isBelow(JSON.stringify(unknown).length, 1024)
      const elapsed = performance.now() - started
      assert.deepStrictEqual(
        answers.map((r) => [r.id, r.error.code]),
        [
          ["big", "invalid_request"],
          ["long", "invalid_request"],
          ["wide", "invalid_request"]
        ]
      )
      for (const r of answers) {
        assert.isBelow(JSON.stringify(r).length, 4096)
        assert.isAtMost(r.error.problems.length, 5)
        assert.isAbove(r.error.problems.length, 0)
      }
      assert.isAtLeast(answers[0].error.count, 20_000)
      assert.match(answers[0].error.message, /problems in all/)
      assert.match(answers[0].error.problems[0].path, /^ops\[0\]/)
      assert.isBelow(elapsed, 3_000)
    })
  )

  it.scoped("HTTP: an error answer is bounded in size: the first few problems and a count", () =>
    Effect.gen(function* () {
      const app = yield* startApp()
      const items = Array.from({ length: 20_000 }, () => "1")
      const big = yield* post(app.baseUrl, "/batch", `{"ops":[${items.join(",")}]}`)
      assert.strictEqual(big.status, 400)
      assert.isBelow(big.text.length, 4096)
      const long = yield* post(app.baseUrl, "/transfers", `{"from":"${"x".repeat(500_000)}","to":1,"amount":1}`)
      assert.strictEqual(long.status, 400)
      assert.isBelow(long.text.length, 4096, long.text.slice(0, 300))
      assert.isAtMost(long.json.issues.length, 5)
      assert.isAtLeast(long.json.count, 1)
    })
  )

  it.scoped(
    "TCP: keys and names that are not valid Unicode are refused, never re-encoded; distinct keys stay distinct",
    () =>
      Effect.gen(function* () {
        const app = yield* startApp()
        const c = yield* rawClient(app.tcp.port)
        const other = yield* app.connect()
        const a = (yield* other.call("create_account", { name: "u-a" })).id
        const b = (yield* other.call("create_account", { name: "u-b" })).id
        yield* other.call("deposit", { account: a, amount: 100 })
        // lone surrogates, written as JSON escapes (the line itself is valid UTF-8)
        const refused = [
          `{"id":1,"op":"transfer","from":${a},"to":${b},"amount":1,"idempotencyKey":"k\\ud800"}`,
          `{"id":2,"op":"transfer","from":${a},"to":${b},"amount":1,"idempotencyKey":"k\\udc00"}`,
          `{"id":3,"op":"deposit","account":${a},"amount":1,"idempotencyKey":"\\udfff"}`,
          `{"id":4,"op":"withdraw","account":${a},"amount":1,"idempotencyKey":"\\ud83d"}`,
          `{"id":5,"op":"create_account","name":"bad\\ud800name"}`,
          `{"id":6,"op":"batch","ops":[{"op":"deposit","account":${a},"amount":1,"idempotencyKey":"b\\ud800"}]}`
        ]
        yield* c.write(refused.join("\n") + "\n")
        const answers = yield* Effect.forEach(refused, () => Effect.orDie(c.next))
        for (const r of answers) {
          assert.strictEqual(r.error?.code, "invalid_request", JSON.stringify(r))
          assert.match(r.error.message, /Unicode/)
        }
        // bytes that are not UTF-8 at all: the line is refused, not decoded with U+FFFD
        const key1 = Buffer.concat([
          Buffer.from(`{"id":"b1","op":"transfer","from":${a},"to":${b},"amount":1,"idempotencyKey":"x`),
          Buffer.from([0xff]),
          Buffer.from('"}\n')
        ])
        const key2 = Buffer.concat([
          Buffer.from(`{"id":"b2","op":"transfer","from":${a},"to":${b},"amount":1,"idempotencyKey":"x`),
          Buffer.from([0xc3, 0x28]),
          Buffer.from('"}\n')
        ])
        yield* c.write(Buffer.concat([key1, key2]))
        const [r1, r2] = yield* Effect.forEach([1, 2], () => Effect.orDie(c.next))
        assert.deepStrictEqual([r1.error?.code, r2.error?.code], ["invalid_request", "invalid_request"])
        assert.match(r1.error.message, /UTF-8/)
        // a valid pair (an emoji) is a key like any other, distinct from its neighbours
        const good = yield* other.call("transfer", { from: a, to: b, amount: 1, idempotencyKey: "k\ud83d\ude00" })
        const next = yield* other.call("transfer", { from: a, to: b, amount: 2, idempotencyKey: "k\ud83d\ude01" })
        assert.notStrictEqual(good.id, next.id)
        assert.strictEqual(good.idempotencyKey, "k\ud83d\ude00")
        assert.strictEqual(yield* countTransfers(app.sql, [a, b]), 3)
        assert.strictEqual((yield* other.call("balance", { account: b })).balance, 3)
      })
  )

  it.scoped("HTTP: keys and names that are not valid Unicode are refused with 400, never re-encoded", () =>
    Effect.gen(function* () {
      const app = yield* startApp()
      const a = (yield* http(app.baseUrl, "POST", "/accounts", { name: "hu-a" })).json.id
      const b = (yield* http(app.baseUrl, "POST", "/accounts", { name: "hu-b" })).json.id
      yield* http(app.baseUrl, "POST", `/accounts/${a}/deposit`, { amount: 100 })
      const bodies: ReadonlyArray<readonly [string, string]> = [
        ["/transfers", `{"from":${a},"to":${b},"amount":1,"idempotencyKey":"k\\ud800"}`],
        ["/transfers", `{"from":${a},"to":${b},"amount":1,"idempotencyKey":"k\\udc00"}`],
        [`/accounts/${a}/withdraw`, `{"amount":1,"idempotencyKey":"\\ud800"}`],
        ["/accounts", `{"name":"n\\udc00"}`]
      ]
      for (const [path, body] of bodies) {
        const r = yield* post(app.baseUrl, path, body)
        assert.strictEqual(r.status, 400, `${path} ${body}`)
        assert.match(r.text, /Unicode/)
      }
      const notUtf8 = yield* post(
        app.baseUrl,
        "/transfers",
        Buffer.concat([
          Buffer.from(`{"from":${a},"to":${b},"amount":1,"idempotencyKey":"x`),
          Buffer.from([0xff, 0x22, 0x7d])
        ])
      )
      assert.deepStrictEqual([notUtf8.status, notUtf8.json._tag], [400, "InvalidRequest"])
      assert.match(notUtf8.json.message, /UTF-8/)
      assert.strictEqual(yield* countTransfers(app.sql, [a, b]), 1)
    })
  )
})
