/**
 * Credentials (issue 23, items 8-10): a token too short to be safe refuses to start, tokens are compared in constant
 * time, failed attempts have a per-peer budget with backoff that cannot lock out other peers, and no credential is
 * ever logged.
 */
import { assert, describe, it, layer } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Redacted from "effect/Redacted"
import * as Http from "node:http"
import * as AuthGuard from "../src/AuthGuard.js"
import * as Config from "../src/Config.js"
import { rawClient } from "./raw.js"
import { http, startApp, TOKEN } from "./utils.js"
import { mariadb } from "./dialects.js"

const fromEnv = (env: Record<string, string>) =>
  Config.fromEnv.pipe(
    Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries({ LEDGER_DATA_DIR: ".tmp/x", ...env })))),
    Effect.either
  )

/** One HTTP GET from a chosen local address. */
const getFrom = (baseUrl: string, path: string, localAddress: string, token: string) =>
  Effect.async<{ status: number; body: string }>((resume) => {
    const request = Http.request(
      baseUrl + path,
      { method: "GET", localAddress, headers: { authorization: `Bearer ${token}` }, agent: false },
      (response) => {
        let body = ""
        response.on("data", (d) => (body += d))
        response.on("end", () => resume(Effect.succeed({ status: response.statusCode ?? 0, body })))
      }
    )
    request.on("error", (e) => resume(Effect.die(e)))
    request.end()
  })

describe("ledger tokens", () => {
  it.effect("a token shorter than 16 characters (empty included) is a configuration error; 16 is accepted", () =>
    Effect.gen(function* () {
      for (const token of ["", "short", "x".repeat(15)]) {
        const result = yield* fromEnv({ LEDGER_TOKEN: token })
        assert.isTrue(Either.isLeft(result), JSON.stringify(token))
        if (Either.isLeft(result)) assert.match(String(result.left), /LEDGER_TOKEN must be at least 16 characters/)
      }
      const ok = yield* fromEnv({ LEDGER_TOKEN: "x".repeat(16) })
      assert.isTrue(Either.isRight(ok))
    })
  )

  it("tokens are compared by digest: any length, never equal to the empty string", () => {
    const expected = Redacted.make(TOKEN)
    assert.isTrue(Config.tokenMatches(expected, TOKEN))
    for (const presented of ["", TOKEN.slice(0, -1), TOKEN + "x", "x".repeat(10_000)]) {
      assert.isFalse(Config.tokenMatches(expected, presented))
    }
  })

  it("the budget: free failures, then doubling waits per peer; other peers and successes unaffected", () => {
    let now = 0
    const guard = AuthGuard.make({ freeFailures: 3, baseDelayMs: 1000, maxDelayMs: 8000, maxPeers: 2 }, () => now)
    for (let i = 0; i < 2; i++) guard.failed("10.0.0.1")
    assert.strictEqual(guard.waitFor("10.0.0.1"), 0)
    guard.failed("10.0.0.1")
    assert.strictEqual(guard.waitFor("10.0.0.1"), 1000)
    assert.strictEqual(guard.waitFor("::ffff:10.0.0.1"), 1000)
    assert.strictEqual(guard.waitFor("10.0.0.2"), 0)
    now = 1000
    guard.failed("10.0.0.1")
    assert.strictEqual(guard.waitFor("10.0.0.1"), 2000)
    for (let i = 0; i < 10; i++) guard.failed("10.0.0.1")
    assert.strictEqual(guard.waitFor("10.0.0.1"), 8000)
    // a quiet peer starts afresh; a success forgets it
    now = 1000 + 16_001
    assert.strictEqual(guard.waitFor("10.0.0.1"), 0)
    for (let i = 0; i < 3; i++) guard.failed("10.0.0.3")
    assert.isAbove(guard.waitFor("10.0.0.3"), 0)
    guard.succeeded("10.0.0.3")
    assert.strictEqual(guard.waitFor("10.0.0.3"), 0)
    // IPv6: a peer is its /64 network, however the address is written
    assert.strictEqual(AuthGuard.peerOf("2001:db8:0:1::5"), "2001:db8:0:1::/64")
    assert.strictEqual(AuthGuard.peerOf("2001:0DB8:0000:0001:ffff:1:2:3"), "2001:db8:0:1::/64")
    assert.strictEqual(AuthGuard.peerOf("::1"), "0:0:0:0::/64")
    assert.strictEqual(AuthGuard.peerOf("::ffff:10.1.2.3"), "10.1.2.3")
    assert.strictEqual(AuthGuard.peerOf("fe80::1%eth0"), "fe80:0:0:0::/64")
    for (let i = 0; i < 3; i++) guard.failed(`2001:db8:0:2::${i + 1}`)
    assert.isAbove(guard.waitFor("2001:db8:0:2::ffff"), 0)
    assert.strictEqual(guard.waitFor("2001:db8:0:3::1"), 0)
    // the table is bounded: the least recently failed peers are forgotten first
    for (const p of ["a", "b", "c"]) for (let i = 0; i < 3; i++) guard.failed(p)
    assert.strictEqual(guard.waitFor("a"), 0)
    assert.isAbove(guard.waitFor("c"), 0)
  })
})

layer(mariadb, { timeout: 120_000, excludeTestServices: true })("ledger credentials", (it) => {
  it.scoped("TCP and HTTP: a peer that keeps failing must wait; other peers still get in", () =>
    Effect.gen(function* () {
      const app = yield* startApp()
      const attacker = "127.0.0.2"
      const codes: Array<string> = []
      for (let i = 0; i < 8; i++) {
        const c = yield* rawClient(app.tcp.port, { auth: false, localAddress: attacker })
        yield* c.write(JSON.stringify({ id: i, op: "auth", token: `guess-${i}-000000000000` }) + "\n")
        codes.push((yield* c.all)[0].error.code)
      }
      assert.deepStrictEqual(codes.slice(0, 5), Array(5).fill("unauthorized"))
      assert.deepStrictEqual(codes.slice(5), Array(3).fill("too_many_auth_failures"))
      // while it waits, even the right token is not looked at
      const right = yield* rawClient(app.tcp.port, { auth: false, localAddress: attacker })
      yield* right.write(JSON.stringify({ id: "r", op: "auth", token: TOKEN }) + "\n")
      const refused = (yield* right.all)[0]
      assert.strictEqual(refused.error.code, "too_many_auth_failures")
      assert.isAbove(refused.error.retryAfterMs, 0)
      // the same peer over HTTP shares the budget
      const viaHttp = yield* getFrom(app.baseUrl, "/accounts/1", attacker, TOKEN)
      assert.strictEqual(viaHttp.status, 429)
      assert.strictEqual(JSON.parse(viaHttp.body)._tag, "TooManyAuthFailures")
      // another peer is not affected, on either transport
      const other = yield* app.connect()
      assert.strictEqual((yield* other.call("create_account", { name: "not-locked-out" })).balance, 0)
      const otherHttp = yield* getFrom(app.baseUrl, "/health", "127.0.0.3", "wrong")
      assert.strictEqual(otherHttp.status, 200)
      const otherAuth = yield* getFrom(app.baseUrl, "/accounts/999999999", "127.0.0.3", TOKEN)
      assert.strictEqual(otherAuth.status, 404)
    })
  )

  it.scoped("the access log names the path, never a query string or header that could hold a credential", () =>
    Effect.gen(function* () {
      const logs: Array<string> = []
      const app = yield* startApp({}, { logs })
      const secret = "query-secret-0123456789abcdef"
      yield* http(app.baseUrl, "GET", `/accounts/1?token=${secret}&access_token=${secret}`)
      yield* http(app.baseUrl, "GET", `/accounts/1/history?limit=5&api_key=${secret}`, undefined, secret)
      yield* http(app.baseUrl, "POST", "/accounts", { name: "logged", token: secret })
      const c = yield* app.connect()
      yield* c.request({ op: "auth", token: secret })
      const access = logs.filter((l) => l.includes("http request"))
      assert.isAtLeast(access.length, 3)
      assert.isTrue(access.some((l) => /http\.path=\/accounts\/1(\s|$)/.test(l)))
      assert.isTrue(access.some((l) => /http\.path=\/accounts\/1\/history(\s|$)/.test(l)))
      const all = logs.join("\n")
      assert.notInclude(all, secret)
      assert.notInclude(all, TOKEN)
      // the start-up summary is there, with nothing secret in it
      assert.isTrue(logs.some((l) => l.includes("ledger started") && l.includes("durability=")))
    })
  )
})
