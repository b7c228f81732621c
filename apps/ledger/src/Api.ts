/**
 * The HTTP JSON API, declared apart from its handlers (see Http.ts); its OpenAPI document is served at
 * /openapi.json and a docs page at /docs.
 */
import * as HttpApi from "@effect/platform/HttpApi"
import * as HttpApiEndpoint from "@effect/platform/HttpApiEndpoint"
import * as HttpApiGroup from "@effect/platform/HttpApiGroup"
import * as HttpApiMiddleware from "@effect/platform/HttpApiMiddleware"
import * as HttpApiSchema from "@effect/platform/HttpApiSchema"
import * as HttpApiSecurity from "@effect/platform/HttpApiSecurity"
import * as OpenApi from "@effect/platform/OpenApi"
import * as Schema from "effect/Schema"
import { Account, AccountIdFromString, DecimalFromString, HistoryPage, Transfer, TransferId } from "./Domain/Account.js"
import {
  AccountNotFound,
  AmountTooLarge,
  BalanceOverflow,
  IdempotencyConflict,
  InsufficientFunds,
  InternalError,
  OutcomeUnknown,
  PayloadTooLarge,
  TooManyAuthFailures,
  Unauthorized,
  Unavailable
} from "./Domain/Errors.js"
import { Batch, BatchResult, CreateAccount, HistoryLimit, MoveBody, TransferRequest } from "./Domain/Requests.js"

export class Authorization extends HttpApiMiddleware.Tag<Authorization>()("ledger/Authorization", {
  failure: Schema.Union(Unauthorized, TooManyAuthFailures),
  security: { bearer: HttpApiSecurity.bearer }
}) {}

const AccountPath = Schema.Struct({ id: AccountIdFromString })

export class AccountsApi extends HttpApiGroup.make("accounts")
  .add(HttpApiEndpoint.post("create", "/accounts").setPayload(CreateAccount).addSuccess(Account, { status: 201 }))
  .add(HttpApiEndpoint.get("balance", "/accounts/:id").setPath(AccountPath).addSuccess(Account))
  .add(
    HttpApiEndpoint.get("history", "/accounts/:id/history")
      .setPath(AccountPath)
      .setUrlParams(
        Schema.Struct({
          limit: Schema.optional(Schema.compose(DecimalFromString, HistoryLimit)),
          before: Schema.optional(Schema.compose(DecimalFromString, TransferId))
        })
      )
      .addSuccess(HistoryPage)
  )
  .add(
    HttpApiEndpoint.post("deposit", "/accounts/:id/deposit")
      .setPath(AccountPath)
      .setPayload(MoveBody)
      .addSuccess(Transfer)
  )
  .add(
    HttpApiEndpoint.post("withdraw", "/accounts/:id/withdraw")
      .setPath(AccountPath)
      .setPayload(MoveBody)
      .addSuccess(Transfer)
  )
  .middleware(Authorization)
  .annotate(OpenApi.Description, "Accounts: create, read, deposit, withdraw, history") {}

export class TransfersApi extends HttpApiGroup.make("transfers")
  .add(HttpApiEndpoint.post("transfer", "/transfers").setPayload(TransferRequest).addSuccess(Transfer))
  .add(HttpApiEndpoint.post("batch", "/batch").setPayload(Batch).addSuccess(BatchResult))
  .middleware(Authorization)
  .annotate(OpenApi.Description, "Money movements; `batch` runs several operations in one transaction") {}

export const PoolStats = Schema.Struct({
  size: Schema.Number,
  inUse: Schema.Number,
  idle: Schema.Number,
  waiting: Schema.Number,
  created: Schema.Number,
  destroyed: Schema.Number,
  acquireTimeouts: Schema.Number
})

export const Health = Schema.Struct({
  status: Schema.Literal("ok"),
  database: Schema.Struct({
    reachable: Schema.Boolean,
    serverVersion: Schema.String,
    kind: Schema.Literal("embedded", "external"),
    state: Schema.Literal("running", "restarting"),
    restarts: Schema.Int.annotations({ description: "restarts of the embedded server since the ledger started" }),
    lastRestartAt: Schema.NullOr(Schema.String)
  }),
  pool: PoolStats
}).annotations({ identifier: "Health" })

export class SystemApi extends HttpApiGroup.make("system")
  .add(HttpApiEndpoint.get("health", "/health").addSuccess(Health))
  .add(
    HttpApiEndpoint.get("metrics", "/metrics").addSuccess(
      HttpApiSchema.Text({ contentType: "text/plain; version=0.0.4; charset=utf-8" })
    )
  )
  .annotate(OpenApi.Description, "Health and Prometheus metrics (no authentication)") {}

export class LedgerApi extends HttpApi.make("ledger")
  .add(AccountsApi)
  .add(TransfersApi)
  .add(SystemApi)
  .addError(AccountNotFound)
  .addError(InsufficientFunds)
  .addError(AmountTooLarge)
  .addError(BalanceOverflow)
  .addError(IdempotencyConflict)
  .addError(PayloadTooLarge)
  .addError(Unavailable)
  .addError(OutcomeUnknown)
  .addError(InternalError)
  .annotate(OpenApi.Title, "sessionfx ledger")
  .annotate(
    OpenApi.Description,
    "A ledger over MySQL/MariaDB: one transaction per request. Money is an exact integer number of minor units: " +
      "a JSON number up to 2^53 − 1, a string of decimal digits above (accepted either way). An amount is at most " +
      "10^15 (422 amount_too_large), a balance at most 2^63 − 1 (409 balance_overflow). A request body is at most " +
      "LEDGER_MAX_BODY_BYTES (default 1 MiB; more: 413)."
  ) {}
