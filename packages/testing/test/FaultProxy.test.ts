import { assert, describe, it } from "@effect/vitest"
import { FaultProxy } from "@sessionfx/testing"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Queue from "effect/Queue"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import * as Net from "node:net"

/** An echo server on a free loopback port; it records every byte it receives. */
const echoServer = Effect.acquireRelease(
  Effect.async<{ readonly port: number; readonly received: Array<string>; readonly server: Net.Server }>((resume) => {
    const received: Array<string> = []
    const sockets = new Set<Net.Socket>()
    const server = Net.createServer((s) => {
      sockets.add(s)
      s.on("data", (chunk) => {
        received.push(chunk.toString("utf8"))
        s.write(chunk)
      })
      s.on("error", () => {})
      s.on("close", () => sockets.delete(s))
    })
    ;(server as any).sockets = sockets
    server.listen(0, "127.0.0.1", () =>
      resume(Effect.succeed({ port: (server.address() as Net.AddressInfo).port, received, server }))
    )
  }),
  ({ server }) =>
    Effect.async<void>((resume) => {
      for (const s of (server as any).sockets as Set<Net.Socket>) s.destroy()
      server.close(() => resume(Effect.void))
    })
)

interface Client {
  readonly send: (text: string) => Effect.Effect<void>
  /** The next chunk of echoed text, or "closed". */
  readonly next: Effect.Effect<string>
}

const connect = (port: number) =>
  Effect.acquireRelease(
    Effect.async<Client & { readonly socket: Net.Socket }>((resume) => {
      const inbox = Effect.runSync(Queue.unbounded<string>())
      const socket = Net.connect({ host: "127.0.0.1", port })
      socket.on("data", (chunk) => Queue.unsafeOffer(inbox, chunk.toString("utf8")))
      socket.on("error", () => {})
      socket.on("close", () => Queue.unsafeOffer(inbox, "closed"))
      socket.once("connect", () =>
        resume(
          Effect.succeed({
            socket,
            send: (text: string) => Effect.async<void>((r) => void socket.write(text, () => r(Effect.void))),
            next: Queue.take(inbox)
          })
        )
      )
    }),
    ({ socket }) => Effect.sync(() => socket.destroy())
  )

/** Polls `check` every 10 ms until it holds, for at most 5 seconds. */
const eventually = (check: Effect.Effect<boolean>) =>
  Effect.gen(function* () {
    const deadline = Date.now() + 5_000
    while (!(yield* check)) {
      if (Date.now() > deadline) return yield* Effect.dieMessage("condition not reached within 5 s")
      yield* Effect.sleep("10 millis")
    }
  })

describe("FaultProxy", () => {
  it.live("forwards both ways, adds latency, rewrites urls and closes everything with its scope", () =>
    Effect.gen(function* () {
      const echo = yield* echoServer
      const scope = yield* Scope.make()
      const proxy = yield* Scope.extend(FaultProxy.make({ target: { host: "127.0.0.1", port: echo.port } }), scope)
      const c = yield* connect(proxy.port)
      yield* c.send("hello")
      assert.strictEqual(yield* c.next, "hello")
      assert.strictEqual(yield* proxy.connections, 1)

      yield* proxy.setLatency(150)
      const start = Date.now()
      yield* c.send("slow")
      assert.strictEqual(yield* c.next, "slow")
      // 150 ms each way
      assert.isAtLeast(Date.now() - start, 290)
      yield* proxy.setLatency(0)

      const url = proxy.urlFor({ url: Redacted.make("mysql://app:secret@127.0.0.1:3306/app?socket=/tmp/x.sock") })
      assert.strictEqual(Redacted.value(url), `mysql://app:secret@127.0.0.1:${proxy.port}/app`)

      yield* Scope.close(scope, Exit.void)
      assert.strictEqual(yield* c.next, "closed")
    }).pipe(Effect.scoped)
  )

  it.live("resetAll drops every connection; resetNextAfter resets only the matching one, once", () =>
    Effect.gen(function* () {
      const echo = yield* echoServer
      const proxy = yield* FaultProxy.make({ target: { host: "127.0.0.1", port: echo.port } })
      const a = yield* connect(proxy.port)
      const b = yield* connect(proxy.port)
      yield* eventually(Effect.map(proxy.connections, (n) => n === 2))
      assert.strictEqual(yield* proxy.resetAll, 2)
      assert.strictEqual(yield* a.next, "closed")
      assert.strictEqual(yield* b.next, "closed")
      yield* eventually(Effect.map(proxy.connections, (n) => n === 0))

      const c = yield* connect(proxy.port)
      const d = yield* connect(proxy.port)
      yield* proxy.resetNextAfter({ match: (chunk) => chunk.includes("COMMIT") })
      assert.isTrue(yield* proxy.armed)
      yield* c.send("SELECT 1")
      assert.strictEqual(yield* c.next, "SELECT 1")
      yield* d.send("COMMIT")
      assert.strictEqual(yield* d.next, "closed")
      // dropped, not forwarded
      assert.notInclude(echo.received.join(""), "COMMIT")
      assert.isFalse(yield* proxy.armed)
      yield* c.send("COMMIT")
      assert.strictEqual(yield* c.next, "COMMIT")

      // forward: the server receives the chunk, the client loses the answer
      yield* proxy.resetNextAfter({ match: (chunk) => chunk.includes("FORWARD"), forward: true })
      yield* c.send("FORWARD-ME")
      assert.strictEqual(yield* c.next, "closed")
      yield* eventually(Effect.sync(() => echo.received.join("").includes("FORWARD-ME")))

      const e = yield* connect(proxy.port)
      yield* proxy.resetNextAfter({ bytesFromClient: 6 })
      yield* e.send("abc")
      assert.strictEqual(yield* e.next, "abc")
      yield* e.send("def")
      assert.strictEqual(yield* e.next, "closed")
      const counters = yield* proxy.counters
      assert.strictEqual(counters.triggered, 3)
      assert.strictEqual(counters.resetAll, 2)
    }).pipe(Effect.scoped)
  )

  it.live("a black hole accepts and reads but never answers; healing resets the starved connections", () =>
    Effect.gen(function* () {
      const echo = yield* echoServer
      const proxy = yield* FaultProxy.make({ target: { host: "127.0.0.1", port: echo.port } })
      const a = yield* connect(proxy.port)
      yield* a.send("before")
      assert.strictEqual(yield* a.next, "before")
      yield* proxy.blackhole(true)
      yield* a.send("lost")
      const b = yield* connect(proxy.port)
      yield* b.send("also lost")
      // nothing comes back while the hole is open
      const answer = yield* a.next.pipe(Effect.timeout("300 millis"), Effect.option)
      assert.isTrue(answer._tag === "None")
      assert.notInclude(echo.received.join(""), "lost")
      yield* proxy.blackhole(false)
      assert.strictEqual(yield* a.next, "closed")
      assert.strictEqual(yield* b.next, "closed")
      assert.strictEqual((yield* proxy.counters).healed, 2)
      const c = yield* connect(proxy.port)
      yield* c.send("after")
      assert.strictEqual(yield* c.next, "after")
    }).pipe(Effect.scoped)
  )
})
