/**
 * The TCP line protocol: one JSON request per line, one JSON response per line, in order. The first line must be
 * `{"op":"auth","token":"…"}`.
 *
 * Before authentication a connection costs no fiber: plain socket callbacks read one short line under an absolute
 * deadline, in a budget of their own (`maxUnauthenticated`; when it is full the oldest unauthenticated connection is
 * closed), so unauthenticated clients never take a slot of the authenticated ones (`maxConnections`). Anything but
 * a valid `auth` closes the connection.
 *
 * After authentication: a fiber per connection runs a plain sequential loop — take the next line, answer it, and
 * write what is ready in one socket write when there is nothing more to read or before waiting on the database. It
 * waits (one `Effect.async`) only when it has nothing to do; no queue, race or timeout per request.
 *
 * Bounded: a connection holds at most a few lines of input (reading pauses past `HIGH_WATER` lines) and a bounded
 * amount of unsent output (answering stops while the socket needs draining, whatever the kind of answer), and a
 * client that stops reading is closed after `writeTimeout`. A client that half-closes (shuts down writing, keeps
 * reading) gets the answers of every line it sent; whatever closes a connection answers the lines not run.
 * No exception raised by a client's bytes reaches the process: one would end that connection only, logged.
 */
import { Engine } from "@sessionfx/session"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as FiberId from "effect/FiberId"
import * as FiberSet from "effect/FiberSet"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Net from "node:net"
import { isUtf8 } from "node:buffer"
import { AuthGuard } from "./AuthGuard.js"
import { LedgerConfig, tokenMatches } from "./Config.js"
import {
  IdleTimeout,
  InternalError,
  InvalidRequest,
  LineTooLong,
  ShuttingDown,
  TooManyAuthFailures,
  TooManyConnections,
  Unauthorized,
  Unavailable
} from "./Domain/Errors.js"
import { Ledger } from "./Ledger.js"
import * as Metrics from "./Metrics.js"
import * as Protocol from "./Protocol.js"

export class TcpServer extends Context.Tag("ledger/TcpServer")<
  TcpServer,
  {
    readonly host: string
    readonly port: number
    /** Open connections, authenticated or not. */
    readonly connections: Effect.Effect<number>
    /** Open connections that have not authenticated yet. */
    readonly unauthenticated: Effect.Effect<number>
    /** Bytes written to authenticated connections and not yet sent (the clients have not read them). */
    readonly unsent: Effect.Effect<number>
  }
>() {}

/** What wakes a waiting connection fiber. */
type Wake = "input" | "end" | "idle" | "shutdown" | "drain" | "stalled"

const TOO_LONG = Symbol("too long")
/** A line whose bytes are not valid UTF-8 (never decoded lossily: U+FFFD would make distinct keys equal). */
const NOT_UTF8 = Symbol("not utf-8")
/** A request line already parsed and dispatched (by the inline path) whose answer needs the database. */
interface Pending {
  readonly parsed: Protocol.Parsed
  readonly answer: Effect.Effect<Protocol.Response>
}
type Item = string | typeof TOO_LONG | typeof NOT_UTF8 | Pending

/** Pause reading when this many lines wait, resume below the low mark. */
const HIGH_WATER = 64
const LOW_WATER = 8
/** Write what is ready once this much is pending, even with more lines to answer. */
const FLUSH_BYTES = 64 * 1024
/** The longest first line (an `auth` request is short). */
const AUTH_LINE_BYTES = 4096

const encode = (response: Protocol.Response) => JSON.stringify(response) + "\n"

/**
 * Writes what is left, closes our side, and destroys the socket if the peer has not read it all and closed within
 * `graceMs`.
 */
const finish = (socket: Net.Socket, graceMs: number, last?: string) => {
  if (last !== undefined && last.length > 0 && socket.writable) socket.end(last)
  else socket.end()
  const timer = setTimeout(() => socket.destroy(), graceMs).unref()
  socket.once("close", () => clearTimeout(timer))
}

interface Connection {
  readonly socket: Net.Socket
  readonly lines: Array<Item>
  /** Set while the fiber waits. */
  wake: ((why: Wake) => void) | undefined
  /** The fiber waits for input (not for the socket to drain): new lines may be answered inline. */
  idle: boolean
  /** The client stopped reading for longer than the write timeout. */
  stalled: boolean
  ended: boolean
  paused: boolean
  /** Bytes of a line not yet complete. */
  parts: Array<Buffer>
  partLength: number
  discarding: boolean
  /** When the request now waiting on the database started (0: none), and its id. */
  busySince: number
  busyId: Protocol.RequestId
  /** The connection's fiber; set when it starts. */
  fiber: Fiber.RuntimeFiber<void> | undefined
  /** The watchdog interrupted a request that ran past the request timeout. */
  timedOut: boolean
  /** Called after new lines were queued. */
  readonly onInput: () => void
  /** Waits for the next wake-up (`waitFor`); set with the connection. */
  wait: Effect.Effect<Wake>
}

/** Splits `chunk` into lines of `c` (a line over `max` bytes becomes one TOO_LONG and is discarded). */
const feed = (c: Connection, chunk: Buffer, max: number) => {
  let start = 0
  while (start <= chunk.length) {
    const nl = chunk.indexOf(10, start)
    if (nl === -1) {
      const rest = chunk.subarray(start)
      if (!c.discarding && rest.length > 0) {
        c.partLength += rest.length
        if (c.partLength > max) {
          c.discarding = true
          c.parts = []
          c.lines.push(TOO_LONG)
        } else {
          c.parts.push(rest)
        }
      }
      break
    }
    const piece = chunk.subarray(start, nl)
    if (c.discarding) {
      c.discarding = false
    } else if (c.partLength + piece.length > max) {
      c.lines.push(TOO_LONG)
    } else {
      const bytes = c.parts.length === 0 ? piece : Buffer.concat([...c.parts, piece])
      if (!isUtf8(bytes)) c.lines.push(NOT_UTF8)
      else {
        const line = bytes.toString("utf8").trim()
        if (line.length > 0) c.lines.push(line)
      }
    }
    c.parts = []
    c.partLength = 0
    start = nl + 1
  }
  if (!c.paused && c.lines.length > HIGH_WATER) {
    c.paused = true
    c.socket.pause()
  }
  if (c.lines.length > 0) c.onInput()
}

export const make = Effect.gen(function* () {
  const config = yield* LedgerConfig
  const ledger = yield* Ledger
  const guard = yield* AuthGuard
  const engine = yield* Engine.Engine
  const fibers = yield* FiberSet.make<void, never>()
  // the connections' fibers carry the Engine alone in their context, not every service of the application: each unit
  // of work copies its fiber's context (to add its Session and SqlClient), so a smaller one costs less per request
  const run = yield* Effect.mapInputContext(FiberSet.runtime(fibers)<never>(), (_: Context.Context<never>) =>
    Context.make(Engine.Engine, engine)
  )
  const idleMs = Duration.toMillis(Duration.decode(config.idleTimeout))
  const requestMs = Duration.toMillis(Duration.decode(config.requestTimeout))
  const authMs = Duration.toMillis(Duration.decode(config.authTimeout))
  const writeMs = Duration.toMillis(Duration.decode(config.writeTimeout))
  /** Unauthenticated sockets, oldest first (a Set keeps insertion order). */
  const pending = new Set<Net.Socket>()
  const open = new Set<Connection>()
  let closing = false

  const gauges = () => {
    Metrics.connections.unsafeUpdate(pending.size + open.size, [])
    Metrics.unauthenticatedConnections.unsafeUpdate(pending.size, [])
  }

  const idleLine = encode(
    Protocol.failure(
      null,
      new IdleTimeout({ message: `no request for ${Duration.format(config.idleTimeout)}; closing the connection` })
    )
  )
  const tooLongLine = encode(
    Protocol.failure(
      null,
      new LineTooLong({
        limit: config.maxLineBytes,
        message: `request line longer than ${config.maxLineBytes} bytes; it was discarded`
      })
    )
  )
  const notUtf8Line = encode(
    Protocol.failure(
      null,
      new InvalidRequest({ message: "the request line is not valid UTF-8 text; it was discarded" })
    )
  )
  const notRun = new ShuttingDown({ message: "the server is shutting down; this request was not run" })
  const internal = new InternalError({ message: "internal error" })

  /** Runs `f` (a socket callback); an exception ends that connection only, and is logged as the defect it is. */
  const guarded =
    <A extends ReadonlyArray<unknown>>(socket: Net.Socket, f: (...args: A) => void) =>
    (...args: A) => {
      try {
        f(...args)
      } catch (defect) {
        run(Effect.logError("tcp connection failed with a defect; closing it", defect))
        socket.destroy()
      }
    }

  /** Dispatches a parsed request; an exception becomes that request's `internal` answer (and an ERROR log). */
  const dispatch = (parsed: Protocol.Parsed): Protocol.Response | Effect.Effect<Protocol.Response> => {
    try {
      return Protocol.dispatch(ledger, parsed)
    } catch (defect) {
      run(Effect.logError("tcp request failed with a defect", defect))
      return Protocol.failure(parsed.id, internal)
    }
  }

  /** The answer of an item that needs no database: a line too long or not UTF-8, or a malformed request. */
  const refusalOf = (item: typeof TOO_LONG | typeof NOT_UTF8) => (item === TOO_LONG ? tooLongLine : notUtf8Line)

  /** Answers every line received but not run, with `error`, so that the client knows; none is left unanswered. */
  const unanswered = (c: Connection, error: ShuttingDown | Unavailable) => {
    let out = ""
    for (const item of c.lines.splice(0)) {
      if (typeof item === "symbol") out += refusalOf(item)
      else out += encode(Protocol.failure(typeof item === "string" ? idOf(item) : item.parsed.id, error))
    }
    return out
  }

  const idOf = (line: string) => Protocol.parse(line).id

  /** What the fiber of `c` yields to wait for a wake-up; built once per connection (its loop waits once per request). */
  const waitFor = (c: Connection) => {
    const cancel = Effect.sync(() => {
      c.wake = undefined
      c.idle = false
    })
    return Effect.async<Wake>((resume) => {
      c.wake = (why) => {
        c.wake = undefined
        c.idle = false
        resume(Effect.succeed(why))
      }
      return cancel
    })
  }

  /**
   * Waits until the socket has room again. A client that reads nothing for `writeTimeout` is marked stalled (the
   * caller closes it); one that half-closed is still waited for, since it may be reading.
   */
  const awaitDrain = (c: Connection) =>
    Effect.gen(function* () {
      const socket = c.socket
      const onDrain = () => c.wake?.("drain")
      socket.on("drain", onDrain)
      const timer = setTimeout(() => {
        c.stalled = true
        c.wake?.("stalled")
      }, writeMs)
      while (socket.writableNeedDrain && !socket.destroyed && !c.stalled && !closing) {
        if ((yield* c.wait) === "end") c.ended = true
      }
      clearTimeout(timer)
      socket.off("drain", onDrain)
    })

  /**
   * New input while the connection's fiber waits with nothing queued: what needs no database (malformed lines,
   * unknown operations, invalid payloads) is answered right here, in one write, without waking the fiber; the first
   * request that needs the database is queued parsed and dispatched, and the fiber woken for it.
   */
  const inline = (c: Connection) => {
    if (c.wake === undefined || !c.idle || closing || c.socket.writableNeedDrain) return void c.wake?.("input")
    let out = ""
    // at most FLUSH_BYTES at once: the rest waits for the fiber, which writes only as fast as the client reads
    while (c.lines.length > 0 && out.length < FLUSH_BYTES) {
      const item = c.lines[0]!
      if (typeof item === "symbol") {
        out += refusalOf(item)
        c.lines.shift()
        continue
      }
      if (typeof item !== "string") break
      const parsed = Protocol.parse(item)
      if (Protocol.isResponse(parsed)) {
        out += encode(parsed)
      } else {
        if (parsed.op === "auth") break
        const started = performance.now()
        const answer = dispatch(parsed)
        if (Effect.isEffect(answer)) {
          c.lines[0] = { parsed, answer }
          break
        }
        record(parsed, answer, started)
        out += encode(answer)
      }
      c.lines.shift()
    }
    if (out.length > 0 && c.socket.writable) c.socket.write(out)
    if (c.paused && c.lines.length < LOW_WATER) {
      c.paused = false
      c.socket.resume()
    }
    if (c.lines.length > 0) c.wake("input")
  }

  const record = (parsed: Protocol.Parsed, response: Protocol.Response, started: number) =>
    Metrics.record(
      Protocol.operationOf(parsed.op) === undefined ? "unknown" : (parsed.op as string),
      "tcp",
      response.ok ? "ok" : response.error.code,
      performance.now() - started
    )

  /** The loop of an authenticated connection. */
  const serve = (c: Connection) =>
    Effect.gen(function* () {
      const socket = c.socket
      let out = ""
      const flush = () => {
        if (out.length > 0 && socket.writable) socket.write(out)
        out = ""
      }
      while (true) {
        if (closing) break
        // every kind of answer counts: at most FLUSH_BYTES pending here, and none while the socket needs draining
        if (out.length >= FLUSH_BYTES) flush()
        if (socket.writableNeedDrain) {
          flush()
          yield* awaitDrain(c)
          if (c.stalled) break
        }
        const item = c.lines.shift()
        if (item === undefined) {
          flush()
          if (c.ended) break
          c.idle = true
          const why = yield* c.wait
          if (why === "idle") {
            out += idleLine
            break
          }
          if (why === "end") c.ended = true
          continue
        }
        if (c.paused && c.lines.length < LOW_WATER) {
          c.paused = false
          socket.resume()
        }
        let parsed: Protocol.Parsed
        let answer: Protocol.Response | Effect.Effect<Protocol.Response>
        let started = performance.now()
        if (typeof item === "object") {
          parsed = item.parsed
          answer = item.answer
        } else {
          if (typeof item === "symbol") {
            out += refusalOf(item)
            continue
          }
          const p = Protocol.parse(item)
          if (Protocol.isResponse(p)) {
            out += encode(p)
            continue
          }
          parsed = p
          if (parsed.op === "auth") {
            // already authenticated: a repeated valid auth is answered, an invalid one closes
            const token = parsed.body.token
            if (typeof token === "string" && tokenMatches(config.token, token)) {
              out += encode({ id: parsed.id, ok: true, result: { authenticated: true } })
              continue
            }
            guard.failed(socket.remoteAddress ?? "unknown")
            out += encode(Protocol.failure(parsed.id, new Unauthorized({ message: "invalid token" })))
            out += unanswered(c, afterInvalidAuth)
            break
          }
          started = performance.now()
          answer = dispatch(parsed)
        }
        let response: Protocol.Response
        if (Effect.isEffect(answer)) {
          flush()
          c.busySince = Date.now()
          c.busyId = parsed.id
          response = yield* Effect.catchAllDefect(answer, (defect) =>
            Effect.as(
              Effect.logError("tcp request failed with a defect", defect),
              Protocol.failure(parsed.id, internal)
            )
          )
          c.busySince = 0
        } else {
          response = answer
        }
        record(parsed, response, started)
        out += encode(response)
      }
      flush()
    }).pipe(
      Effect.ensuring(
        Effect.sync(() => {
          open.delete(c)
          gauges()
          if (c.stalled) {
            Metrics.rejected("write_timeout")
            return void c.socket.destroy()
          }
          const last = c.timedOut
            ? encode(Protocol.failure(c.busyId, tookTooLong)) + unanswered(c, afterTimeout)
            : unanswered(c, notRun)
          finish(c.socket, writeMs, last)
        })
      )
    )

  const afterTimeout = new Unavailable({
    message: "not run: an earlier request on this connection ran past the request timeout, and the connection is closed"
  })
  const afterInvalidAuth = new ShuttingDown({
    message: "not run: an invalid auth request on this connection closed it"
  })
  const tookTooLong = new Unavailable({
    message: `the request ran longer than ${Duration.format(config.requestTimeout)} and was rolled back; the connection is closed`
  })

  /**
   * The request timeout of every connection, with one timer: a request waiting on the database past it is interrupted
   * (its unit rolls back), answered `unavailable`, and its connection closed — no timer or race per request.
   */
  if (requestMs > 0) {
    const watchdog = setInterval(
      () => {
        const now = Date.now()
        for (const c of open) {
          if (c.busySince > 0 && now - c.busySince > requestMs && !c.timedOut && c.fiber !== undefined) {
            c.timedOut = true
            c.fiber.unsafeInterruptAsFork(FiberId.none)
          }
        }
      },
      Math.max(50, Math.min(1_000, requestMs / 4))
    )
    watchdog.unref()
    yield* Effect.addFinalizer(() => Effect.sync(() => clearInterval(watchdog)))
  }

  /** Refuses an unauthenticated socket with `error` and closes it. */
  const refuse = (
    socket: Net.Socket,
    error: Unauthorized | TooManyConnections | TooManyAuthFailures,
    reason: string,
    id: Protocol.RequestId = null
  ) => {
    pending.delete(socket)
    gauges()
    Metrics.rejected(reason)
    finish(socket, 2_000, encode(Protocol.failure(id, error)))
  }

  /** The authentication phase: plain callbacks, a deadline from accept, one line. */
  const accept = (socket: Net.Socket) => {
    socket.setNoDelay(true)
    socket.on("error", () => socket.destroy())
    if (closing) return void socket.destroy()
    if (pending.size >= config.maxUnauthenticated) {
      const oldest = pending.values().next().value!
      refuse(
        oldest,
        new Unauthorized({ message: "too many unauthenticated connections: the oldest was closed" }),
        "unauthenticated_budget"
      )
    }
    pending.add(socket)
    gauges()
    const deadline = setTimeout(
      () =>
        refuse(
          socket,
          new Unauthorized({ message: `no valid auth within ${Duration.format(config.authTimeout)}` }),
          "auth_timeout"
        ),
      authMs
    )
    deadline.unref()
    let parts: Array<Buffer> = []
    let length = 0
    const peer = socket.remoteAddress ?? "unknown"
    const onData = (chunk: Buffer) => {
      if (!pending.has(socket)) return
      const nl = chunk.indexOf(10)
      if (nl === -1 || length + nl > AUTH_LINE_BYTES) {
        parts.push(chunk)
        length += chunk.length
        if (length > AUTH_LINE_BYTES || nl !== -1) {
          clearTimeout(deadline)
          refuse(socket, new Unauthorized({ message: "the first line must be a short auth request" }), "unauthorized")
        }
        return
      }
      const bytes = Buffer.concat([...parts, chunk.subarray(0, nl)])
      parts = []
      clearTimeout(deadline)
      socket.off("data", guardedData)
      const parsed = Protocol.parse(isUtf8(bytes) ? bytes.toString("utf8") : "")
      const token = Protocol.isResponse(parsed) ? undefined : parsed.body.token
      const id = Protocol.isResponse(parsed) ? null : parsed.id
      const wait = guard.waitFor(peer)
      if (wait > 0) {
        const seconds = Math.ceil(wait / 1000)
        return refuse(
          socket,
          new TooManyAuthFailures({
            retryAfterMs: wait,
            message: `too many failed authentications from this address: try again in ${seconds} s`
          }),
          "auth_backoff",
          id
        )
      }
      if (
        Protocol.isResponse(parsed) ||
        parsed.op !== "auth" ||
        typeof token !== "string" ||
        !tokenMatches(config.token, token)
      ) {
        guard.failed(peer)
        const message =
          !Protocol.isResponse(parsed) && parsed.op === "auth"
            ? "invalid token"
            : 'authenticate first: send {"op":"auth","token":"…"} as the first line'
        return refuse(socket, new Unauthorized({ message }), "unauthorized", id)
      }
      guard.succeeded(peer)
      if (closing) return refuse(socket, new Unauthorized({ message: "the server is shutting down" }), "shutdown")
      if (open.size >= config.maxConnections) {
        return refuse(
          socket,
          new TooManyConnections({
            limit: config.maxConnections,
            message: `the server serves at most ${config.maxConnections} connections; try again later`
          }),
          "connection_limit"
        )
      }
      pending.delete(socket)
      const c: Connection = {
        socket,
        lines: [],
        wake: undefined,
        idle: false,
        stalled: false,
        ended: false,
        paused: false,
        parts: [],
        partLength: 0,
        discarding: false,
        busySince: 0,
        busyId: null,
        fiber: undefined,
        timedOut: false,
        onInput: () => inline(c),
        wait: Effect.never
      }
      c.wait = waitFor(c)
      open.add(c)
      gauges()
      socket.write(encode({ id: parsed.id, ok: true, result: { authenticated: true } }))
      socket.on(
        "data",
        guarded(socket, (more: Buffer) => feed(c, more, config.maxLineBytes))
      )
      const onEnd = () => {
        c.ended = true
        c.wake?.("end")
      }
      socket.on("end", onEnd)
      socket.on("close", onEnd)
      socket.setTimeout(idleMs, () => c.wake?.("idle"))
      if (chunk.length > nl + 1) feed(c, chunk.subarray(nl + 1), config.maxLineBytes)
      c.fiber = run(serve(c))
    }
    const guardedData = guarded(socket, onData)
    socket.on("data", guardedData)
    // half-open sockets are allowed (to answer a client that shuts down writing): one that ends before it has
    // authenticated is closed
    socket.once("end", () => {
      if (!pending.has(socket)) return
      clearTimeout(deadline)
      socket.off("data", guardedData)
      refuse(socket, new Unauthorized({ message: "the connection ended before a valid auth" }), "unauthorized")
    })
    socket.on("close", () => {
      clearTimeout(deadline)
      if (pending.delete(socket)) gauges()
    })
  }

  const server = Net.createServer({ allowHalfOpen: true }, accept)
  yield* Effect.async<void, Error>((resume) => {
    const onError = (error: Error) => resume(Effect.fail(error))
    server.once("error", onError)
    server.listen(config.tcpPort, config.host, () => {
      server.off("error", onError)
      resume(Effect.void)
    })
  }).pipe(Effect.orDie)
  server.on("error", (error) => run(Effect.logError("tcp server error", error.message)))
  gauges()

  const address = server.address() as Net.AddressInfo
  yield* Effect.logInfo("ledger TCP line protocol listening").pipe(
    Effect.annotateLogs({ host: address.address, port: address.port })
  )

  yield* Effect.addFinalizer(() =>
    Effect.gen(function* () {
      closing = true
      server.close()
      const connections = open.size + pending.size
      const inFlight = [...open].filter((c) => c.busySince > 0).length
      yield* Effect.logInfo("ledger TCP server draining").pipe(
        Effect.annotateLogs({ connections: connections, requests_in_flight: inFlight })
      )
      for (const socket of pending) socket.destroy()
      for (const c of open) c.wake?.("shutdown")
      const drained = yield* FiberSet.awaitEmpty(fibers).pipe(Effect.timeoutOption(config.shutdownTimeout))
      const interrupted = Option.isNone(drained) ? [...open].filter((c) => c.busySince > 0).length : 0
      if (Option.isNone(drained)) {
        yield* Effect.logWarning("tcp shutdown: requests still running after the shutdown timeout; interrupting them")
        yield* FiberSet.clear(fibers)
      }
      for (const c of open) c.socket.destroy()
      yield* Effect.logInfo("ledger TCP server stopped").pipe(
        Effect.annotateLogs({
          connections_closed: connections,
          requests_in_flight: inFlight,
          requests_finished: inFlight - interrupted,
          requests_interrupted: interrupted
        })
      )
    })
  )

  return {
    host: address.address,
    port: address.port,
    connections: Effect.sync(() => pending.size + open.size),
    unauthenticated: Effect.sync(() => pending.size),
    unsent: Effect.sync(() => {
      let bytes = 0
      for (const c of open) bytes += c.socket.writableLength
      return bytes
    })
  }
})

export const layer = Layer.scoped(TcpServer, make)
