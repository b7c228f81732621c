/**
 * The handlers of the HTTP API (the same Ledger service as the TCP protocol), the bearer-token middleware, and the
 * HTTP server layer with /openapi.json and /docs.
 */
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import * as HttpApiSwagger from "@effect/platform/HttpApiSwagger"
import * as HttpApp from "@effect/platform/HttpApp"
import * as HttpMiddleware from "@effect/platform/HttpMiddleware"
import * as HttpServer from "@effect/platform/HttpServer"
import * as HttpServerError from "@effect/platform/HttpServerError"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as NodeHttpServerRequest from "@effect/platform-node/NodeHttpServerRequest"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import { flow } from "effect/Function"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import { Session } from "@sessionfx/session"
import { createServer, STATUS_CODES } from "node:http"
import type { Duplex } from "node:stream"
import { Authorization, LedgerApi } from "./Api.js"
import { AuthGuard } from "./AuthGuard.js"
import type * as Config from "./Config.js"
import { LedgerConfig, tokenMatches } from "./Config.js"
import { TooManyAuthFailures, Unauthorized, Unavailable } from "./Domain/Errors.js"
import * as Input from "./Input.js"
import { bounded, Ledger } from "./Ledger.js"
import * as Metrics from "./Metrics.js"
import { codeOf } from "./Protocol.js"
import { DatabaseSupervisor } from "./Supervisor.js"

/** The bearer token, checked in constant time, within the peer's budget of failed attempts (`AuthGuard`). */
export const AuthorizationLive = Layer.effect(
  Authorization,
  Effect.map(Effect.all([LedgerConfig, AuthGuard]), ([config, guard]) =>
    Authorization.of({
      bearer: (token) =>
        Effect.flatMap(
          Effect.serviceOption(HttpServerRequest.HttpServerRequest),
          (request): Effect.Effect<void, Unauthorized | TooManyAuthFailures> => {
            const peer = Option.getOrElse(
              Option.flatMap(request, (r) => r.remoteAddress),
              () => "unknown"
            )
            const wait = guard.waitFor(peer)
            if (wait > 0) {
              return Effect.fail(
                new TooManyAuthFailures({
                  retryAfterMs: wait,
                  message: `too many failed authentications from this address: try again in ${Math.ceil(wait / 1000)} s`
                })
              )
            }
            if (tokenMatches(config.token, Redacted.value(token))) {
              guard.succeeded(peer)
              return Effect.void
            }
            guard.failed(peer)
            return Effect.fail(new Unauthorized({ message: "missing or invalid bearer token" }))
          }
        )
    })
  )
)

/** Each HTTP request: bounded by the request timeout, then timed and counted under `op`. */
const trackedWith = (config: Config.Settings) => {
  const bound = bounded(config.requestTimeout)
  return (op: string) =>
    <A, E, R>(effect: Effect.Effect<A, E, R>) =>
      Effect.tap(Metrics.track(op, "http", codeOf)(bound(effect)), () => sendToken)
}

const AccountsLive = HttpApiBuilder.group(LedgerApi, "accounts", (handlers) =>
  Effect.map(Effect.all([Ledger, LedgerConfig]), ([ledger, config]) => {
    const tracked = trackedWith(config)
    return handlers
      .handle("create", ({ payload }) => ledger.createAccount(payload).pipe(tracked("create_account")))
      .handle("balance", ({ path }) => ledger.balance({ account: path.id }).pipe(tracked("balance")))
      .handle("history", ({ path, urlParams }) =>
        ledger
          .history({
            account: path.id,
            ...(urlParams.limit !== undefined ? { limit: urlParams.limit } : {}),
            ...(urlParams.before !== undefined ? { before: urlParams.before } : {})
          })
          .pipe(tracked("history"))
      )
      .handle("deposit", ({ path, payload }) =>
        ledger.deposit({ account: path.id, ...payload }).pipe(tracked("deposit"))
      )
      .handle("withdraw", ({ path, payload }) =>
        ledger.withdraw({ account: path.id, ...payload }).pipe(tracked("withdraw"))
      )
  })
)

const TransfersLive = HttpApiBuilder.group(LedgerApi, "transfers", (handlers) =>
  Effect.map(Effect.all([Ledger, LedgerConfig]), ([ledger, config]) => {
    const tracked = trackedWith(config)
    return handlers
      .handle("transfer", ({ payload }) => ledger.transfer(payload).pipe(tracked("transfer")))
      .handle("batch", ({ payload }) => ledger.batch(payload).pipe(tracked("batch")))
  })
)

const SystemLive = HttpApiBuilder.group(LedgerApi, "system", (handlers) =>
  Effect.gen(function* () {
    const ledger = yield* Ledger
    const supervisor = yield* DatabaseSupervisor
    return handlers
      .handle("health", () =>
        Effect.gen(function* () {
          const reachable = yield* ledger.ping
          const status = yield* supervisor.status
          if (!reachable) {
            return yield* new Unavailable({
              message:
                status.state === "restarting"
                  ? `the database does not answer: the embedded server died and is being restarted (restarts so far: ${status.restarts})`
                  : "the database does not answer"
            })
          }
          const pool = yield* ledger.stats
          return {
            status: "ok" as const,
            database: { reachable, serverVersion: ledger.serverVersion, ...status },
            pool
          }
        })
      )
      .handle("metrics", () => Metrics.prometheus)
  })
)

/** A JSON error answer, shaped like the API's own (`_tag`, `message`, details). */
const errorJson = (status: number, tag: string, message: string, detail: Record<string, unknown> = {}) =>
  HttpServerResponse.unsafeJson({ _tag: tag, message, ...detail }, { status })

/** What reading a body yields: its bytes, or how many there were when more than the limit. */
type Body = { readonly _tag: "Read"; readonly bytes: Buffer } | { readonly _tag: "TooLarge" }

/**
 * Reads a request body of at most `limit` bytes. Past the limit nothing more is kept, but the rest is read and
 * discarded (up to `discardLimit`, and within Node's request timeout), so that the client, still sending, can be
 * answered 413 instead of being reset; past `discardLimit` the connection is destroyed.
 */
const readBody = (request: HttpServerRequest.HttpServerRequest, limit: number, discardLimit: number) =>
  Effect.async<Body>((resume) => {
    const source = NodeHttpServerRequest.toIncomingMessage(request)
    const parts: Array<Buffer> = []
    let length = 0
    const onData = (chunk: Buffer) => {
      length += chunk.length
      if (length <= limit) parts.push(chunk)
      else if (parts.length > 0) parts.length = 0
      if (length > discardLimit) source.destroy()
    }
    const onEnd = () =>
      resume(Effect.succeed(length > limit ? { _tag: "TooLarge" } : { _tag: "Read", bytes: Buffer.concat(parts) }))
    const onError = () => resume(Effect.interrupt)
    source.on("data", onData)
    source.once("end", onEnd)
    source.once("error", onError)
    return Effect.sync(() => {
      source.off("data", onData)
      source.off("end", onEnd)
      source.off("error", onError)
    })
  })

/** The `charset` parameter of a Content-Type, lower-cased and unquoted; undefined when there is none. */
const charsetOf = (parameters: ReadonlyArray<string>): string | undefined => {
  for (const parameter of parameters) {
    const eq = parameter.indexOf("=")
    if (eq !== -1 && parameter.slice(0, eq).trim().toLowerCase() === "charset") {
      return parameter
        .slice(eq + 1)
        .trim()
        .replace(/^"(.*)"$/, "$1")
        .toLowerCase()
    }
  }
  return undefined
}

/**
 * Every request body is checked before the API sees it: JSON only (`Content-Type: application/json`, else 415) in
 * UTF-8 (a `charset` other than utf-8 is 415 too: the bytes are never read in another encoding), at
 * most `limit` bytes (else 413, for a declared length before anything is read, for a chunked body once it has been
 * read), valid UTF-8 (never decoded lossily), well-formed JSON nested at most `Input.MAX_DEPTH` levels (else 400).
 * The API then decodes the JSON already parsed here.
 */
const requestBody = (limit: number) => {
  const tooLarge = errorJson(413, "PayloadTooLarge", `a request body is at most ${limit} bytes`, { limit })
  return HttpMiddleware.make((app) =>
    Effect.gen(function* () {
      const request = yield* HttpServerRequest.HttpServerRequest
      const method = request.method
      if (method === "GET" || method === "HEAD" || method === "OPTIONS") return yield* app
      const headers = request.headers
      const declared = headers["content-length"]
      const hasBody = headers["transfer-encoding"] !== undefined || (declared !== undefined && declared !== "0")
      const [type = "", ...parameters] = (headers["content-type"] ?? "").split(";")
      const mediaType = type.trim().toLowerCase()
      if (hasBody && mediaType !== "application/json") {
        return errorJson(
          415,
          "UnsupportedMediaType",
          mediaType === ""
            ? "a request body must be JSON: send Content-Type: application/json"
            : `a request body must be JSON (Content-Type: application/json), not ${mediaType.slice(0, 100)}`
        )
      }
      const charset = charsetOf(parameters)
      if (hasBody && charset !== undefined && charset !== "utf-8") {
        return errorJson(
          415,
          "UnsupportedMediaType",
          `a request body must be UTF-8 (charset=utf-8 or none), not charset=${charset.slice(0, 40)}`
        )
      }
      if (declared !== undefined && !(Number(declared) <= limit)) {
        return HttpServerResponse.setHeader(tooLarge, "connection", "close")
      }
      const body = hasBody
        ? yield* readBody(request, limit, 16 * limit)
        : ({ _tag: "Read", bytes: Buffer.alloc(0) } as const)
      if (body._tag === "TooLarge") return HttpServerResponse.setHeader(tooLarge, "connection", "close")
      if (!Input.isValidUtf8(body.bytes)) {
        return errorJson(400, "InvalidRequest", "the request body is not valid UTF-8 text")
      }
      const text = body.bytes.toString("utf8")
      let json: unknown = null
      if (text.trim() !== "") {
        try {
          json = JSON.parse(text)
        } catch {
          return errorJson(400, "InvalidRequest", "malformed JSON in the request body")
        }
      }
      if (Input.tooDeep(json)) {
        return errorJson(
          400,
          "InvalidRequest",
          `a request body nests at most ${Input.MAX_DEPTH} levels of arrays and objects`
        )
      }
      // the same request, its body already read: the API decodes this JSON instead of reading the socket again
      const read = Object.create(request, {
        text: { value: Effect.succeed(text) },
        json: { value: Effect.succeed(json) }
      }) as HttpServerRequest.HttpServerRequest
      return yield* Effect.provideService(app, HttpServerRequest.HttpServerRequest, read)
    })
  )
}

/** The path of a url, without its query string (which may hold anything, credentials included). */
const pathOf = (url: string) => {
  const q = url.indexOf("?")
  return (q === -1 ? url : url.slice(0, q)).slice(0, 200)
}

const emptyAnswers: Record<number, readonly [string, string]> = {
  400: ["InvalidRequest", "the request is malformed"],
  404: ["NotFound", "no such route"],
  405: ["MethodNotAllowed", "this method is not allowed on this route"],
  408: ["RequestTimeout", "the request was not received in time"],
  500: ["InternalError", "internal error"],
  503: ["Unavailable", "the server is shutting down or busy; try again later"]
}

/**
 * A JSON body for every error answer: an answer without a body gets one by its status, and the API's decode errors
 * are cut down to the first `Input.MAX_PROBLEMS` problems and their count.
 */
const withBody = (response: HttpServerResponse.HttpServerResponse): HttpServerResponse.HttpServerResponse => {
  if (response.status < 400) return response
  if (response.body._tag === "Empty") {
    const [tag, message] = emptyAnswers[response.status] ?? ["HttpError", `HTTP ${response.status}`]
    return errorJson(response.status, tag, message)
  }
  const body = response.body
  if (response.status === 400 && body._tag === "Uint8Array") {
    const decoded = Option.liftThrowable(() => JSON.parse(Buffer.from(body.body).toString()))()
    if (Option.isSome(decoded) && decoded.value?._tag === "HttpApiDecodeError") {
      const issues: Array<{ path?: Array<unknown>; message?: unknown }> = Array.isArray(decoded.value.issues)
        ? decoded.value.issues
        : []
      const problems = issues.slice(0, Input.MAX_PROBLEMS).map((i) => ({
        path: (Array.isArray(i.path) ? i.path.join(".") : "").slice(0, 80),
        message: String(i.message ?? "").slice(0, 200)
      }))
      const first = problems[0]
      return errorJson(
        400,
        "HttpApiDecodeError",
        first === undefined
          ? "invalid request"
          : `invalid request: ${first.path === "" ? "" : `at ${first.path}: `}${first.message}`,
        { issues: problems, count: issues.length }
      )
    }
  }
  return response
}

/**
 * The outermost layer of every request: whatever happened, the client gets a status and a JSON body; a defect is
 * logged at ERROR (with its cause), other answers at INFO as an access log line that names the path only, never
 * the query string or any header.
 */
export const answered = <E, R>(app: HttpApp.Default<E, R>): HttpApp.Default<never, R> =>
  Effect.withFiberRuntime((fiber) => {
    const request = Context.unsafeGet(fiber.currentContext, HttpServerRequest.HttpServerRequest)
    const started = performance.now()
    // the response is sent inside the app (`HttpApp.toHandled`): it is replaced by a pre-response handler
    const run = Effect.zipRight(
      HttpApp.appendPreResponseHandler((_, response) => Effect.succeed(withBody(response))),
      Effect.exit(app)
    )
    return Effect.flatMap(run, (exit): Effect.Effect<HttpServerResponse.HttpServerResponse> => {
      if (exit._tag === "Failure" && Cause.isInterruptedOnly(exit.cause)) {
        return Effect.failCause(exit.cause as Cause.Cause<never>)
      }
      const [raw, cause]: readonly [HttpServerResponse.HttpServerResponse, Option.Option<Cause.Cause<unknown>>] =
        exit._tag === "Success" ? [exit.value, Option.none()] : HttpServerError.causeResponseStripped(exit.cause)
      const response = withBody(raw)
      const annotations = {
        "http.method": request.method,
        "http.path": pathOf(request.url),
        "http.status": response.status,
        "http.ms": Math.round((performance.now() - started) * 10) / 10
      }
      const defect = Option.filter(cause, (c) => Cause.isDie(c) || (response.status >= 500 && !Cause.isEmpty(c)))
      const log = Option.isSome(defect)
        ? Effect.logError("http request failed with a defect", defect.value)
        : Effect.logInfo("http request")
      return Effect.as(Effect.annotateLogs(log, annotations), response)
    })
  })

/** The header that carries a client's causality token (read-your-writes with replicas; see docs/ledger.md). */
export const CAUSALITY_HEADER = "x-causality-token"

/**
 * Read-your-writes over HTTP, where every request is a fiber of its own: a response carries the causality token of
 * the commits the request made (or was handed), and a request that sends it back (`X-Causality-Token`) reads from a
 * replica only once that replica has applied them. Without replicas no token exists and no header is sent.
 */
const causality = HttpMiddleware.make((app) =>
  Effect.gen(function* () {
    const request = yield* HttpServerRequest.HttpServerRequest
    const presented = request.headers[CAUSALITY_HEADER]
    if (presented !== undefined && presented !== "") {
      const token = Schema.decodeUnknownOption(Session.CausalityToken)(presented)
      if (Option.isNone(token)) {
        return HttpServerResponse.unsafeJson(
          {
            _tag: "InvalidRequest",
            message: `the ${CAUSALITY_HEADER} header is not a causality token: send back the value of the header of an earlier response, or no header`
          },
          { status: 400 }
        )
      }
      yield* Session.useCausalityToken(token.value)
    }
    return yield* app
  })
)

/** After a handler: its causality token (if the engine has one) goes out as the response's header. */
const sendToken = Effect.flatMap(Session.causalityToken, (token) =>
  Option.isNone(token)
    ? Effect.void
    : HttpApp.appendPreResponseHandler((_, response) =>
        Effect.succeed(HttpServerResponse.setHeader(response, CAUSALITY_HEADER, token.value))
      )
)

export const ApiLive = HttpApiBuilder.api(LedgerApi).pipe(
  Layer.provide([AccountsLive, TransfersLive, SystemLive]),
  Layer.provide(AuthorizationLive)
)

/** What Node's HTTP parser refuses before a request exists: the status Node would send, and a JSON body for it. */
const clientErrors: Record<string, readonly [number, string, string]> = {
  HPE_HEADER_OVERFLOW: [431, "HeadersTooLarge", "the request line and headers are too large"],
  HPE_CHUNK_EXTENSIONS_OVERFLOW: [413, "PayloadTooLarge", "the chunk extensions are too large"],
  ERR_HTTP_REQUEST_TIMEOUT: [408, "RequestTimeout", "the request was not received in time"]
}

/**
 * Node's own answer to a request it cannot parse or that came too slowly (400, 408, 413, 431), with a JSON body like
 * every other error answer — sent only when no answer has begun on the connection, which is then closed.
 */
const answerClientError = (error: Error & { readonly code?: string }, socket: Duplex) => {
  const message = (socket as Duplex & { _httpMessage?: { headersSent?: boolean } })._httpMessage
  if (socket.writable && message?.headersSent !== true && error.code !== "ECONNRESET") {
    const [status, tag, text] = clientErrors[error.code ?? ""] ?? [400, "InvalidRequest", "the request is malformed"]
    const body = JSON.stringify({ _tag: tag, message: text })
    socket.write(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`
    )
  }
  socket.destroy()
}

/** The HTTP server; its output `HttpServer` tells the bound address (port 0 picks a free one). */
export const layer = Layer.unwrapEffect(
  Effect.map(LedgerConfig, (config) => {
    const requestTimeout = Duration.toMillis(Duration.decode(config.httpRequestTimeout))
    const headersTimeout = Math.min(requestTimeout, Duration.toMillis(Duration.decode(config.httpHeadersTimeout)))
    // Node enforces both timeouts (408, connection closed) on a timer checked every second
    const keepAliveTimeout = Duration.toMillis(Duration.decode(config.httpIdleTimeout))
    const inactivityTimeout = Math.max(
      Duration.toMillis(Duration.decode(config.writeTimeout)),
      Duration.toMillis(Duration.decode(config.requestTimeout)) + 1_000
    )
    const make = () => {
      const server = createServer({
        requestTimeout,
        headersTimeout,
        keepAliveTimeout,
        connectionsCheckingInterval: 1_000
      })
      // connections past the cap are closed as soon as they are accepted
      server.maxConnections = config.httpMaxConnections
      // Node ends a half-closed connection at once, dropping the requests it has read and not answered
      // (`httpAllowHalfOpen`, false by default): every request read is answered first, then the connection is closed
      Object.assign(server, { httpAllowHalfOpen: true })
      // a connection with no traffic either way for this long is destroyed: a client that stops reading its answers
      // (Node stops reading its requests meanwhile) is not held open for ever; a handler is bounded by the request
      // timeout, so a request still being handled is never cut by this
      server.timeout = inactivityTimeout
      server.on("clientError", answerClientError)
      return server
    }
    return HttpApiBuilder.serve(flow(causality, requestBody(config.maxBodyBytes), answered)).pipe(
      Layer.provide(HttpApiSwagger.layer({ path: "/docs" })),
      Layer.provide(HttpApiBuilder.middlewareOpenApi({ path: "/openapi.json" })),
      Layer.provide(ApiLive),
      HttpServer.withLogAddress,
      Layer.provideMerge(NodeHttpServer.layer(make, { port: config.httpPort, host: config.host }))
    )
  })
)
