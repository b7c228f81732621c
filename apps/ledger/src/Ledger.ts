/**
 * The ledger's handlers: each public operation is one unit of work (`Session.transact`, retried on deadlocks and
 * lock wait timeouts); `batch` runs several operations in one unit, all or nothing.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import { Engine, Session, SessionError } from "@sessionfx/session"
import * as Effect from "effect/Effect"
import { LedgerConfig } from "./Config.js"
import type { Account, AccountId, HistoryPage, Transfer, TransferId } from "./Domain/Account.js"
import {
  AccountNotFound,
  accountNotFound,
  IdempotencyConflict,
  idempotencyConflict,
  InsufficientFunds,
  insufficientFunds,
  InternalError,
  OutcomeUnknown,
  Unavailable,
  type LedgerError
} from "./Domain/Errors.js"
import type {
  Batch,
  BatchOperation,
  BatchResult,
  CreateAccount,
  Deposit,
  GetBalance,
  GetHistory,
  TransferRequest,
  Withdraw
} from "./Domain/Requests.js"

interface AccountRow {
  readonly id: number | string
  readonly name: string
  readonly balance: number | string
}

interface TransferRow {
  readonly id: number | string
  readonly src: number | string | null
  readonly dst: number | string | null
  readonly amount: number | string
  readonly idempotency_key: string | null
}

type DomainError = AccountNotFound | InsufficientFunds | IdempotencyConflict

const toAccount = (r: AccountRow): Account => ({
  id: Number(r.id) as AccountId,
  name: r.name,
  balance: Number(r.balance)
})

const toTransfer = (r: TransferRow): Transfer => {
  const from = r.src === null ? null : (Number(r.src) as AccountId)
  const to = r.dst === null ? null : (Number(r.dst) as AccountId)
  return {
    id: Number(r.id) as TransferId,
    kind: from === null ? "deposit" : to === null ? "withdrawal" : "transfer",
    from,
    to,
    amount: Number(r.amount),
    idempotencyKey: r.idempotency_key
  }
}

const isDomainError = (e: unknown): e is DomainError =>
  e instanceof AccountNotFound || e instanceof InsufficientFunds || e instanceof IdempotencyConflict

/** Maps what escapes a unit of work to what a client may see; the original goes to the server log. */
const toPublic = (e: unknown): Effect.Effect<never, LedgerError> => {
  if (isDomainError(e)) return Effect.fail(e)
  const tag = (e as { _tag?: string } | undefined)?._tag ?? "Unknown"
  const publicError =
    tag === "CommitOutcomeUnknown"
      ? new OutcomeUnknown({
          message: "the connection to the database was lost during commit; retry with the same idempotency key"
        })
      : SessionError.isRetryable(e) || tag === "TransactionTimeout" || tag === "StatementTimeout"
        ? new Unavailable({ message: "the database is busy or unreachable; try again later" })
        : new InternalError({ message: "internal error" })
  return Effect.logWarning("request failed in the database layer", e).pipe(
    Effect.annotateLogs("error_tag", tag),
    Effect.zipRight(Effect.fail(publicError))
  )
}

const onSqlError =
  <E>(f: (e: SessionError.SessionError) => E | undefined) =>
  <A, E0, R>(self: Effect.Effect<A, E0 | SqlError, R>): Effect.Effect<A, E0 | E | SqlError, R> =>
    Effect.catchIf(
      self,
      (e): e is SqlError => (e as { _tag?: unknown })._tag === "SqlError",
      (e) => {
        const mapped = f(SessionError.classify(e))
        return Effect.fail(mapped === undefined ? e : mapped)
      }
    )

const lockAccounts = (sql: SqlClient.SqlClient, ids: ReadonlyArray<AccountId>) =>
  Effect.gen(function* () {
    const sorted = [...new Set(ids)].sort((a, b) => a - b)
    const rows = yield* sql<AccountRow>`
      SELECT id, name, balance FROM accounts WHERE id IN ${sql.in(sorted)} ORDER BY id FOR UPDATE`
    const byId = new Map(rows.map((r) => [Number(r.id), toAccount(r)] as const))
    for (const id of sorted) {
      if (!byId.has(id)) return yield* Effect.fail(accountNotFound(id))
    }
    return byId
  })

/** One money movement = one `transfers` row; deposits have no source, withdrawals no destination. */
const move = (from: AccountId | null, to: AccountId | null, amount: number, key: string | undefined) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const accounts = yield* lockAccounts(
      sql,
      [from, to].filter((x): x is AccountId => x !== null)
    )
    if (key !== undefined) {
      const prior = yield* sql<TransferRow>`
        SELECT id, src, dst, amount, idempotency_key FROM transfers WHERE idempotency_key = ${key}`
      if (prior[0] !== undefined) {
        const original = toTransfer(prior[0])
        if (original.from === from && original.to === to && original.amount === amount) return original
        return yield* Effect.fail(idempotencyConflict(key))
      }
    }
    if (from !== null) {
      const balance = accounts.get(from)!.balance
      if (balance < amount) return yield* Effect.fail(insufficientFunds(from, balance, amount))
    }
    yield* sql`INSERT INTO transfers (src, dst, amount, idempotency_key) VALUES (${from}, ${to}, ${amount}, ${key ?? null})`.pipe(
      onSqlError((e) => (e._tag === "DuplicateKey" && key !== undefined ? idempotencyConflict(key) : undefined))
    )
    const [row] = yield* sql<{ id: number | string }>`SELECT LAST_INSERT_ID() AS id`
    if (from !== null) {
      yield* sql`UPDATE accounts SET balance = balance - ${amount} WHERE id = ${from}`.pipe(
        onSqlError((e) =>
          e._tag === "CheckViolation" ? insufficientFunds(from, accounts.get(from)!.balance, amount) : undefined
        )
      )
    }
    if (to !== null) {
      yield* sql`UPDATE accounts SET balance = balance + ${amount} WHERE id = ${to}`
    }
    const transfer: Transfer = {
      id: Number(row!.id) as TransferId,
      kind: from === null ? "deposit" : to === null ? "withdrawal" : "transfer",
      from,
      to,
      amount,
      idempotencyKey: key ?? null
    }
    return transfer
  })

const createAccountIn = (req: CreateAccount) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    yield* sql`INSERT INTO accounts (name, balance) VALUES (${req.name}, 0)`
    const [row] = yield* sql<{ id: number | string }>`SELECT LAST_INSERT_ID() AS id`
    const account: Account = { id: Number(row!.id) as AccountId, name: req.name, balance: 0 }
    return account
  })

const balanceIn = (req: GetBalance) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const [row] = yield* sql<AccountRow>`SELECT id, name, balance FROM accounts WHERE id = ${req.account}`
    if (row === undefined) return yield* Effect.fail(accountNotFound(req.account))
    return toAccount(row)
  })

const historyIn = (req: GetHistory) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    yield* balanceIn({ account: req.account })
    const limit = req.limit ?? 20
    const before = req.before ?? Number.MAX_SAFE_INTEGER
    const rows = yield* sql<TransferRow>`
      SELECT id, src, dst, amount, idempotency_key FROM transfers
      WHERE (src = ${req.account} OR dst = ${req.account}) AND id < ${before}
      ORDER BY id DESC LIMIT ${sql.literal(String(limit + 1))}`
    const items = rows.slice(0, limit).map(toTransfer)
    const page: HistoryPage = {
      account: req.account,
      items,
      next: rows.length > limit ? items[items.length - 1]!.id : null
    }
    return page
  })

const runOperation = (
  op: BatchOperation
): Effect.Effect<Account | Transfer, DomainError | SqlError, SqlClient.SqlClient> => {
  switch (op.op) {
    case "create_account":
      return createAccountIn(op)
    case "deposit":
      return move(null, op.account, op.amount, op.idempotencyKey)
    case "withdraw":
      return move(op.account, null, op.amount, op.idempotencyKey)
    case "transfer":
      return move(op.from, op.to, op.amount, op.idempotencyKey)
    case "balance":
      return balanceIn(op)
  }
}

export class Ledger extends Effect.Service<Ledger>()("ledger/Ledger", {
  effect: Effect.gen(function* () {
    const engine = yield* Engine.Engine
    const config = yield* LedgerConfig

    const unit = <A, E>(
      name: string,
      effect: Effect.Effect<A, E, SqlClient.SqlClient>,
      options: { readonly readOnly?: boolean } = {}
    ): Effect.Effect<A, LedgerError> =>
      Session.transact(effect, {
        retry: true,
        name: `ledger.${name}`,
        timeout: config.requestTimeout,
        readOnly: options.readOnly ?? false
      }).pipe(Effect.provideService(Engine.Engine, engine), Effect.catchAll(toPublic))

    return {
      createAccount: (req: CreateAccount) => unit("create_account", createAccountIn(req)),
      deposit: (req: Deposit) => unit("deposit", move(null, req.account, req.amount, req.idempotencyKey)),
      withdraw: (req: Withdraw) => unit("withdraw", move(req.account, null, req.amount, req.idempotencyKey)),
      transfer: (req: TransferRequest) => unit("transfer", move(req.from, req.to, req.amount, req.idempotencyKey)),
      balance: (req: GetBalance) => unit("balance", balanceIn(req), { readOnly: true }),
      history: (req: GetHistory) => unit("history", historyIn(req), { readOnly: true }),
      batch: (req: Batch): Effect.Effect<BatchResult, LedgerError> =>
        unit(
          "batch",
          Effect.map(Effect.forEach(req.ops, runOperation), (results) => ({ results }))
        ),
      /** Database reachability for /health. */
      ping: engine.sql`SELECT 1 AS ok`.pipe(
        Effect.timeout("2 seconds"),
        Effect.as(true),
        Effect.catchAllCause(() => Effect.succeed(false))
      ),
      stats: engine.stats,
      serverVersion: engine.serverVersion
    } as const
  })
}) {}
