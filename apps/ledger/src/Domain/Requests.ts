/**
 * The operations, shared by both transports: each has a payload schema and a result schema.
 */
import * as Schema from "effect/Schema"
import {
  AccountId,
  AccountName,
  Amount,
  IdempotencyKey,
  Account,
  HistoryPage,
  Transfer,
  TransferId
} from "./Account.js"

export const CreateAccount = Schema.Struct({ name: AccountName }).annotations({ identifier: "CreateAccount" })
export type CreateAccount = typeof CreateAccount.Type

export const Deposit = Schema.Struct({
  account: AccountId,
  amount: Amount,
  idempotencyKey: Schema.optional(IdempotencyKey)
}).annotations({ identifier: "Deposit" })
export type Deposit = typeof Deposit.Type

export const Withdraw = Schema.Struct({
  account: AccountId,
  amount: Amount,
  idempotencyKey: Schema.optional(IdempotencyKey)
}).annotations({ identifier: "Withdraw" })
export type Withdraw = typeof Withdraw.Type

export const MoveBody = Schema.Struct({ amount: Amount, idempotencyKey: Schema.optional(IdempotencyKey) })

export const TransferRequest = Schema.Struct({
  from: AccountId,
  to: AccountId,
  amount: Amount,
  idempotencyKey: Schema.optional(IdempotencyKey)
})
  .pipe(Schema.filter((t) => t.from !== t.to || "from and to must be different accounts"))
  .annotations({ identifier: "TransferRequest" })
export type TransferRequest = typeof TransferRequest.Type

export const GetBalance = Schema.Struct({ account: AccountId }).annotations({ identifier: "GetBalance" })
export type GetBalance = typeof GetBalance.Type

export const HistoryLimit = Schema.Int.pipe(Schema.between(1, 100))

export const GetHistory = Schema.Struct({
  account: AccountId,
  limit: Schema.optional(HistoryLimit),
  before: Schema.optional(TransferId)
}).annotations({ identifier: "GetHistory" })
export type GetHistory = typeof GetHistory.Type

const tagged = <Op extends string, S extends Schema.Schema.AnyNoContext>(op: Op, schema: S) =>
  Schema.extend(Schema.Struct({ op: Schema.Literal(op) }), schema)

export const BatchOperation = Schema.Union(
  tagged("create_account", CreateAccount),
  tagged("deposit", Deposit),
  tagged("withdraw", Withdraw),
  tagged("transfer", TransferRequest),
  tagged("balance", GetBalance)
).annotations({ identifier: "BatchOperation" })
export type BatchOperation = typeof BatchOperation.Type

export const MAX_BATCH = 100

export const Batch = Schema.Struct({
  ops: Schema.Array(BatchOperation).pipe(Schema.minItems(1), Schema.maxItems(MAX_BATCH))
}).annotations({ identifier: "Batch" })
export type Batch = typeof Batch.Type

export const BatchResult = Schema.Struct({
  results: Schema.Array(Schema.Union(Account, Transfer))
}).annotations({ identifier: "BatchResult" })
export type BatchResult = typeof BatchResult.Type

export { Account, HistoryPage, Transfer }
