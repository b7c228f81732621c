/**
 * Accounts and transfers: ids are branded integers, money is an integer number of minor units.
 */
import * as Schema from "effect/Schema"

/** The largest amount one operation may move: 10^15 minor units (no floating point, always a safe integer). */
export const MAX_AMOUNT = 1_000_000_000_000_000

export const AccountId = Schema.Int.pipe(
  Schema.positive(),
  Schema.lessThanOrEqualTo(Number.MAX_SAFE_INTEGER),
  Schema.brand("AccountId"),
  Schema.annotations({ identifier: "AccountId", description: "account id (a positive integer)" })
)
export type AccountId = typeof AccountId.Type

export const AccountIdFromString = Schema.compose(Schema.NumberFromString, AccountId)

export const TransferId = Schema.Int.pipe(
  Schema.positive(),
  Schema.lessThanOrEqualTo(Number.MAX_SAFE_INTEGER),
  Schema.brand("TransferId"),
  Schema.annotations({ identifier: "TransferId", description: "transfer id (a positive integer)" })
)
export type TransferId = typeof TransferId.Type

export const Amount = Schema.Int.pipe(
  Schema.positive(),
  Schema.lessThanOrEqualTo(MAX_AMOUNT),
  Schema.annotations({ identifier: "Amount", description: "a positive integer number of minor units (cents)" })
)

export const Balance = Schema.Int.pipe(
  Schema.nonNegative(),
  Schema.annotations({ identifier: "Balance", description: "minor units, never negative" })
)

export const IdempotencyKey = Schema.String.pipe(
  Schema.minLength(1),
  Schema.maxLength(128),
  Schema.annotations({
    identifier: "IdempotencyKey",
    description: "a client-chosen key; a retried request with the same key returns the original result"
  })
)

export const AccountName = Schema.String.pipe(Schema.minLength(1), Schema.maxLength(100))

export const Account = Schema.Struct({
  id: AccountId,
  name: Schema.String,
  balance: Balance
}).annotations({ identifier: "Account" })
export type Account = typeof Account.Type

export const TransferKind = Schema.Literal("deposit", "withdrawal", "transfer")

export const Transfer = Schema.Struct({
  id: TransferId,
  kind: TransferKind,
  from: Schema.NullOr(AccountId),
  to: Schema.NullOr(AccountId),
  amount: Amount,
  idempotencyKey: Schema.NullOr(Schema.String)
}).annotations({ identifier: "Transfer" })
export type Transfer = typeof Transfer.Type

export const HistoryPage = Schema.Struct({
  account: AccountId,
  items: Schema.Array(Transfer),
  next: Schema.NullOr(TransferId).annotations({ description: "pass as `before` to read the next (older) page" })
}).annotations({ identifier: "HistoryPage" })
export type HistoryPage = typeof HistoryPage.Type
