/**
 * A plain TCP client for tests that need what the line client never does: bytes that are not JSON or not UTF-8,
 * pipelining then half-closing, not reading, or a chosen local address.
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Queue from "effect/Queue"
import type * as Scope from "effect/Scope"
import * as Net from "node:net"
import { TOKEN } from "./utils.js"

export interface RawClient {
  readonly socket: Net.Socket
  /** Writes and waits until the bytes are handed to the kernel. */
  readonly write: (data: string | Buffer) => Effect.Effect<void>
  /** The next line from the server, parsed (fails once the server has closed and every line was taken). */
  readonly next: Effect.Effect<any, "closed">
  /** Every line the server sent and `next` did not take, parsed, once it has closed the connection. */
  readonly all: Effect.Effect<Array<any>>
  /** Resolves when the socket is closed. */
  readonly closed: Effect.Effect<void>
}

export const rawClient = (
  port: number,
  options: { readonly localAddress?: string; readonly auth?: boolean } = {}
): Effect.Effect<RawClient, never, Scope.Scope> =>
  Effect.gen(function* () {
    const lines = yield* Queue.unbounded<string | null>()
    const closed = yield* Deferred.make<void>()
    const socket = yield* Effect.acquireRelease(
      Effect.async<Net.Socket>((resume) => {
        const s = Net.connect({
          host: "127.0.0.1",
          port,
          allowHalfOpen: true,
          ...(options.localAddress === undefined ? {} : { localAddress: options.localAddress })
        })
        let buffer = ""
        s.setEncoding("utf8")
        s.on("data", (chunk: string) => {
          buffer += chunk
          let nl: number
          while ((nl = buffer.indexOf("\n")) !== -1) {
            const line = buffer.slice(0, nl)
            Queue.unsafeOffer(lines, line)
            buffer = buffer.slice(nl + 1)
          }
        })
        s.on("error", () => {})
        // a client that half-closed keeps reading; once the server has closed its side, it closes too
        s.on("end", () => s.end())
        s.on("close", () => {
          Queue.unsafeOffer(lines, null)
          Deferred.unsafeDone(closed, Effect.void)
        })
        s.once("connect", () => resume(Effect.succeed(s)))
      }),
      (s) => Effect.sync(() => s.destroy())
    )
    const write = (data: string | Buffer) =>
      Effect.async<void>((resume) => {
        if (socket.destroyed) return resume(Effect.void)
        socket.write(data, () => resume(Effect.void))
      })
    const next: Effect.Effect<any, "closed"> = Effect.flatMap(Queue.take(lines), (line) => {
      if (line === null) {
        Queue.unsafeOffer(lines, null)
        return Effect.fail("closed" as const)
      }
      return Effect.succeed(JSON.parse(line))
    })
    const client: RawClient = {
      socket,
      write,
      next,
      all: Effect.zipRight(
        Deferred.await(closed),
        Effect.map(Queue.takeAll(lines), (rest) => [...rest].flatMap((l) => (l === null ? [] : [JSON.parse(l)])))
      ),
      closed: Deferred.await(closed)
    }
    if (options.auth !== false) {
      yield* write(JSON.stringify({ id: "auth", op: "auth", token: TOKEN }) + "\n")
      const ok = yield* Effect.orDie(next)
      if (ok.ok !== true) return yield* Effect.dieMessage(`auth refused: ${JSON.stringify(ok)}`)
    }
    return client
  })
