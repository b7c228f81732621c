/**
 * Every request read gets its answer, and no client can make the server hold unbounded output or sockets
 * (issue 23, items 2, 4, 6, 7), over real sockets.
 */
import { assert, layer } from "@effect/vitest"
import { MysqlServer } from "@sessionfx/testing"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Mysql from "mysql2/promise"
import * as Net from "node:net"
import { rawClient } from "./raw.js"
import { countTransfers, http, startApp, TOKEN } from "./utils.js"
import { mariadb } from "./dialects.js"

/** A socket to `port` that records everything it receives until it is closed (`allowHalfOpen`: see `Net.connect`). */
const plainSocket = (port: number, options: { readonly allowHalfOpen?: boolean } = {}) =>
  Effect.acquireRelease(
    Effect.async<{ socket: Net.Socket; received: () => string; closed: Promise<void> }>((resume) => {
      const socket = Net.connect({ host: "127.0.0.1", port, allowHalfOpen: options.allowHalfOpen ?? false })
      let received = ""
      const closed = new Promise<void>((resolve) => socket.on("close", () => resolve()))
      socket.on("data", (d) => (received += d.toString("latin1")))
      socket.on("error", () => {})
      socket.once("connect", () => resume(Effect.succeed({ socket, received: () => received, closed })))
    }),
    ({ socket }) => Effect.sync(() => socket.destroy())
  )

layer(mariadb, { timeout: 120_000, excludeTestServices: true })("ledger answers are delivered", (it) => {
  it.scoped(
    "TCP: a client that never reads: bounded unsent output, reading paused, closed after the write timeout",
    () =>
      Effect.gen(function* () {
        const app = yield* startApp({ writeTimeout: "1 second" })
        const c = yield* rawClient(app.tcp.port)
        c.socket.pause()
        // lines answered without the database, each answer ~45 times the size of its line
        const chunk = Buffer.from("x\n".repeat(32 * 1024))
        let sent = 0
        let stuck = false
        while (sent < 512 * 1024 * 1024) {
          const more = c.socket.write(chunk)
          sent += chunk.length
          if (!more) {
            const drained = yield* Effect.async<void>((resume) => {
              c.socket.once("drain", () => resume(Effect.void))
            }).pipe(Effect.timeoutOption("1 second"))
            if (Option.isNone(drained)) {
              stuck = true
              break
            }
          }
        }
        // the server stopped reading: the client's writes no longer drain
        assert.isTrue(stuck, `the server read all ${sent} bytes`)
        assert.isBelow(yield* app.tcp.unsent, 1024 * 1024)
        // and the client is closed once it has read nothing for the write timeout
        const closed = yield* c.closed.pipe(Effect.timeoutOption("10 seconds"))
        assert.isTrue(Option.isSome(closed))
        assert.strictEqual(yield* app.tcp.unsent, 0)
        const other = yield* app.connect()
        assert.strictEqual((yield* other.call("create_account", { name: "after-flood" })).balance, 0)
      })
  )

  it.scoped("HTTP: a client that sends requests and never reads its answers is closed after the write timeout", () =>
    Effect.gen(function* () {
      // one HTTP connection at most: while the client that does not read holds it, nobody else gets in
      const app = yield* startApp({ writeTimeout: "1 second", requestTimeout: "1 second", httpMaxConnections: 1 })
      const port = Number(new URL(app.baseUrl).port)
      const health = Effect.promise(() =>
        fetch(`${app.baseUrl}/health`).then(
          (r) => r.status === 200,
          () => false
        )
      )
      const s = yield* plainSocket(port)
      s.socket.pause()
      // whole requests only (no request half-received for Node's own timeouts to catch), answers far larger than them
      const request = `GET /openapi.json HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${TOKEN}\r\n\r\n`
      s.socket.write(request.repeat(400))
      assert.isFalse(yield* health)
      const started = Date.now()
      // the server closes it (the paused client does not see that itself), and the slot is free again
      const freed = yield* Effect.repeat(health, { until: (ok) => ok, schedule: Schedule.spaced("100 millis") }).pipe(
        Effect.timeoutOption("15 seconds")
      )
      assert.isTrue(Option.isSome(freed), "the client that does not read still holds its connection")
      assert.isAtLeast(Date.now() - started, 500)
    })
  )

  it.scoped("TCP: a client that pipelines and half-closes gets every answer before the close", () =>
    Effect.gen(function* () {
      const app = yield* startApp()
      const setup = yield* app.connect()
      const a = (yield* setup.call("create_account", { name: "hc-a" })).id
      const b = (yield* setup.call("create_account", { name: "hc-b" })).id
      yield* setup.call("deposit", { account: a, amount: 1000 })
      const requests = [
        ...Array.from({ length: 20 }, (_, i) => ({ id: i, op: "transfer", from: a, to: b, amount: 1 })),
        { id: "unknown", op: "nope" },
        { id: "bal", op: "balance", account: b }
      ]
      const lines = requests.map((r) => JSON.stringify(r) + "\n").join("")
      // authenticated first, then everything at once and a half-close
      const c = yield* rawClient(app.tcp.port)
      yield* c.write(lines + "{broken\n")
      c.socket.end()
      const got = yield* c.all
      assert.deepStrictEqual(
        got.map((r) => r.id),
        [...requests.map((r) => r.id), null]
      )
      assert.strictEqual(got[21].result.balance, 20)
      // the auth line, the requests and the half-close all in one write
      const d = yield* rawClient(app.tcp.port, { auth: false })
      yield* d.write(JSON.stringify({ id: "auth", op: "auth", token: TOKEN }) + "\n" + lines)
      d.socket.end()
      const all = yield* d.all
      assert.deepStrictEqual(
        all.map((r) => r.id),
        ["auth", ...requests.map((r) => r.id)]
      )
      assert.strictEqual(all[22].result.balance, 40)
      assert.strictEqual(yield* countTransfers(app.sql, [a, b]), 41)
    })
  )

  it.scoped("HTTP: a client that pipelines and half-closes gets every answer before the close", () =>
    Effect.gen(function* () {
      const app = yield* startApp()
      const a = (yield* http(app.baseUrl, "POST", "/accounts", { name: "hhc-a" })).json.id
      const b = (yield* http(app.baseUrl, "POST", "/accounts", { name: "hhc-b" })).json.id
      yield* http(app.baseUrl, "POST", `/accounts/${a}/deposit`, { amount: 100 })
      const port = Number(new URL(app.baseUrl).port)
      const post = (body: string) =>
        `POST /transfers HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${TOKEN}\r\n` +
        `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
      const requests = [
        ...Array.from({ length: 5 }, () => post(JSON.stringify({ from: a, to: b, amount: 1 }))),
        post(JSON.stringify({ from: a, to: b, amount: "lots" })),
        `GET /accounts/${b} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${TOKEN}\r\n\r\n`
      ]
      const s = yield* plainSocket(port, { allowHalfOpen: true })
      s.socket.write(requests.join(""))
      s.socket.end()
      yield* Effect.promise(() => s.closed)
      const statuses = (s.received().match(/HTTP\/1\.1 \d{3} /g) ?? []).map((l) => Number(l.slice(9)))
      assert.deepStrictEqual(statuses, [200, 200, 200, 200, 200, 400, 200])
      // (Node runs pipelined requests concurrently and answers them in order: the balance read may precede the transfers)
      assert.match(s.received(), new RegExp(`\\{"id":${b},"name":"hhc-b","balance":\\d+\\}$`))
      assert.strictEqual(yield* countTransfers(app.sql, [a, b]), 6)
    })
  )

  it.scoped("TCP: lines queued behind a request that times out are answered, not dropped, before the close", () =>
    Effect.gen(function* () {
      const server = yield* MysqlServer.MysqlServer
      const app = yield* startApp({ requestTimeout: "500 millis" })
      const setup = yield* app.connect()
      const a = (yield* setup.call("create_account", { name: "to-a" })).id
      const b = (yield* setup.call("create_account", { name: "to-b" })).id
      yield* setup.call("deposit", { account: a, amount: 100 })
      const holder = yield* Effect.acquireRelease(
        Effect.promise(() => Mysql.createConnection(Redacted.value(server.url))),
        (conn) => Effect.promise(() => conn.end())
      )
      yield* Effect.promise(() => holder.query("BEGIN"))
      yield* Effect.promise(() => holder.query("SELECT balance FROM accounts WHERE id = ? FOR UPDATE", [a]))
      const c = yield* rawClient(app.tcp.port)
      yield* c.write(
        [
          { id: "stuck", op: "transfer", from: a, to: b, amount: 1 },
          { id: "q1", op: "balance", account: b },
          { id: "q2", op: "deposit", account: b, amount: 5 }
        ]
          .map((r) => JSON.stringify(r) + "\n")
          .join("")
      )
      const got = yield* c.all
      yield* Effect.promise(() => holder.query("ROLLBACK"))
      assert.deepStrictEqual(
        got.map((r) => [r.id, r.error?.code]),
        [
          ["stuck", "unavailable"],
          ["q1", "unavailable"],
          ["q2", "unavailable"]
        ]
      )
      assert.match(got[1].error.message, /not run/)
      assert.strictEqual((yield* setup.call("balance", { account: b })).balance, 0)
    })
  )

  it.scoped("HTTP: a body that is not JSON is 415, with a JSON body; nothing is run", () =>
    Effect.gen(function* () {
      const app = yield* startApp()
      const a = (yield* http(app.baseUrl, "POST", "/accounts", { name: "ct-a" })).json.id
      const b = (yield* http(app.baseUrl, "POST", "/accounts", { name: "ct-b" })).json.id
      yield* http(app.baseUrl, "POST", `/accounts/${a}/deposit`, { amount: 100 })
      const json = JSON.stringify({ from: a, to: b, amount: 1 })
      const types = [
        "application/xml",
        "application/octet-stream",
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "text/html; charset=utf-8",
        "application/json; charset=latin1",
        'application/json; charset="utf-16"',
        "application/json;charset=ISO-8859-1"
      ]
      for (const type of types) {
        const r = yield* Effect.promise(() =>
          fetch(`${app.baseUrl}/transfers`, {
            method: "POST",
            headers: { authorization: `Bearer ${TOKEN}`, "content-type": type },
            body: type.startsWith("multipart")
              ? `--x\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--x--\r\n`
              : json
          }).then(async (res) => ({ status: res.status, text: await res.text() }))
        )
        assert.strictEqual(r.status, 415, type)
        assert.strictEqual(JSON.parse(r.text)._tag, "UnsupportedMediaType", type)
      }
      // a body without any Content-Type is refused too; a POST without a body is a 400 with a JSON body
      const untyped = yield* Effect.promise(() =>
        fetch(`${app.baseUrl}/transfers`, {
          method: "POST",
          headers: { authorization: `Bearer ${TOKEN}` },
          body: new Blob([json])
        }).then((res) => res.status)
      )
      assert.strictEqual(untyped, 415)
      const empty = yield* http(app.baseUrl, "POST", "/transfers")
      assert.strictEqual(empty.status, 400)
      assert.isString(empty.json._tag)
      assert.strictEqual(yield* countTransfers(app.sql, [a, b]), 1)
      // UTF-8 named is JSON like any other
      for (const type of ["application/json; charset=utf-8", 'Application/JSON; Charset="UTF-8"']) {
        const r = yield* Effect.promise(() =>
          fetch(`${app.baseUrl}/transfers`, {
            method: "POST",
            headers: { authorization: `Bearer ${TOKEN}`, "content-type": type },
            body: json
          }).then((res) => res.status)
        )
        assert.strictEqual(r, 200, type)
      }
      assert.strictEqual(yield* countTransfers(app.sql, [a, b]), 3)
    })
  )

  it.scoped("HTTP: a chunked body past the limit is a 413 (not a reset); path ids and numbers are strict decimal", () =>
    Effect.gen(function* () {
      const app = yield* startApp({ maxBodyBytes: 4096 })
      const a = (yield* http(app.baseUrl, "POST", "/accounts", { name: "strict" })).json.id
      const port = Number(new URL(app.baseUrl).port)
      const s = yield* plainSocket(port)
      const chunk = "x".repeat(1000)
      let request =
        `POST /transfers HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${TOKEN}\r\n` +
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
      for (let i = 0; i < 20; i++) request += `${chunk.length.toString(16)}\r\n${chunk}\r\n`
      request += "0\r\n\r\n"
      s.socket.write(request)
      yield* Effect.promise(() => s.closed)
      assert.match(s.received(), /^HTTP\/1\.1 413/)
      assert.match(s.received(), /"_tag":"PayloadTooLarge"/)
      // also with fetch streaming the body
      const streamed = yield* Effect.promise(() =>
        fetch(`${app.baseUrl}/transfers`, {
          method: "POST",
          headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
          body: new ReadableStream({
            start(controller) {
              for (let i = 0; i < 20; i++) controller.enqueue(new TextEncoder().encode(chunk))
              controller.close()
            }
          }),
          duplex: "half"
        } as RequestInit).then(
          (r) => r.status,
          (e) => `failed: ${e}`
        )
      )
      assert.strictEqual(streamed, 413)
      for (const path of ["0x1", "1e0", "+1", "01", "1.0", "%201", "1%20", "-1", "0", "99999999999999999999"]) {
        const r = yield* http(app.baseUrl, "GET", `/accounts/${path}`)
        assert.strictEqual(r.status, 400, path)
        assert.isString(r.json?._tag, path)
      }
      for (const query of ["limit=1e1", "limit=0x5", "before=+3", "limit= 5"]) {
        const r = yield* http(app.baseUrl, "GET", `/accounts/${a}/history?${query}`)
        assert.strictEqual(r.status, 400, query)
      }
      assert.strictEqual((yield* http(app.baseUrl, "GET", `/accounts/${a}`)).status, 200)
      assert.strictEqual((yield* http(app.baseUrl, "GET", `/accounts/${a}/history?limit=5`)).status, 200)
      // no route, no empty answer either
      const missing = yield* http(app.baseUrl, "GET", "/nowhere")
      assert.deepStrictEqual([missing.status, missing.json?._tag], [404, "NotFound"])
    })
  )

  it.scoped(
    "HTTP: what Node refuses before routing (malformed, headers too large, too slow) gets a JSON body too",
    () =>
      Effect.gen(function* () {
        const app = yield* startApp({ httpHeadersTimeout: "1 second", httpRequestTimeout: "2 seconds" })
        const port = Number(new URL(app.baseUrl).port)
        const cases: ReadonlyArray<readonly [string, number, string]> = [
          ["NOT HTTP AT ALL\r\n\r\n", 400, "InvalidRequest"],
          ["GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, "InvalidRequest"],
          [`GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(64 * 1024)}\r\n\r\n`, 431, "HeadersTooLarge"],
          ["POST /transfers HTTP/1.1\r\nHost: localhost\r\nX-Slow: ", 408, "RequestTimeout"]
        ]
        for (const [request, status, tag] of cases) {
          const s = yield* plainSocket(port)
          s.socket.write(request)
          yield* Effect.promise(() => s.closed)
          const [head = "", body = ""] = s.received().split("\r\n\r\n")
          assert.match(head, new RegExp(`^HTTP/1\\.1 ${status} `), request.slice(0, 40))
          assert.match(head, /content-type: application\/json/i)
          assert.strictEqual(JSON.parse(body)._tag, tag)
        }
        assert.strictEqual((yield* http(app.baseUrl, "GET", "/health")).status, 200)
      })
  )

  it.scoped("HTTP: idle keep-alive connections are closed after the idle timeout, and their number is capped", () =>
    Effect.gen(function* () {
      const app = yield* startApp({ httpIdleTimeout: "300 millis", httpMaxConnections: 3 })
      const port = Number(new URL(app.baseUrl).port)
      // a keep-alive request, then nothing: closed by the server after the idle timeout
      const idle = yield* plainSocket(port)
      const started = Date.now()
      idle.socket.write("GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n")
      yield* Effect.promise(() => idle.closed)
      assert.match(idle.received(), /^HTTP\/1\.1 200/)
      assert.isBelow(Date.now() - started, 3_000)
      // the cap: with three connections open, a fourth is closed at once, unanswered
      const open = yield* Effect.forEach([1, 2, 3], () => plainSocket(port))
      for (const o of open) o.socket.write("GET /health HTTP/1.1\r\nHost: localhost\r\n")
      const fourth = yield* plainSocket(port)
      fourth.socket.write("GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
      yield* Effect.promise(() => fourth.closed)
      assert.strictEqual(fourth.received(), "")
      for (const o of open) o.socket.destroy()
      yield* Effect.forEach(open, (o) => Effect.promise(() => o.closed))
    })
  )
})
