import { assert, layer } from "@effect/vitest"
import { MysqlServer } from "@sessionfx/testing"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import * as Redacted from "effect/Redacted"
import * as Mysql from "mysql2/promise"
import * as Net from "node:net"
import { countTransfers, http, startApp, TOKEN, until } from "./utils.js"
import { mariadb } from "./dialects.js"

interface Raw {
  readonly write: (data: string) => Effect.Effect<void>
  /** Everything the server sent, once it has closed the connection. */
  readonly closed: Effect.Effect<string>
}

/** A plain socket that sends what it is told and records what comes back. */
const raw = (port: number, localAddress?: string): Effect.Effect<Raw, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.async<{ socket: Net.Socket; raw: Raw }>((resume) => {
      const socket = Net.connect({
        host: "127.0.0.1",
        port,
        ...(localAddress === undefined ? {} : { localAddress })
      })
      let received = ""
      const done = new Promise<string>((resolve) => socket.on("close", () => resolve(received)))
      socket.on("data", (d) => (received += d.toString("utf8")))
      socket.on("error", () => {})
      socket.once("connect", () =>
        resume(
          Effect.succeed({
            socket,
            raw: {
              write: (data) =>
                Effect.async<void>((k) => {
                  if (socket.destroyed) return k(Effect.void)
                  socket.write(data, () => k(Effect.void))
                }),
              closed: Effect.promise(() => done)
            }
          })
        )
      )
    }),
    ({ socket }) => Effect.sync(() => socket.destroy())
  ).pipe(Effect.map(({ raw }) => raw))

const codes = (text: string) =>
  text
    .split("\n")
    .filter((l) => l.length > 0)
    .map((l) => JSON.parse(l).error?.code ?? "ok")

const metric = (baseUrl: string, name: string) =>
  Effect.map(http(baseUrl, "GET", "/metrics", undefined, null), (r) => {
    const line = r.text.split("\n").find((l) => l.startsWith(`${name} `))
    return line === undefined ? undefined : Number(line.split(" ")[1])
  })

layer(mariadb, { timeout: 120_000, excludeTestServices: true })("ledger abuse limits", (it) => {
  it.scoped("TCP: any first line that is not a valid auth closes the connection", () =>
    Effect.gen(function* () {
      const app = yield* startApp()
      const lines = [
        "{not json\n",
        '{"id":1,"op":"balance","account":1}\n',
        '{"op":"auth","token":"wrong"}\n',
        '{"op":"auth"}\n',
        "\n",
        `{"op":"auth","token":"${"x".repeat(10_000)}"}\n`
      ]
      // one peer address per attempt: each failure counts against its peer's budget (see security.test.ts)
      let peer = 10
      for (const line of lines) {
        const s = yield* raw(app.tcp.port, `127.0.1.${peer++}`)
        yield* s.write(line)
        const got = yield* s.closed
        assert.deepStrictEqual(codes(got), ["unauthorized"], `after ${JSON.stringify(line.slice(0, 40))}`)
      }
      // bytes that never make a line are closed at the size limit, not kept
      const long = yield* raw(app.tcp.port, `127.0.1.${peer++}`)
      yield* long.write("x".repeat(20_000))
      assert.deepStrictEqual(codes(yield* long.closed), ["unauthorized"])
      const ok = yield* app.connect()
      assert.strictEqual((yield* ok.call("create_account", { name: "still-open" })).balance, 0)
    })
  )

  it.scoped("TCP: a client that does not authenticate in time is closed, however slowly it sends", () =>
    Effect.gen(function* () {
      const app = yield* startApp({ authTimeout: "300 millis" })
      const silent = yield* raw(app.tcp.port)
      const drip = yield* raw(app.tcp.port)
      const started = Date.now()
      // one byte at a time, well within any per-read idle timer, never a whole line
      const dripping = Effect.forEach(['{"op"', ':"au', "th", '","tok'], (part) =>
        Effect.zipRight(drip.write(part), Effect.sleep("100 millis"))
      ).pipe(Effect.forever, Effect.fork)
      yield* dripping
      const [a, b] = yield* Effect.all([silent.closed, drip.closed], { concurrency: 2 })
      assert.isBelow(Date.now() - started, 5_000)
      assert.deepStrictEqual([codes(a), codes(b)], [["unauthorized"], ["unauthorized"]])
      assert.match(JSON.parse(a).error.message, /no valid auth within/)
      yield* until(Effect.map(app.tcp.connections, (n) => n === 0))
    })
  )

  it.scoped("TCP: unauthenticated clients have a budget of their own and never lock out a client with the token", () =>
    Effect.gen(function* () {
      const app = yield* startApp({ maxConnections: 3, maxUnauthenticated: 4, authTimeout: "60 seconds" })
      const members = yield* Effect.forEach([1, 2], () => app.connect())
      // far more idle, unauthenticated sockets than either budget
      const idle = yield* Effect.forEach(Array.from({ length: 40 }), () => raw(app.tcp.port))
      yield* until(Effect.map(app.tcp.unauthenticated, (n) => n === 4))
      // a client with the token still gets in, and so do those already in
      const late = yield* app.connect()
      assert.strictEqual((yield* late.call("create_account", { name: "late" })).balance, 0)
      for (const m of members) assert.strictEqual((yield* m.call("create_account", { name: "member" })).balance, 0)
      assert.isAtMost(yield* app.tcp.unauthenticated, 4)
      // the oldest idle ones were closed to make room, each told why
      const evicted = yield* idle[0]!.closed
      assert.match(evicted, /too many unauthenticated connections/)
      // the authenticated budget is counted on its own: a fourth client with the token is refused
      const fourth = yield* app.connect(null)
      const refused = yield* fourth.request({ op: "auth", token: TOKEN })
      assert.strictEqual(refused.error?.code, "too_many_connections")
    })
  )

  it.scoped("TCP: ledger_tcp_connections counts what is open", () =>
    Effect.gen(function* () {
      const app = yield* startApp()
      const gauge = metric(app.baseUrl, "ledger_tcp_connections")
      // the gauge is process-wide: the servers of earlier tests have closed their sockets by now
      yield* until(Effect.map(gauge, (n) => n === 0))
      const clients = yield* Effect.scoped(
        Effect.gen(function* () {
          const cs = yield* Effect.forEach([1, 2, 3], () => app.connect())
          const s = yield* raw(app.tcp.port)
          assert.strictEqual(yield* gauge, 4)
          assert.strictEqual(yield* metric(app.baseUrl, "ledger_tcp_unauthenticated_connections"), 1)
          yield* s.write('{"op":"auth","token":"nope"}\n')
          yield* s.closed
          return cs.length
        })
      )
      assert.strictEqual(clients, 3)
      yield* until(Effect.map(gauge, (n) => n === 0))
      assert.strictEqual(yield* app.tcp.connections, 0)
    })
  )

  it.scoped("HTTP: a body over the limit is 413 and nothing is run; the server stays up", () =>
    Effect.gen(function* () {
      const app = yield* startApp({ maxBodyBytes: 4096 })
      const c = yield* app.connect()
      const a = (yield* c.call("create_account", { name: "a" })).id
      const b = (yield* c.call("create_account", { name: "b" })).id
      yield* c.call("deposit", { account: a, amount: 100 })
      const padded = { from: a, to: b, amount: 1, pad: "x".repeat(10_000) }
      const declared = yield* http(app.baseUrl, "POST", "/transfers", padded)
      assert.deepStrictEqual([declared.status, declared.json._tag, declared.json.limit], [413, "PayloadTooLarge", 4096])
      // a chunked body (no Content-Length) is cut off at the limit too
      const chunked = yield* Effect.promise(() =>
        fetch(`${app.baseUrl}/transfers`, {
          method: "POST",
          headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
          body: new ReadableStream({
            start(controller) {
              const text = JSON.stringify(padded)
              for (let i = 0; i < text.length; i += 1000)
                controller.enqueue(new TextEncoder().encode(text.slice(i, i + 1000)))
              controller.close()
            }
          }),
          duplex: "half"
        } as RequestInit).then(
          (r) => r.status,
          () => "reset"
        )
      )
      assert.include([413, "reset"], chunked)
      assert.strictEqual(yield* countTransfers(app.sql, [a, b]), 1)
      const ok = yield* http(app.baseUrl, "POST", "/transfers", { from: a, to: b, amount: 1 })
      assert.strictEqual(ok.status, 200)
      assert.strictEqual(yield* countTransfers(app.sql, [a, b]), 2)
    })
  )

  it.scoped("HTTP: a client that does not finish its headers in time is answered 408 and closed", () =>
    Effect.gen(function* () {
      const app = yield* startApp({ httpHeadersTimeout: "1 second", httpRequestTimeout: "2 seconds" })
      const port = Number(new URL(app.baseUrl).port)
      const slow = yield* raw(port)
      const started = Date.now()
      yield* slow.write("POST /transfers HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
      const got = yield* slow.closed
      assert.isBelow(Date.now() - started, 10_000)
      assert.match(got, /^HTTP\/1\.1 408/)
    })
  )

  it.scoped(
    "TCP: a request stuck past the request timeout is rolled back, answered unavailable, its connection closed",
    () =>
      Effect.gen(function* () {
        const server = yield* MysqlServer.MysqlServer
        const app = yield* startApp({ requestTimeout: "500 millis" })
        const c = yield* app.connect()
        const a = (yield* c.call("create_account", { name: "locked" })).id
        const b = (yield* c.call("create_account", { name: "free" })).id
        yield* c.call("deposit", { account: a, amount: 100 })
        // another client holds the row lock of `a`
        const holder = yield* Effect.acquireRelease(
          Effect.promise(() => Mysql.createConnection(Redacted.value(server.url))),
          (conn) => Effect.promise(() => conn.end())
        )
        yield* Effect.promise(() => holder.query("BEGIN"))
        yield* Effect.promise(() => holder.query("SELECT balance FROM accounts WHERE id = ? FOR UPDATE", [a]))
        const started = Date.now()
        const r = yield* c.request({ id: "stuck", op: "transfer", from: a, to: b, amount: 10 })
        assert.deepStrictEqual([r.id, r.error?.code], ["stuck", "unavailable"])
        assert.isBelow(Date.now() - started, 5_000)
        yield* c.closed
        yield* Effect.promise(() => holder.query("ROLLBACK"))
        const other = yield* app.connect()
        assert.strictEqual((yield* other.call("balance", { account: a })).balance, 100)
        assert.strictEqual((yield* other.call("balance", { account: b })).balance, 0)
        assert.strictEqual(yield* countTransfers(app.sql, [a, b]), 1)
      })
  )
})
