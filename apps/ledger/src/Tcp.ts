/**
 * The TCP line protocol: one JSON request per line, one JSON response per line, in order. A fiber per connection,
 * a unit of work per request; the first line must be `{"op":"auth","token":"…"}`.
 */
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as FiberSet from "effect/FiberSet"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Net from "node:net"
import { LedgerConfig, tokenMatches } from "./Config.js"
import {
  IdleTimeout,
  InternalError,
  LineTooLong,
  ShuttingDown,
  TooManyConnections,
  Unauthorized
} from "./Domain/Errors.js"
import { Ledger } from "./Ledger.js"
import * as Metrics from "./Metrics.js"
import * as Protocol from "./Protocol.js"

export class TcpServer extends Context.Tag("ledger/TcpServer")<
  TcpServer,
  {
    readonly host: string
    readonly port: number
    /** Connections being served now. */
    readonly connections: Effect.Effect<number>
  }
>() {}

type Item = { readonly _tag: "Line"; readonly line: string } | { readonly _tag: "TooLong" } | { readonly _tag: "End" }

const HIGH_WATER = 64
const LOW_WATER = 8

export const make = Effect.gen(function* () {
  const config = yield* LedgerConfig
  const ledger = yield* Ledger
  const fibers = yield* FiberSet.make<void, never>()
  const run = yield* FiberSet.runtime(fibers)<never>()
  const shutdown = yield* Deferred.make<void>()
  const sockets = new Set<Net.Socket>()
  const idleTimeout = Duration.decode(config.idleTimeout)
  let active = 0
  let closing = false

  const encode = (response: Protocol.Response) => JSON.stringify(response) + "\n"

  const finish = (socket: Net.Socket) => {
    socket.end()
    setTimeout(() => socket.destroy(), 2_000).unref()
  }

  const serve = (socket: Net.Socket) =>
    Effect.gen(function* () {
      const inbox = yield* Queue.unbounded<Item>()
      let parts: Array<Buffer> = []
      let partLength = 0
      let discarding = false
      let paused = false
      let done = false

      const push = (item: Item) => {
        Queue.unsafeOffer(inbox, item)
        if (!paused && inbox.unsafeSize().pipe(Option.getOrElse(() => 0)) > HIGH_WATER) {
          paused = true
          socket.pause()
        }
      }
      socket.on("data", (chunk: Buffer) => {
        if (done) return
        let start = 0
        while (start <= chunk.length) {
          const nl = chunk.indexOf(10, start)
          if (nl === -1) {
            const rest = chunk.subarray(start)
            if (!discarding && rest.length > 0) {
              partLength += rest.length
              if (partLength > config.maxLineBytes) {
                discarding = true
                parts = []
                push({ _tag: "TooLong" })
              } else {
                parts.push(rest)
              }
            }
            break
          }
          const piece = chunk.subarray(start, nl)
          if (discarding) {
            discarding = false
          } else if (partLength + piece.length > config.maxLineBytes) {
            push({ _tag: "TooLong" })
          } else {
            const line = Buffer.concat([...parts, piece])
              .toString("utf8")
              .trim()
            if (line.length > 0) push({ _tag: "Line", line })
          }
          parts = []
          partLength = 0
          start = nl + 1
        }
      })
      const onEnd = () => Queue.unsafeOffer(inbox, { _tag: "End" })
      socket.on("end", onEnd)
      socket.on("close", onEnd)
      socket.on("error", (error) => {
        onEnd()
        run(Effect.logDebug("tcp client socket error", error.message))
      })

      const take = Effect.flatMap(Queue.take(inbox), (item) =>
        Effect.sync(() => {
          if (paused && inbox.unsafeSize().pipe(Option.getOrElse(() => 0)) < LOW_WATER) {
            paused = false
            socket.resume()
          }
          return item
        })
      )

      const write = (response: Protocol.Response) =>
        Effect.async<void>((resume) => {
          if (socket.destroyed || !socket.writable) return resume(Effect.void)
          socket.write(encode(response), () => resume(Effect.void))
        })

      /** Answers requests already received with `shutting_down`, so that a client knows which were not run. */
      const refuseQueued = Effect.gen(function* () {
        const rest = yield* Queue.takeAll(inbox)
        for (const item of rest) {
          if (item._tag !== "Line") continue
          const parsed = Protocol.parse(item.line)
          const id = parsed.id
          yield* write(
            Protocol.failure(id, new ShuttingDown({ message: "the server is shutting down; this request was not run" }))
          )
        }
      })

      let authenticated = false
      while (true) {
        if (closing) {
          yield* refuseQueued
          break
        }
        const next = yield* take.pipe(
          Effect.raceFirst(Effect.as(Deferred.await(shutdown), { _tag: "Shutdown" } as const)),
          Effect.timeoutOption(idleTimeout)
        )
        if (Option.isNone(next)) {
          yield* write(
            Protocol.failure(
              null,
              new IdleTimeout({
                message: `no request for ${Duration.format(idleTimeout)}; closing the connection`
              })
            )
          )
          break
        }
        const item = next.value
        if (item._tag === "End") break
        if (item._tag === "Shutdown") continue
        if (item._tag === "TooLong") {
          yield* write(
            Protocol.failure(
              null,
              new LineTooLong({
                limit: config.maxLineBytes,
                message: `request line longer than ${config.maxLineBytes} bytes; it was discarded`
              })
            )
          )
          continue
        }
        const parsed = Protocol.parse(item.line)
        if (Protocol.isResponse(parsed)) {
          yield* write(parsed)
          continue
        }
        if (parsed.op === "auth") {
          const token = parsed.body.token
          if (typeof token === "string" && tokenMatches(config.token, token)) {
            authenticated = true
            yield* write({ id: parsed.id, ok: true, result: { authenticated: true } })
            continue
          }
          yield* write(Protocol.failure(parsed.id, new Unauthorized({ message: "invalid token" })))
          break
        }
        if (!authenticated) {
          yield* write(
            Protocol.failure(
              parsed.id,
              new Unauthorized({ message: 'authenticate first: send {"op":"auth","token":"…"} as the first line' })
            )
          )
          break
        }
        const opName =
          typeof parsed.op === "string" && Object.hasOwn(Protocol.operations, parsed.op) ? parsed.op : "unknown"
        const response = yield* Protocol.dispatch(ledger, parsed).pipe(
          Effect.flatMap((r) => (r.ok ? Effect.succeed(r) : Effect.fail(r))),
          Metrics.track(opName, "tcp", (r) => (r as { error: Protocol.ErrorBody }).error.code),
          Effect.merge,
          Effect.catchAllDefect((defect) =>
            Effect.as(
              Effect.logError("tcp request failed with a defect", defect),
              Protocol.failure(parsed.id, new InternalError({ message: "internal error" }))
            )
          )
        )
        yield* write(response)
      }
      done = true
    }).pipe(
      Effect.annotateLogs({ remote: `${socket.remoteAddress}:${socket.remotePort}` }),
      Effect.ensuring(
        Effect.sync(() => {
          active--
          sockets.delete(socket)
          finish(socket)
        }).pipe(Effect.zipRight(Metric.set(Metrics.connections, active)))
      )
    )

  const server = Net.createServer((socket) => {
    socket.setNoDelay(true)
    if (closing) {
      socket.destroy()
      return
    }
    if (active >= config.maxConnections) {
      socket.on("error", () => {})
      socket.write(
        encode(
          Protocol.failure(
            null,
            new TooManyConnections({
              limit: config.maxConnections,
              message: `the server accepts at most ${config.maxConnections} connections; try again later`
            })
          )
        )
      )
      finish(socket)
      run(Metric.increment(Metrics.rejectedConnections))
      return
    }
    active++
    sockets.add(socket)
    run(Effect.zipRight(Metric.set(Metrics.connections, active), serve(socket)))
  })

  yield* Effect.async<void, Error>((resume) => {
    const onError = (error: Error) => resume(Effect.fail(error))
    server.once("error", onError)
    server.listen(config.tcpPort, config.host, () => {
      server.off("error", onError)
      resume(Effect.void)
    })
  }).pipe(Effect.orDie)
  server.on("error", (error) => run(Effect.logError("tcp server error", error.message)))

  const address = server.address() as Net.AddressInfo
  yield* Effect.logInfo("ledger TCP line protocol listening").pipe(
    Effect.annotateLogs({ host: address.address, port: address.port })
  )

  yield* Effect.addFinalizer(() =>
    Effect.gen(function* () {
      closing = true
      server.close()
      yield* Deferred.succeed(shutdown, undefined)
      const drained = yield* FiberSet.awaitEmpty(fibers).pipe(Effect.timeoutOption(config.shutdownTimeout))
      if (Option.isNone(drained)) {
        yield* Effect.logWarning("tcp shutdown: requests still running after the shutdown timeout; interrupting them")
        yield* FiberSet.clear(fibers)
      }
      for (const socket of sockets) socket.destroy()
      yield* Effect.logInfo("ledger TCP server stopped")
    })
  )

  return {
    host: address.address,
    port: address.port,
    connections: Effect.sync(() => active)
  }
})

export const layer = Layer.scoped(TcpServer, make)
