/**
 * The handlers of the HTTP API (the same Ledger service as the TCP protocol), the bearer-token middleware, and the
 * HTTP server layer with /openapi.json and /docs.
 */
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import * as HttpApiSwagger from "@effect/platform/HttpApiSwagger"
import * as HttpApp from "@effect/platform/HttpApp"
import * as HttpIncomingMessage from "@effect/platform/HttpIncomingMessage"
import * as HttpMiddleware from "@effect/platform/HttpMiddleware"
import * as HttpServer from "@effect/platform/HttpServer"
import * as HttpServerRequest from "@effect/platform/HttpServerRequest"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import { flow } from "effect/Function"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import { Session } from "@sessionfx/session"
import { createServer } from "node:http"
import { Authorization, LedgerApi } from "./Api.js"
import type * as Config from "./Config.js"
import { LedgerConfig, tokenMatches } from "./Config.js"
import { Unauthorized, Unavailable } from "./Domain/Errors.js"
import { bounded, Ledger } from "./Ledger.js"
import * as Metrics from "./Metrics.js"
import { codeOf } from "./Protocol.js"
import { DatabaseSupervisor } from "./Supervisor.js"

export const AuthorizationLive = Layer.effect(
  Authorization,
  Effect.map(LedgerConfig, (config) =>
    Authorization.of({
      bearer: (token) =>
        tokenMatches(config.token, Redacted.value(token))
          ? Effect.void
          : Effect.fail(new Unauthorized({ message: "missing or invalid bearer token" }))
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

/**
 * Bodies over `limit` bytes get 413 and the connection is closed: a declared Content-Length is refused before
 * anything is read, a chunked body as soon as it passes the limit (it is read once, here, and kept for the
 * handler), so no request can make the server buffer more than `limit`.
 */
const bodyLimit = (limit: number) => {
  const tooLarge = HttpServerResponse.unsafeJson(
    { _tag: "PayloadTooLarge", limit, message: `a request body is at most ${limit} bytes` },
    { status: 413, headers: { connection: "close" } }
  )
  return HttpMiddleware.make((app) =>
    Effect.gen(function* () {
      const request = yield* HttpServerRequest.HttpServerRequest
      if (request.method === "GET" || request.method === "HEAD" || request.method === "OPTIONS") return yield* app
      const declared = request.headers["content-length"]
      if (declared !== undefined && !(Number(declared) <= limit)) return tooLarge
      const body = yield* Effect.either(HttpIncomingMessage.withMaxBodySize(request.text, Option.some(limit)))
      if (body._tag === "Left") return tooLarge
      return yield* app
    })
  )
}

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

/** The HTTP server; its output `HttpServer` tells the bound address (port 0 picks a free one). */
export const layer = Layer.unwrapEffect(
  Effect.map(LedgerConfig, (config) => {
    const requestTimeout = Duration.toMillis(Duration.decode(config.httpRequestTimeout))
    const headersTimeout = Math.min(requestTimeout, Duration.toMillis(Duration.decode(config.httpHeadersTimeout)))
    // Node enforces both timeouts (408, connection closed) on a timer checked every second
    const make = () => createServer({ requestTimeout, headersTimeout, connectionsCheckingInterval: 1_000 })
    return HttpApiBuilder.serve(flow(causality, bodyLimit(config.maxBodyBytes), HttpMiddleware.logger)).pipe(
      Layer.provide(HttpApiSwagger.layer({ path: "/docs" })),
      Layer.provide(HttpApiBuilder.middlewareOpenApi({ path: "/openapi.json" })),
      Layer.provide(ApiLive),
      HttpServer.withLogAddress,
      Layer.provideMerge(NodeHttpServer.layer(make, { port: config.httpPort, host: config.host }))
    )
  })
)
