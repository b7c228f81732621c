/**
 * A fault-injecting TCP proxy for reliability tests: put it between a pool and a server, then add latency, reset
 * connections (all at once, or the next one whose traffic matches), hold a connection's requests, or black-hole all
 * traffic.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import * as Net from "node:net"
import { MysqlServer } from "./MysqlServer.js"

/**
 * When `resetNextAfter` fires: once `bytesFromClient` bytes went from clients to the server since it was armed, or on
 * the first client → server chunk for which `match` holds. With `forward: true` the matching chunk is delivered to
 * the server before both sockets are reset (the server may act on it: a COMMIT that commits while its client
 * loses the answer); otherwise it is dropped (the server never sees it).
 *
 * @since 0.1.0
 * @category models
 */
export type ResetTrigger =
  | {
      readonly bytesFromClient: number
      readonly forward?: boolean | undefined
      readonly action?: "reset" | "blackhole" | undefined
    }
  | {
      readonly match: (chunk: Buffer) => boolean
      readonly forward?: boolean | undefined
      readonly action?: "reset" | "blackhole" | undefined
    }

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** The upstream server. */
  readonly target: { readonly host: string; readonly port: number }
  /** The address the proxy listens on; default `127.0.0.1`. */
  readonly host?: string | undefined
}

/**
 * @since 0.1.0
 * @category tags
 */
export class FaultProxy extends Context.Tag("@sessionfx/testing/FaultProxy")<FaultProxy, FaultProxy.Service>() {}

/**
 * @since 0.1.0
 */
export declare namespace FaultProxy {
  /**
   * @since 0.1.0
   * @category models
   */
  export interface Service {
    readonly host: string
    readonly port: number
    /** `url` (e.g. `MysqlServer.url`) with its host and port replaced by the proxy's. */
    readonly urlFor: (server: { readonly url: Redacted.Redacted<string> }) => Redacted.Redacted<string>
    /** Delays every chunk, both directions, by `ms` (order is kept); 0 turns it off. */
    readonly setLatency: (ms: number) => Effect.Effect<void>
    /** Destroys every client/upstream socket pair now (the client sees a reset); returns how many. */
    readonly resetAll: Effect.Effect<number>
    /** Arms a one-shot reset of the next connection whose client → server traffic meets `trigger`. */
    readonly resetNextAfter: (trigger: ResetTrigger) => Effect.Effect<void>
    /** Whether a reset armed by `resetNextAfter` is still waiting for its trigger. */
    readonly armed: Effect.Effect<boolean>
    /**
     * Arms a one-shot hold: the first client → server chunk for which `match` holds, and every later chunk of that
     * connection, wait in the proxy (the server has not seen them) until `releaseHeld`. A test reaches the window in
     * which a request is in flight and its answer not yet come.
     */
    readonly holdNext: (match: (chunk: Buffer) => boolean) => Effect.Effect<void>
    /** Whether some connection's traffic is held now (the armed hold has fired and not been released). */
    readonly holding: Effect.Effect<boolean>
    /** Forwards the held chunks to the server, in order, and lets traffic flow again; returns how many were held. */
    readonly releaseHeld: Effect.Effect<number>
    /**
     * On: connections are accepted and read, but nothing is forwarded and nothing answered (new ones get no
     * upstream). Off: traffic flows again; connections that lost data while black-holed are reset (their streams
     * are corrupt, as after a TCP timeout).
     */
    readonly blackhole: (on: boolean) => Effect.Effect<void>
    /** Client connections open now. */
    readonly connections: Effect.Effect<number>
    /** Counters since start: accepted connections, resets by `resetAll`/`resetNextAfter`/black hole healing. */
    readonly counters: Effect.Effect<{
      readonly accepted: number
      readonly resetAll: number
      readonly triggered: number
      readonly healed: number
    }>
  }
}

interface Pipe {
  readonly client: Net.Socket
  upstream: Net.Socket | undefined
  poisoned: boolean
  closed: boolean
  /** Client → server chunks held back by `holdNext`, until `releaseHeld`. */
  held: Array<Buffer> | undefined
  readonly toServer: Delayed
  readonly toClient: Delayed
}

/** Writes chunks to a socket after a delay, in order. */
class Delayed {
  private queue: Array<{ readonly due: number; readonly chunk: Buffer }> = []
  private timer: ReturnType<typeof setTimeout> | undefined
  constructor(
    private readonly latency: () => number,
    private readonly write: (chunk: Buffer) => void
  ) {}
  push(chunk: Buffer) {
    const ms = this.latency()
    if (ms <= 0 && this.queue.length === 0) return this.write(chunk)
    this.queue.push({ due: Date.now() + ms, chunk })
    this.schedule()
  }
  private schedule() {
    if (this.timer !== undefined || this.queue.length === 0) return
    this.timer = setTimeout(
      () => {
        this.timer = undefined
        const now = Date.now()
        while (this.queue.length > 0 && this.queue[0]!.due <= now) this.write(this.queue.shift()!.chunk)
        this.schedule()
      },
      Math.max(0, this.queue[0]!.due - Date.now())
    )
  }
  clear() {
    if (this.timer !== undefined) clearTimeout(this.timer)
    this.timer = undefined
    this.queue = []
  }
}

const destroyHard = (socket: Net.Socket | undefined) => {
  if (socket === undefined || socket.destroyed) return
  // an RST rather than a FIN where the runtime can: the peer sees ECONNRESET, as on a real network failure
  if (typeof socket.resetAndDestroy === "function") socket.resetAndDestroy()
  else socket.destroy()
}

/**
 * Starts a proxy to `options.target` on a free port; every socket is closed when the scope closes.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options): Effect.Effect<FaultProxy.Service, Error, Scope.Scope> =>
  Effect.gen(function* () {
    const pipes = new Set<Pipe>()
    let latency = 0
    let holed = false
    let trigger: (ResetTrigger & { seen: number }) | undefined
    let hold: ((chunk: Buffer) => boolean) | undefined
    const counters = { accepted: 0, resetAll: 0, triggered: 0, healed: 0 }

    const close = (pipe: Pipe) => {
      if (pipe.closed) return
      pipe.closed = true
      pipes.delete(pipe)
      pipe.toServer.clear()
      pipe.toClient.clear()
      destroyHard(pipe.client)
      destroyHard(pipe.upstream)
    }

    /** Decides what to do with a client → server chunk: forward, drop, or reset (after forwarding or not). */
    const fromClient = (pipe: Pipe, chunk: Buffer) => {
      if (holed || pipe.poisoned) {
        pipe.poisoned = true
        return
      }
      if (pipe.held !== undefined) {
        pipe.held.push(chunk)
        return
      }
      if (hold !== undefined && hold(chunk)) {
        hold = undefined
        pipe.held = [chunk]
        return
      }
      const t = trigger
      if (t !== undefined) {
        let fire: boolean
        if ("match" in t) fire = t.match(chunk)
        else {
          t.seen += chunk.length
          fire = t.seen >= t.bytesFromClient
        }
        if (fire) {
          trigger = undefined
          counters.triggered++
          const upstream = pipe.upstream
          if (t.action === "blackhole") {
            if (t.forward === true && upstream !== undefined) pipe.toServer.push(chunk)
            pipe.poisoned = true
            return
          }
          if (t.forward === true && upstream !== undefined && latency <= 0) {
            upstream.write(chunk, () => close(pipe))
          } else {
            close(pipe)
          }
          return
        }
      }
      pipe.toServer.push(chunk)
    }

    const connectUpstream = (pipe: Pipe) => {
      const upstream = Net.connect({ host: options.target.host, port: options.target.port })
      upstream.setNoDelay(true)
      pipe.upstream = upstream
      upstream.on("data", (chunk: Buffer) => {
        if (holed || pipe.poisoned) {
          pipe.poisoned = true
          return
        }
        pipe.toClient.push(chunk)
      })
      upstream.on("error", () => close(pipe))
      upstream.on("close", () => close(pipe))
    }

    const server = Net.createServer((client) => {
      counters.accepted++
      client.setNoDelay(true)
      const pipe: Pipe = {
        client,
        upstream: undefined,
        poisoned: false,
        closed: false,
        held: undefined,
        toServer: new Delayed(
          () => latency,
          (chunk) => {
            if (!pipe.closed && pipe.upstream !== undefined && !pipe.upstream.destroyed) pipe.upstream.write(chunk)
          }
        ),
        toClient: new Delayed(
          () => latency,
          (chunk) => {
            if (!pipe.closed && !client.destroyed) client.write(chunk)
          }
        )
      }
      pipes.add(pipe)
      client.on("data", (chunk: Buffer) => fromClient(pipe, chunk))
      client.on("error", () => close(pipe))
      client.on("close", () => close(pipe))
      if (holed) pipe.poisoned = true
      else connectUpstream(pipe)
    })

    const host = options.host ?? "127.0.0.1"
    const port = yield* Effect.acquireRelease(
      Effect.async<number, Error>((resume) => {
        server.once("error", (e) => resume(Effect.fail(e)))
        server.listen(0, host, () => resume(Effect.succeed((server.address() as Net.AddressInfo).port)))
      }),
      () =>
        Effect.async<void>((resume) => {
          for (const pipe of [...pipes]) close(pipe)
          server.close(() => resume(Effect.void))
        })
    )

    const service: FaultProxy.Service = {
      host,
      port,
      urlFor: (target) => {
        const url = new URL(Redacted.value(target.url))
        url.hostname = host
        url.port = String(port)
        url.searchParams.delete("socket")
        return Redacted.make(url.toString())
      },
      setLatency: (ms) =>
        Effect.sync(() => {
          latency = Math.max(0, ms)
        }),
      resetAll: Effect.sync(() => {
        const n = pipes.size
        for (const pipe of [...pipes]) close(pipe)
        counters.resetAll += n
        return n
      }),
      resetNextAfter: (t) =>
        Effect.sync(() => {
          trigger = { ...t, seen: 0 }
        }),
      armed: Effect.sync(() => trigger !== undefined),
      holdNext: (match) =>
        Effect.sync(() => {
          hold = match
        }),
      holding: Effect.sync(() => [...pipes].some((pipe) => pipe.held !== undefined)),
      releaseHeld: Effect.sync(() => {
        let n = 0
        for (const pipe of pipes) {
          const held = pipe.held
          if (held === undefined) continue
          pipe.held = undefined
          n += held.length
          for (const chunk of held) pipe.toServer.push(chunk)
        }
        return n
      }),
      blackhole: (on) =>
        Effect.sync(() => {
          holed = on
          if (!on) {
            for (const pipe of [...pipes]) {
              if (pipe.poisoned) {
                counters.healed++
                close(pipe)
              }
            }
          }
        }),
      connections: Effect.sync(() => pipes.size),
      counters: Effect.sync(() => ({ ...counters }))
    }
    return service
  })

/**
 * A proxy in front of `options.target`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options): Layer.Layer<FaultProxy, Error> => Layer.scoped(FaultProxy, make(options))

/**
 * A proxy in front of the `MysqlServer` of the context (its TCP host and port).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerServer: Layer.Layer<FaultProxy, Error, MysqlServer> = Layer.scoped(
  FaultProxy,
  Effect.flatMap(MysqlServer, (server) => make({ target: { host: server.host, port: server.port } }))
)
