/**
 * Accounts and transfers: ids are branded integers, money is an exact integer number of minor units (`bigint` in
 * the domain, BIGINT in SQL, bound as a bigint: never a double anywhere).
 */
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"

/** The largest amount one operation may move: 10^15 minor units; more is `amount_too_large`. */
export const MAX_AMOUNT = 1_000_000_000_000_000n

/** The largest balance an account may hold: BIGINT's ceiling, 2^63 − 1; more is `balance_overflow`. */
export const MAX_BALANCE = 9_223_372_036_854_775_807n

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER)

/** Money on the wire: a JSON integer up to 2^53 − 1, a string of decimal digits above (exact for every client). */
export const toWire = (n: bigint): number | string => (n <= MAX_SAFE && n >= -MAX_SAFE ? Number(n) : n.toString())

const WireMoney = Schema.Union(
  Schema.Int.pipe(Schema.between(-Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER)),
  Schema.String.pipe(Schema.pattern(/^-?[0-9]{1,30}$/))
).annotations({
  description: "an integer: a JSON number up to 2^53 − 1, else a string of decimal digits (exact either way)"
})

/** An integer amount of minor units as a `bigint`; accepts a safe JSON integer or a decimal string. */
export const Money = Schema.transformOrFail(WireMoney, Schema.BigIntFromSelf, {
  strict: true,
  decode: (wire) => ParseResult.succeed(BigInt(wire)),
  encode: (n) => ParseResult.succeed(toWire(n))
})

export const AccountId = Schema.Int.pipe(
  Schema.positive(),
  Schema.lessThanOrEqualTo(Number.MAX_SAFE_INTEGER),
  Schema.brand("AccountId"),
  Schema.annotations({ identifier: "AccountId", description: "account id (a positive integer)" })
)
export type AccountId = typeof AccountId.Type

/**
 * A positive integer written in plain decimal (`1`, `42`; not `0x1`, `1e0`, `+1`, ` 1` or `01`), as a number: ids and
 * counts in URLs, where `Schema.NumberFromString` would accept every form JavaScript's `Number` does.
 */
export const DecimalFromString = Schema.compose(
  Schema.String.pipe(
    Schema.pattern(/^[1-9][0-9]{0,15}$/, { message: () => "must be a positive integer in plain decimal digits" })
  ),
  Schema.NumberFromString
)

export const AccountIdFromString = Schema.compose(DecimalFromString, AccountId)

export const TransferId = Schema.Int.pipe(
  Schema.positive(),
  Schema.lessThanOrEqualTo(Number.MAX_SAFE_INTEGER),
  Schema.brand("TransferId"),
  Schema.annotations({ identifier: "TransferId", description: "transfer id (a positive integer)" })
)
export type TransferId = typeof TransferId.Type

/**
 * A positive amount. Its ceiling (`MAX_AMOUNT`) is checked by the ledger, so that exceeding it is the typed
 * `amount_too_large`, not a malformed request.
 */
export const Amount = Money.pipe(
  Schema.filter((n) => n > 0n || "must be positive"),
  Schema.annotations({
    identifier: "Amount",
    description:
      "a positive integer number of minor units, at most 10^15 (1000000000000000; more: 422 amount_too_large); " +
      "a JSON number up to 2^53 − 1 or a string of decimal digits"
  })
)

export const Balance = Money.pipe(
  Schema.filter((n) => n >= 0n || "must not be negative"),
  Schema.annotations({
    identifier: "Balance",
    description:
      "minor units, 0 ≤ balance ≤ 2^63 − 1 (9223372036854775807; more: 409 balance_overflow); " +
      "a JSON number up to 2^53 − 1, a string of decimal digits above"
  })
)

/** Text with no unpaired UTF-16 surrogate: it has an exact UTF-8 form, so it is stored and compared as sent. */
export const WellFormedText = Schema.String.pipe(
  Schema.filter((s) => !/\p{Cs}/u.test(s) || "must be valid Unicode text (it holds an unpaired UTF-16 surrogate)")
)

export const IdempotencyKey = WellFormedText.pipe(
  Schema.minLength(1),
  Schema.maxLength(128),
  Schema.annotations({
    identifier: "IdempotencyKey",
    description:
      "a client-chosen key (1–128 characters), compared byte for byte (case, spaces, accents and Unicode " +
      "normalisation forms all count); a retried request with the same key returns the original result"
  })
)

export const AccountName = WellFormedText.pipe(Schema.minLength(1), Schema.maxLength(100))

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
