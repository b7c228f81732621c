/**
 * The README's `ManagedRuntime` example: entry points that belong to another framework (`node:http` here; an Express
 * or Next handler has the same shape) share one pool, run a unit of work per request, turn every typed error into a
 * status before `runPromise`, and send a response on every path.
 *
 *   pnpm --filter @sessionfx/examples examples http
 */
import type { Engine } from "@sessionfx/session"
import * as Effect from "effect/Effect"
import type * as ManagedRuntime from "effect/ManagedRuntime"
import * as Schema from "effect/Schema"
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import { handleWithRetry } from "./readme.js"

const TransferRequest = Schema.Struct({
  from: Schema.NumberFromString.pipe(Schema.int()),
  to: Schema.NumberFromString.pipe(Schema.int()),
  amount: Schema.NumberFromString.pipe(Schema.int(), Schema.positive())
})

// the whole request as an Effect that cannot fail: every typed error becomes a status before runPromise
export const transferRoute = (query: URLSearchParams) =>
  Schema.decodeUnknown(TransferRequest)(Object.fromEntries(query)).pipe(
    Effect.flatMap(({ from, to, amount }) => handleWithRetry(from, to, amount)), // a unit of work per request
    Effect.as({ status: 200, body: { ok: true } }),
    Effect.catchTags({
      ParseError: (e) => Effect.succeed({ status: 400, body: { error: e.message } }),
      Overdrawn: (e) => Effect.succeed({ status: 409, body: { error: `account ${e.account} would be overdrawn` } }),
      PoolTimeout: () => Effect.succeed({ status: 503, body: { error: "busy, try again" } })
    }),
    Effect.catchAll((e) => Effect.succeed({ status: 500, body: { error: e._tag } })) // any other SessionError
  )

/** The request handler of the README, on a runtime built once for the process. */
export const handler =
  (runtime: ManagedRuntime.ManagedRuntime<Engine.Engine, unknown>) =>
  async (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? "/", "http://localhost")
    const { status, body } =
      req.method === "POST" && url.pathname === "/transfer"
        ? await runtime
            .runPromise(transferRoute(url.searchParams))
            .catch(() => ({ status: 500, body: { error: "internal error" } })) // a defect, or interrupted
        : { status: 404, body: { error: "not found" } }
    res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body))
  }

/**
 * Serves the handler on a free loopback port, sends it a committed transfer, an overdraft, a malformed request,
 * eight concurrent transfers (4 each way between accounts 1 and 2) and an unknown path; then closes the server and
 * disposes the runtime (as the README's SIGTERM handler does). Returns the statuses.
 */
export const exercise = (runtime: ManagedRuntime.ManagedRuntime<Engine.Engine, unknown>) =>
  Effect.promise(async () => {
    const server = createServer(handler(runtime))
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
    const post = async (query: string) => {
      const response = await fetch(`${base}/transfer?${query}`, { method: "POST" })
      return { status: response.status, body: (await response.json()) as unknown }
    }
    try {
      const ok = await post("from=1&to=2&amount=30")
      const overdrawn = await post("from=1&to=2&amount=500")
      const invalid = await post("from=1&to=2&amount=ten")
      const concurrent = await Promise.all(
        Array.from({ length: 8 }, (_, i) => post(i % 2 === 0 ? "from=1&to=2&amount=1" : "from=2&to=1&amount=1"))
      )
      const notFound = (await fetch(`${base}/transfer`)).status
      return {
        ok: ok.status,
        overdrawn: overdrawn.status,
        overdrawnBody: overdrawn.body,
        invalid: invalid.status,
        concurrent: concurrent.map((r) => r.status),
        notFound
      }
    } finally {
      await new Promise((resolve) => server.close(resolve))
      await runtime.dispose() // drains units in flight, then closes the pool
    }
  })
