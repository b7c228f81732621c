/**
 * Errors that cross the wire: each carries its HTTP status (for HttpApi) and a protocol error `code` (for both
 * transports). Messages are written for clients: they never contain SQL, stack traces or secrets.
 */
import * as HttpApiSchema from "@effect/platform/HttpApiSchema"
import * as Schema from "effect/Schema"
import { AccountId, MAX_AMOUNT, MAX_BALANCE, Money } from "./Account.js"

/**
 * Builds an expected, typed outcome without capturing a stack trace (nobody reads it: the client gets the code and
 * the message) and without re-validating fields the ledger has just computed.
 */
const noStack = <A>(make: () => A): A => {
  const limit = Error.stackTraceLimit
  Error.stackTraceLimit = 0
  try {
    return make()
  } finally {
    Error.stackTraceLimit = limit
  }
}

export class AccountNotFound extends Schema.TaggedError<AccountNotFound>()(
  "AccountNotFound",
  { account: AccountId, message: Schema.String },
  HttpApiSchema.annotations({ status: 404 })
) {}

export const accountNotFound = (account: AccountId) =>
  noStack(() => new AccountNotFound({ account, message: `account ${account} does not exist` }, true))

export class InsufficientFunds extends Schema.TaggedError<InsufficientFunds>()(
  "InsufficientFunds",
  { account: AccountId, balance: Money, amount: Money, message: Schema.String },
  HttpApiSchema.annotations({ status: 409 })
) {}

export const insufficientFunds = (account: AccountId, balance: bigint, amount: bigint) =>
  noStack(
    () =>
      new InsufficientFunds(
        { account, balance, amount, message: `account ${account} has ${balance}, cannot take ${amount}` },
        true
      )
  )

/** An amount above `MAX_AMOUNT` (10^15 minor units). */
export class AmountTooLarge extends Schema.TaggedError<AmountTooLarge>()(
  "AmountTooLarge",
  { amount: Money, limit: Money, message: Schema.String },
  HttpApiSchema.annotations({ status: 422 })
) {}

export const amountTooLarge = (amount: bigint) =>
  noStack(
    () =>
      new AmountTooLarge(
        { amount, limit: MAX_AMOUNT, message: `an amount is at most ${MAX_AMOUNT} minor units; split it` },
        true
      )
  )

/** The destination would hold more than `MAX_BALANCE` (2^63 − 1): refused, nothing moved. */
export class BalanceOverflow extends Schema.TaggedError<BalanceOverflow>()(
  "BalanceOverflow",
  { account: AccountId, balance: Money, amount: Money, limit: Money, message: Schema.String },
  HttpApiSchema.annotations({ status: 409 })
) {}

export const balanceOverflow = (account: AccountId, balance: bigint, amount: bigint) =>
  noStack(
    () =>
      new BalanceOverflow(
        {
          account,
          balance,
          amount,
          limit: MAX_BALANCE,
          message: `account ${account} has ${balance}; adding ${amount} would exceed the largest balance, ${MAX_BALANCE}`
        },
        true
      )
  )

export class IdempotencyConflict extends Schema.TaggedError<IdempotencyConflict>()(
  "IdempotencyConflict",
  { idempotencyKey: Schema.String, message: Schema.String },
  HttpApiSchema.annotations({ status: 422 })
) {}

export const idempotencyConflict = (idempotencyKey: string) =>
  noStack(
    () =>
      new IdempotencyConflict(
        { idempotencyKey, message: "this idempotency key was already used for a different request" },
        true
      )
  )

export class InvalidRequest extends Schema.TaggedError<InvalidRequest>()(
  "InvalidRequest",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 400 })
) {}

export class UnknownOperation extends Schema.TaggedError<UnknownOperation>()(
  "UnknownOperation",
  { op: Schema.Unknown, message: Schema.String },
  HttpApiSchema.annotations({ status: 400 })
) {}

export class Unauthorized extends Schema.TaggedError<Unauthorized>()(
  "Unauthorized",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 401 })
) {}

/** A peer that failed to authenticate too often must wait before it may try again. */
export class TooManyAuthFailures extends Schema.TaggedError<TooManyAuthFailures>()(
  "TooManyAuthFailures",
  { retryAfterMs: Schema.Int, message: Schema.String },
  HttpApiSchema.annotations({ status: 429 })
) {}

/** An HTTP request body that is not JSON (`Content-Type`). */
export class UnsupportedMediaType extends Schema.TaggedError<UnsupportedMediaType>()(
  "UnsupportedMediaType",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 415 })
) {}

export class LineTooLong extends Schema.TaggedError<LineTooLong>()(
  "LineTooLong",
  { limit: Schema.Int, message: Schema.String },
  HttpApiSchema.annotations({ status: 413 })
) {}

export class IdleTimeout extends Schema.TaggedError<IdleTimeout>()(
  "IdleTimeout",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 408 })
) {}

export class TooManyConnections extends Schema.TaggedError<TooManyConnections>()(
  "TooManyConnections",
  { limit: Schema.Int, message: Schema.String },
  HttpApiSchema.annotations({ status: 503 })
) {}

/** An HTTP request body over `LEDGER_MAX_BODY_BYTES`. */
export class PayloadTooLarge extends Schema.TaggedError<PayloadTooLarge>()(
  "PayloadTooLarge",
  { limit: Schema.Int, message: Schema.String },
  HttpApiSchema.annotations({ status: 413 })
) {}

export class ShuttingDown extends Schema.TaggedError<ShuttingDown>()(
  "ShuttingDown",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 503 })
) {}

/** The database is busy or unreachable (pool timeout, connection lost, retries exhausted): try again later. */
export class Unavailable extends Schema.TaggedError<Unavailable>()(
  "Unavailable",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 503 })
) {}

/** The connection was lost during COMMIT: retry with the same idempotency key to learn the outcome. */
export class OutcomeUnknown extends Schema.TaggedError<OutcomeUnknown>()(
  "OutcomeUnknown",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 503 })
) {}

export class InternalError extends Schema.TaggedError<InternalError>()(
  "InternalError",
  { message: Schema.String },
  HttpApiSchema.annotations({ status: 500 })
) {}

/** Errors a ledger operation can end with. */
export type LedgerError =
  | AccountNotFound
  | InsufficientFunds
  | AmountTooLarge
  | BalanceOverflow
  | IdempotencyConflict
  | Unavailable
  | OutcomeUnknown
  | InternalError

export const LedgerError = Schema.Union(
  AccountNotFound,
  InsufficientFunds,
  AmountTooLarge,
  BalanceOverflow,
  IdempotencyConflict,
  Unavailable,
  OutcomeUnknown,
  InternalError
)

/** Every error a client can see, on either transport. */
export const ProtocolError = Schema.Union(
  AccountNotFound,
  InsufficientFunds,
  AmountTooLarge,
  BalanceOverflow,
  IdempotencyConflict,
  InvalidRequest,
  UnknownOperation,
  Unauthorized,
  TooManyAuthFailures,
  UnsupportedMediaType,
  LineTooLong,
  PayloadTooLarge,
  IdleTimeout,
  TooManyConnections,
  ShuttingDown,
  Unavailable,
  OutcomeUnknown,
  InternalError
)
export type ProtocolError = typeof ProtocolError.Type

/** The protocol error code and HTTP status of each error. */
export const errorInfo: Record<ProtocolError["_tag"], { readonly code: string; readonly status: number }> = {
  AccountNotFound: { code: "account_not_found", status: 404 },
  InsufficientFunds: { code: "insufficient_funds", status: 409 },
  AmountTooLarge: { code: "amount_too_large", status: 422 },
  BalanceOverflow: { code: "balance_overflow", status: 409 },
  IdempotencyConflict: { code: "idempotency_conflict", status: 422 },
  InvalidRequest: { code: "invalid_request", status: 400 },
  UnknownOperation: { code: "unknown_operation", status: 400 },
  Unauthorized: { code: "unauthorized", status: 401 },
  TooManyAuthFailures: { code: "too_many_auth_failures", status: 429 },
  UnsupportedMediaType: { code: "unsupported_media_type", status: 415 },
  LineTooLong: { code: "line_too_long", status: 413 },
  PayloadTooLarge: { code: "payload_too_large", status: 413 },
  IdleTimeout: { code: "idle_timeout", status: 408 },
  TooManyConnections: { code: "too_many_connections", status: 503 },
  ShuttingDown: { code: "shutting_down", status: 503 },
  Unavailable: { code: "unavailable", status: 503 },
  OutcomeUnknown: { code: "outcome_unknown", status: 503 },
  InternalError: { code: "internal", status: 500 }
}
