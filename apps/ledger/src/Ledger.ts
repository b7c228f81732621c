/**
 * The ledger's handlers: each public operation is one unit of work (`Session.transact`, retried on deadlocks and
 * lock wait timeouts); `batch` runs several operations in one unit, all or nothing.
 */
import type { SqlError } from "@effect/sql/SqlError"
import { Engine, Session, SessionError } from "@sessionfx/session"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type { Account, AccountId, HistoryPage, Transfer, TransferId } from "./Domain/Account.js"
import { MAX_AMOUNT, MAX_BALANCE } from "./Domain/Account.js"
import {
  AccountNotFound,
  accountNotFound,
  AmountTooLarge,
  amountTooLarge,
  BalanceOverflow,
  balanceOverflow,
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
import type { Db, Int } from "./Statements.js"
import * as Statements from "./Statements.js"

interface AccountRow {
  readonly id: Int
  readonly name: string
  readonly balance: Int
}

interface TransferRow {
  readonly id: Int
  readonly src: Int | null
  readonly dst: Int | null
  readonly amount: Int
  readonly idempotency_key: string | Uint8Array | null
}

type DomainError = AccountNotFound | InsufficientFunds | AmountTooLarge | BalanceOverflow | IdempotencyConflict

/**
 * An exact integer from a BIGINT column, whatever the driver hands over (a number when it is safe, a string or a
 * bigint otherwise); a number that is not a safe integer has already lost precision, and is a defect, not money.
 */
const exact = (v: Int): bigint => {
  if (typeof v === "number" && !Number.isSafeInteger(v)) throw new RangeError(`inexact integer from the database: ${v}`)
  return BigInt(v)
}

const keyOf = (k: string | Uint8Array | null): string | null =>
  k === null || typeof k === "string" ? k : Buffer.from(k.buffer, k.byteOffset, k.byteLength).toString("utf8")

const toAccount = (r: AccountRow): Account => ({
  id: Number(r.id) as AccountId,
  name: r.name,
  balance: exact(r.balance)
})

const kindOf = (from: AccountId | null, to: AccountId | null): Transfer["kind"] =>
  from === null ? "deposit" : to === null ? "withdrawal" : "transfer"

const toTransfer = (r: TransferRow): Transfer => {
  const from = r.src === null ? null : (Number(r.src) as AccountId)
  const to = r.dst === null ? null : (Number(r.dst) as AccountId)
  return {
    id: Number(r.id) as TransferId,
    kind: kindOf(from, to),
    from,
    to,
    amount: exact(r.amount),
    idempotencyKey: keyOf(r.idempotency_key)
  }
}

const isDomainError = (e: unknown): e is DomainError =>
  e instanceof AccountNotFound ||
  e instanceof InsufficientFunds ||
  e instanceof IdempotencyConflict ||
  e instanceof AmountTooLarge ||
  e instanceof BalanceOverflow

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

// The unit bodies below are chains of `Effect.flatMap`, not `Effect.gen`: a generator step costs Effect's run loop
// more than a flatMap does (measured: the bodies' generators were about 10 µs of CPU per transfer). They take the
// Engine's client, which inside a unit of that engine joins the unit (what `SqlClient` in the unit's context is),
// instead of reading it from the context per request. The SQL texts that differ between MariaDB / MySQL and
// PostgreSQL are in Statements.ts (chosen once per Engine); the rest are one text for both.

/** An idempotency key as the database keeps it: its UTF-8 bytes (compared byte for byte on both databases). */
const keyBytes = (key: string | undefined): Buffer | null => (key === undefined ? null : Buffer.from(key, "utf8"))

/** One money movement: a deposit has no `from`, a withdrawal no `to`. */
interface Movement {
  readonly from: AccountId | null
  readonly to: AccountId | null
  readonly amount: bigint
  readonly key: string | undefined
}

const lockAccounts = (
  { sql }: Db,
  ids: ReadonlyArray<AccountId>
): Effect.Effect<Map<number, Account>, AccountNotFound | SqlError> =>
  Effect.flatMap(
    ids.length === 1
      ? sql<AccountRow>`SELECT id, name, balance FROM accounts WHERE id = ${ids[0]!} FOR UPDATE`
      : sql<AccountRow>`
            SELECT id, name, balance FROM accounts WHERE id IN (${ids[0]!}, ${ids[1]!}) ORDER BY id FOR UPDATE`,
    (rows) => {
      const byId = new Map<number, Account>()
      for (const r of rows) byId.set(Number(r.id), toAccount(r))
      for (const id of ids) {
        if (!byId.has(id)) return Effect.fail(accountNotFound(id))
      }
      return Effect.succeed(byId)
    }
  )

/**
 * One money movement = one `transfers` row; deposits have no source, withdrawals no destination. Amounts are bound
 * as bigints and cast to a 64-bit integer in SQL (`Statements.ts`), so the arithmetic is BIGINT whether the driver
 * sends a bigint as an integer or as a string — never a DOUBLE. On PostgreSQL (READ COMMITTED) a row locked after a
 * wait is read as the other unit committed it, and the key lookup after the lock sees a committed duplicate; on
 * MariaDB the lookup is the unit's first plain read, so its snapshot starts after the lock. Nothing runs (no
 * statement is built) until the unit runs it.
 */
const move = (db: Db, m: Movement): Effect.Effect<Transfer, DomainError | SqlError> =>
  Effect.suspend(() => {
    const { amount, from, key, to } = m
    if (amount > MAX_AMOUNT) return Effect.fail(amountTooLarge(amount))
    const ids = from === null ? [to!] : to === null ? [from] : from < to ? [from, to] : [to, from]
    return Effect.flatMap(lockAccounts(db, ids), (accounts) =>
      key === undefined
        ? apply(db, accounts, m)
        : Effect.flatMap(
            db.sql<TransferRow>`
        SELECT id, src, dst, amount, idempotency_key FROM transfers WHERE idempotency_key = ${keyBytes(key)}`,
            (prior): Effect.Effect<Transfer, DomainError | SqlError> => {
              if (prior[0] === undefined) return apply(db, accounts, m)
              const original = toTransfer(prior[0])
              if (original.from === from && original.to === to && original.amount === amount) {
                return Effect.succeed(original)
              }
              return Effect.fail(idempotencyConflict(key))
            }
          )
    )
  })

/** The rest of `move` once both rows are locked and the key (if any) is new: check, insert, move the money. */
const apply = (
  db: Db,
  accounts: Map<number, Account>,
  { amount, from, key, to }: Movement
): Effect.Effect<Transfer, DomainError | SqlError> => {
  if (from !== null) {
    const balance = accounts.get(from)!.balance
    if (balance < amount) return Effect.fail(insufficientFunds(from, balance, amount))
  }
  if (to !== null) {
    const balance = accounts.get(to)!.balance
    if (balance > MAX_BALANCE - amount) return Effect.fail(balanceOverflow(to, balance, amount))
  }
  return Effect.flatMap(
    db
      .insertTransfer(from, to, amount, keyBytes(key))
      .pipe(onSqlError((e) => (e._tag === "DuplicateKey" && key !== undefined ? idempotencyConflict(key) : undefined))),
    (id) => {
      const transfer: Transfer = {
        id: Number(id) as TransferId,
        kind: kindOf(from, to),
        from,
        to,
        amount,
        idempotencyKey: key ?? null
      }
      // both rows are locked already: one statement moves the money
      return Effect.as(
        from !== null && to !== null
          ? db.transfer(from, to, amount)
          : from !== null
            ? db.debit(from, amount)
            : db.credit(to!, amount),
        transfer
      )
    }
  )
}

const createAccountIn = (db: Db, req: CreateAccount): Effect.Effect<Account, SqlError> =>
  Effect.suspend(() =>
    Effect.map(db.insertAccount(req.name), (id) => {
      const account: Account = {
        id: Number(id) as AccountId,
        name: req.name,
        balance: 0n
      }
      return account
    })
  )

const balanceIn = ({ sql }: Db, req: GetBalance): Effect.Effect<Account, AccountNotFound | SqlError> =>
  Effect.suspend(() =>
    Effect.flatMap(
      sql<AccountRow>`SELECT id, name, balance FROM accounts WHERE id = ${req.account}`,
      ([row]): Effect.Effect<Account, AccountNotFound> =>
        row === undefined ? Effect.fail(accountNotFound(req.account)) : Effect.succeed(toAccount(row))
    )
  )

const historyIn = (db: Db, req: GetHistory): Effect.Effect<HistoryPage, AccountNotFound | SqlError> =>
  Effect.zipRight(
    balanceIn(db, { account: req.account }),
    Effect.suspend(() => {
      const limit = req.limit ?? 20
      const before = req.before ?? Number.MAX_SAFE_INTEGER
      const { sql } = db
      return Effect.map(
        sql<TransferRow>`
      SELECT id, src, dst, amount, idempotency_key FROM transfers
      WHERE (src = ${req.account} OR dst = ${req.account}) AND id < ${before}
      ORDER BY id DESC LIMIT ${sql.literal(String(limit + 1))}`,
        (rows) => {
          const items = rows.slice(0, limit).map(toTransfer)
          const page: HistoryPage = {
            account: req.account,
            items,
            next: rows.length > limit ? items[items.length - 1]!.id : null
          }
          return page
        }
      )
    })
  )

const runOperation = (db: Db, op: BatchOperation): Effect.Effect<Account | Transfer, DomainError | SqlError> => {
  switch (op.op) {
    case "create_account":
      return createAccountIn(db, op)
    case "deposit":
      return move(db, { from: null, to: op.account, amount: op.amount, key: op.idempotencyKey })
    case "withdraw":
      return move(db, { from: op.account, to: null, amount: op.amount, key: op.idempotencyKey })
    case "transfer":
      return move(db, { from: op.from, to: op.to, amount: op.amount, key: op.idempotencyKey })
    case "balance":
      return balanceIn(db, op)
  }
}

/** `effect` bounded by `LEDGER_REQUEST_TIMEOUT` (0: unbounded); past it, it is interrupted (rolled back). */
export const bounded = (requestTimeout: Duration.DurationInput) => {
  const ms = Duration.toMillis(Duration.decode(requestTimeout))
  const timedOut = () => new Unavailable({ message: "the request took too long and was rolled back; try again later" })
  return <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | Unavailable, R> =>
    ms > 0 ? Effect.timeoutFail(effect, { duration: ms, onTimeout: timedOut }) : effect
}

export class Ledger extends Effect.Service<Ledger>()("ledger/Ledger", {
  effect: Effect.gen(function* () {
    const engine = yield* Engine.Engine

    // the options of each kind of unit, built once: no per-unit session settings (a `SET SESSION` would make the
    // connection dirty, cost a reset on release and drop its prepared statements); the request timeout bounds
    // lock waits too. No `name` either: a named unit opens a span even when no tracer exports it (measured: about
    // 8 % of the ledger's CPU per transfer); the name would only label that span.
    const optionsOf = (readOnly: boolean): Session.Options => ({
      retry: true,
      ...(readOnly ? { readOnly: true } : {})
    })
    // No unit `timeout`: it would run the body on a racing child fiber (measured: about 1 ms more CPU per transfer,
    // 0.4 ms with the race outside the unit). Each transport bounds a request its own way (`LEDGER_REQUEST_TIMEOUT`):
    // TCP with one watchdog timer for all connections, HTTP with `bounded` below.
    const unitOptions = new Map<string, Session.Options>()
    const unit = <A, E>(name: string, effect: Effect.Effect<A, E>, readOnly = false): Effect.Effect<A, LedgerError> => {
      let options = unitOptions.get(name)
      if (options === undefined) unitOptions.set(name, (options = optionsOf(readOnly)))
      const unit = Session.transact(effect, options)
      // the Engine is provided only to a fiber that does not carry it already (the TCP connections' fibers do):
      // `provideService` copies the fiber's whole context per request
      return Effect.catchAll(
        Effect.withFiberRuntime<A, E | SessionError.SessionError>((fiber) => {
          const o = Context.getOption(fiber.currentContext, Engine.Engine)
          return o._tag === "Some" && o.value === engine
            ? (unit as Effect.Effect<A, E | SessionError.SessionError>)
            : Effect.provideService(unit, Engine.Engine, engine)
        }),
        toPublic
      )
    }

    // the engine's client (inside a unit of this engine it joins that unit) and its database's statements
    const db = Statements.make(engine.sql, engine.flavor)
    return {
      createAccount: (req: CreateAccount) => unit("create_account", createAccountIn(db, req)),
      deposit: (req: Deposit) =>
        unit("deposit", move(db, { from: null, to: req.account, amount: req.amount, key: req.idempotencyKey })),
      withdraw: (req: Withdraw) =>
        unit("withdraw", move(db, { from: req.account, to: null, amount: req.amount, key: req.idempotencyKey })),
      transfer: (req: TransferRequest) =>
        unit("transfer", move(db, { from: req.from, to: req.to, amount: req.amount, key: req.idempotencyKey })),
      balance: (req: GetBalance) => unit("balance", balanceIn(db, req), true),
      history: (req: GetHistory) => unit("history", historyIn(db, req), true),
      batch: (req: Batch): Effect.Effect<BatchResult, LedgerError> =>
        unit(
          "batch",
          Effect.map(
            Effect.forEach(req.ops, (op) => runOperation(db, op)),
            (results) => ({ results })
          )
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
