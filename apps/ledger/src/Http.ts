/**
 * The handlers of the HTTP API (the same Ledger service as the TCP protocol), the bearer-token middleware, and the
 * HTTP server layer with /openapi.json and /docs.
 */
import * as HttpApiBuilder from "@effect/platform/HttpApiBuilder"
import * as HttpApiSwagger from "@effect/platform/HttpApiSwagger"
import * as HttpMiddleware from "@effect/platform/HttpMiddleware"
import * as HttpServer from "@effect/platform/HttpServer"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import { createServer } from "node:http"
import { Authorization, LedgerApi } from "./Api.js"
import { LedgerConfig, tokenMatches } from "./Config.js"
import { Unauthorized, Unavailable } from "./Domain/Errors.js"
import { Ledger } from "./Ledger.js"
import * as Metrics from "./Metrics.js"
import { codeOf } from "./Protocol.js"

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

const tracked = (op: string) => Metrics.track(op, "http", codeOf)

const AccountsLive = HttpApiBuilder.group(LedgerApi, "accounts", (handlers) =>
  Effect.map(Ledger, (ledger) =>
    handlers
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
  )
)

const TransfersLive = HttpApiBuilder.group(LedgerApi, "transfers", (handlers) =>
  Effect.map(Ledger, (ledger) =>
    handlers
      .handle("transfer", ({ payload }) => ledger.transfer(payload).pipe(tracked("transfer")))
      .handle("batch", ({ payload }) => ledger.batch(payload).pipe(tracked("batch")))
  )
)

const SystemLive = HttpApiBuilder.group(LedgerApi, "system", (handlers) =>
  Effect.map(Ledger, (ledger) =>
    handlers
      .handle("health", () =>
        Effect.gen(function* () {
          const reachable = yield* ledger.ping
          if (!reachable) return yield* new Unavailable({ message: "the database does not answer" })
          const pool = yield* ledger.stats
          return {
            status: "ok" as const,
            database: { reachable, serverVersion: ledger.serverVersion },
            pool
          }
        })
      )
      .handle("metrics", () => Metrics.prometheus)
  )
)

export const ApiLive = HttpApiBuilder.api(LedgerApi).pipe(
  Layer.provide([AccountsLive, TransfersLive, SystemLive]),
  Layer.provide(AuthorizationLive)
)

/** The HTTP server; its output `HttpServer` tells the bound address (port 0 picks a free one). */
export const layer = Layer.unwrapEffect(
  Effect.map(LedgerConfig, (config) =>
    HttpApiBuilder.serve(HttpMiddleware.logger).pipe(
      Layer.provide(HttpApiSwagger.layer({ path: "/docs" })),
      Layer.provide(HttpApiBuilder.middlewareOpenApi({ path: "/openapi.json" })),
      Layer.provide(ApiLive),
      HttpServer.withLogAddress,
      Layer.provideMerge(NodeHttpServer.layer(createServer, { port: config.httpPort, host: config.host }))
    )
  )
)
