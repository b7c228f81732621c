/**
 * A small client of the TCP line protocol (used by the demo and the tests): `send` writes raw text, `next` reads
 * the next response line, `call` does both for one request.
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Queue from "effect/Queue"
import type * as Scope from "effect/Scope"
import * as Net from "node:net"

export class ClientClosed extends Data.TaggedError("ClientClosed")<{ readonly message: string }> {}

export class CallFailed extends Data.TaggedError("CallFailed")<{
  readonly code: string
  readonly message: string
  readonly error: Record<string, unknown>
}> {}

export interface Response {
  readonly id: string | number | null
  readonly ok: boolean
  readonly result?: any
  readonly error?: { readonly code: string; readonly message: string; readonly [k: string]: unknown }
}

export interface LineClient {
  readonly socket: Net.Socket
  readonly send: (raw: string) => Effect.Effect<void>
  /** The next response line; fails with `ClientClosed` once the server has closed the connection. */
  readonly next: Effect.Effect<Response, ClientClosed>
  /** Sends one request and reads one response (do not interleave with pipelined use). */
  readonly request: (request: Record<string, unknown>) => Effect.Effect<Response, ClientClosed>
  /** `request` that succeeds with `result` or fails with `CallFailed`. */
  readonly call: (op: string, payload?: Record<string, unknown>) => Effect.Effect<any, ClientClosed | CallFailed>
  /** Resolves when the server has closed the connection. */
  readonly closed: Effect.Effect<void>
}

const END = Symbol("end")

export const connect = (options: {
  readonly host: string
  readonly port: number
  readonly token?: string | undefined
}): Effect.Effect<LineClient, ClientClosed | CallFailed, Scope.Scope> =>
  Effect.gen(function* () {
    const lines = yield* Queue.unbounded<string | typeof END>()
    let closedResolve: () => void = () => {}
    const closedPromise = new Promise<void>((resolve) => (closedResolve = resolve))
    const socket = yield* Effect.acquireRelease(
      Effect.async<Net.Socket, ClientClosed>((resume) => {
        const s = Net.connect({ host: options.host, port: options.port })
        s.setNoDelay(true)
        let buffer = ""
        s.setEncoding("utf8")
        s.on("data", (chunk: string) => {
          buffer += chunk
          let nl: number
          while ((nl = buffer.indexOf("\n")) !== -1) {
            Queue.unsafeOffer(lines, buffer.slice(0, nl))
            buffer = buffer.slice(nl + 1)
          }
        })
        s.on("close", () => {
          Queue.unsafeOffer(lines, END)
          closedResolve()
        })
        s.on("error", (e) => resume(Effect.fail(new ClientClosed({ message: e.message }))))
        s.once("connect", () => resume(Effect.succeed(s)))
      }),
      (s) => Effect.sync(() => s.destroy())
    )
    const send = (raw: string) =>
      Effect.async<void>((resume) => {
        if (socket.destroyed) return resume(Effect.void)
        socket.write(raw, () => resume(Effect.void))
      })
    const next: Effect.Effect<Response, ClientClosed> = Effect.flatMap(Queue.take(lines), (line) => {
      if (line === END) {
        Queue.unsafeOffer(lines, END)
        return Effect.fail(new ClientClosed({ message: "the server closed the connection" }))
      }
      return Effect.try({
        try: () => JSON.parse(line) as Response,
        catch: () => new ClientClosed({ message: `not a JSON line: ${line.slice(0, 200)}` })
      })
    })
    const request = (req: Record<string, unknown>) => Effect.zipRight(send(JSON.stringify(req) + "\n"), next)
    let counter = 0
    const call = (op: string, payload: Record<string, unknown> = {}) =>
      Effect.flatMap(request({ id: ++counter, op, ...payload }), (r) =>
        r.ok
          ? Effect.succeed(r.result)
          : Effect.fail(new CallFailed({ code: r.error!.code, message: r.error!.message, error: r.error! }))
      )
    const client: LineClient = {
      socket,
      send,
      next,
      request,
      call,
      closed: Effect.promise(() => closedPromise)
    }
    if (options.token !== undefined) yield* call("auth", { token: options.token })
    return client
  })
