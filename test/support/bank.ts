/**
 * The Jepsen "bank" workload on sessionfx: accounts with a known total, transfer units that each write an
 * idempotency row with a unique key, snapshot readers that check every read sums to the total, and a final
 * reconciliation of every unit's outcome against the database.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine, Session, SessionError } from "@sessionfx/session"
import { Prng } from "@sessionfx/testing"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"

export const SOAK = process.env.SESSIONFX_SOAK === "1"

/** The inputs of a run are reproducible from its seed. */
export const prng = Prng.make

export type Step = "begin" | "locked" | "debited" | "inserted"

export interface UnitContext {
  readonly key: string
  readonly index: number
  readonly random: () => number
  /** Call from `wrap` when the unit was interrupted at a point known to be before COMMIT: it must not be committed. */
  readonly markInterruptedBeforeCommit: () => void
}

export interface WorkloadOptions {
  readonly name: string
  readonly accounts?: number
  readonly initial?: number
  readonly writers: number
  readonly unitsPerWriter: number
  readonly readers?: number
  readonly seed?: number
  readonly options?: Session.Options
  /** Runs at each step inside the transaction (block on a Deferred, run an extra statement, …). */
  readonly at?: (ctx: UnitContext, step: Step) => Effect.Effect<void, unknown, SqlClient.SqlClient | Session.Session>
  /** Wraps the whole unit (timeouts, fork + interrupt, …). */
  readonly wrap?: (
    ctx: UnitContext,
    unit: Effect.Effect<void, unknown, Engine.Engine>
  ) => Effect.Effect<void, unknown, Engine.Engine>
  /** Called with each connection id when a unit starts and ends (to pick KILL victims). */
  readonly onConnection?: (id: number, open: boolean) => void
  /** Called after each acknowledged unit. */
  readonly onAck?: () => void
}

export interface Outcomes {
  readonly acked: Array<string>
  readonly unknown: Array<string>
  /** Interrupted or timed out from outside: from the caller's view the outcome is not known. */
  readonly indeterminate: Array<string>
  /** Interrupted at a known point before COMMIT: must be absent. */
  readonly interruptedBeforeCommit: Array<string>
  /** Failed with a typed error other than CommitOutcomeUnknown: must be absent. */
  readonly failed: Array<string>
  readonly errors: Record<string, number>
  reads: number
  readFailures: number
  readonly readViolations: Array<string>
  maxUnitMs: number
}

export interface Verdict {
  readonly units: number
  readonly acked: number
  readonly unknown: number
  readonly unknownCommitted: number
  readonly unknownAborted: number
  readonly indeterminate: number
  readonly indeterminateCommitted: number
  readonly failed: number
  /** Acknowledged but absent. */
  readonly lost: number
  /** Applied more than once (balance reconstruction mismatch or a DuplicateKey on the idempotency row). */
  readonly duplicated: number
  /** Reported failed / interrupted before COMMIT, yet present; or present without being issued. */
  readonly phantom: number
  readonly total: number
  readonly negative: number
}

const tagOf = (cause: Cause.Cause<unknown>): string => {
  if (Cause.isInterruptedOnly(cause)) return "Interrupted"
  const failure = Option.getOrUndefined(Cause.failureOption(cause)) as { _tag?: string } | undefined
  if (failure !== undefined) return failure._tag ?? "UnknownFailure"
  return "Defect"
}

/** Creates (or empties) the tables and funds `accounts` accounts with `initial` each. */
export const setup = (accounts: number, initial: number) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    // the same columns on both databases; MariaDB is told to use InnoDB (transactions, row locks)
    const engine = sql.onDialectOrElse({ mysql: () => " ENGINE=InnoDB", orElse: () => "" })
    yield* sql.unsafe(`CREATE TABLE IF NOT EXISTS bank_accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL)${engine}`)
    yield* sql.unsafe(
      `CREATE TABLE IF NOT EXISTS bank_transfers (k VARCHAR(64) PRIMARY KEY, src INT NOT NULL, dst INT NOT NULL, amount BIGINT NOT NULL)${engine}`
    )
    yield* sql`DELETE FROM bank_transfers`
    yield* sql`DELETE FROM bank_accounts`
    const rows = Array.from({ length: accounts }, (_, i) => ({ id: i + 1, balance: initial }))
    yield* sql`INSERT INTO bank_accounts ${sql.insert(rows)}`
  })

const noop = () => Effect.void

/** Sleeps `seconds` on the server, inside the unit's transaction: `SLEEP(s)` on MariaDB, `pg_sleep(s)` on PostgreSQL. */
export const sleep = (seconds: number) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql.onDialectOrElse({
      pg: () => sql`SELECT pg_sleep(${seconds})`,
      orElse: () => sql`SELECT SLEEP(${seconds})`
    })
  )

/** One transfer: lock both rows, move up to `want` from a to b, write the idempotency row. */
const transfer = (
  ctx: UnitContext,
  a: number,
  b: number,
  want: number,
  at: NonNullable<WorkloadOptions["at"]> | typeof noop,
  onConnection: WorkloadOptions["onConnection"]
) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    if (onConnection) {
      const id = yield* Session.connectionId
      onConnection(id, true)
      yield* Effect.addFinalizer(() => Effect.sync(() => onConnection(id, false)))
    }
    yield* at(ctx, "begin")
    const rows = yield* sql<{
      id: number
      balance: string | number
    }>`SELECT id, balance FROM bank_accounts WHERE id IN (${a}, ${b}) ORDER BY id FOR UPDATE`
    yield* at(ctx, "locked")
    const available = Number(rows.find((r) => r.id === a)?.balance ?? 0)
    const amount = Math.max(0, Math.min(want, available))
    yield* sql`UPDATE bank_accounts SET balance = balance - ${amount} WHERE id = ${a}`
    yield* sql`UPDATE bank_accounts SET balance = balance + ${amount} WHERE id = ${b}`
    yield* at(ctx, "debited")
    yield* sql`INSERT INTO bank_transfers (k, src, dst, amount) VALUES (${ctx.key}, ${a}, ${b}, ${amount})`
    yield* at(ctx, "inserted")
  }).pipe(Effect.scoped)

/** Reads every balance in a consistent-snapshot, read-only session (rolled back: readers never COMMIT). */
export const readAll = Session.transact(
  Effect.flatMap(
    SqlClient.SqlClient,
    (sql) => sql<{ id: number; balance: string | number }>`SELECT id, balance FROM bank_accounts`
  ),
  { consistentSnapshot: true, readOnly: true, rollbackOnly: true, retry: true }
)

/** Runs the workload: `writers` fibers × `unitsPerWriter` transfers, `readers` snapshot readers until they finish. */
export const run = (w: WorkloadOptions) =>
  Effect.gen(function* () {
    const accounts = w.accounts ?? 10
    const initial = w.initial ?? 1000
    const total = accounts * initial
    const outcomes: Outcomes = {
      acked: [],
      unknown: [],
      indeterminate: [],
      interruptedBeforeCommit: [],
      failed: [],
      errors: {},
      reads: 0,
      readFailures: 0,
      readViolations: [],
      maxUnitMs: 0
    }
    let writing = true
    const at = w.at ?? noop
    const writer = (n: number) =>
      Effect.gen(function* () {
        const random = prng((w.seed ?? 1) * 1000 + n)
        for (let i = 0; i < w.unitsPerWriter; i++) {
          const a = 1 + Math.floor(random() * accounts)
          let b = 1 + Math.floor(random() * (accounts - 1))
          if (b >= a) b++
          const want = 1 + Math.floor(random() * 100)
          let beforeCommit = false
          const ctx: UnitContext = {
            key: `${w.name}-${n}-${i}`,
            index: i,
            random,
            markInterruptedBeforeCommit: () => {
              beforeCommit = true
            }
          }
          const unit = Session.transact(transfer(ctx, a, b, want, at, w.onConnection), {
            retry: true,
            ...w.options
          }) as Effect.Effect<void, unknown, Engine.Engine>
          const started = Date.now()
          const exit = yield* Effect.exit(w.wrap ? w.wrap(ctx, unit) : unit)
          outcomes.maxUnitMs = Math.max(outcomes.maxUnitMs, Date.now() - started)
          if (Exit.isSuccess(exit)) {
            outcomes.acked.push(ctx.key)
            w.onAck?.()
            continue
          }
          const tag = tagOf(exit.cause)
          outcomes.errors[tag] = (outcomes.errors[tag] ?? 0) + 1
          if (beforeCommit) outcomes.interruptedBeforeCommit.push(ctx.key)
          else if (tag === "CommitOutcomeUnknown") outcomes.unknown.push(ctx.key)
          else if (tag === "Interrupted" || tag === "TimeoutException") outcomes.indeterminate.push(ctx.key)
          else if (tag === "Defect") return yield* Effect.failCause(exit.cause)
          else outcomes.failed.push(ctx.key)
        }
      })
    const reader = Effect.gen(function* () {
      while (writing) {
        const exit = yield* Effect.exit(readAll)
        if (Exit.isFailure(exit)) {
          outcomes.readFailures++
          if (!Exit.isInterrupted(exit) && Option.isNone(Cause.failureOption(exit.cause))) {
            return yield* Effect.failCause(exit.cause)
          }
          yield* Effect.yieldNow()
          continue
        }
        outcomes.reads++
        const balances = exit.value.map((r) => Number(r.balance))
        const sum = balances.reduce((s, x) => s + x, 0)
        if (sum !== total || balances.some((x) => x < 0) || balances.length !== accounts) {
          outcomes.readViolations.push(`sum ${sum}, balances ${balances.join(",")}`)
        }
      }
    })
    const writersDone = Effect.forEach(
      Array.from({ length: w.writers }, (_, n) => n),
      writer,
      { concurrency: "unbounded", discard: true }
    ).pipe(Effect.ensuring(Effect.sync(() => (writing = false))))
    yield* Effect.all([writersDone, Effect.replicateEffect(reader, w.readers ?? 2, { concurrency: "unbounded" })], {
      concurrency: "unbounded",
      discard: true
    })
    return { outcomes, total, accounts, initial }
  })

/**
 * Reconciles the outcomes with the database (through the Engine's autocommit client): acknowledged units present
 * exactly once, units that failed before COMMIT absent, unknown outcomes resolved by their idempotency key, the total
 * conserved and every balance equal to its initial value plus the recorded transfers.
 */
export const verify = (run: { outcomes: Outcomes; total: number; accounts: number; initial: number }) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const rows = yield* sql<{
      k: string
      src: number
      dst: number
      amount: string | number
    }>`SELECT k, src, dst, amount FROM bank_transfers`
    const balances = yield* sql<{ id: number; balance: string | number }>`SELECT id, balance FROM bank_accounts`
    const present = new Set(rows.map((r) => r.k))
    const o = run.outcomes
    const expected = new Map<number, number>()
    for (let id = 1; id <= run.accounts; id++) expected.set(id, run.initial)
    for (const r of rows) {
      expected.set(r.src, expected.get(r.src)! - Number(r.amount))
      expected.set(r.dst, expected.get(r.dst)! + Number(r.amount))
    }
    const mismatched = balances.filter((b) => expected.get(b.id) !== Number(b.balance)).length
    const issued = new Set([...o.acked, ...o.unknown, ...o.indeterminate, ...o.interruptedBeforeCommit, ...o.failed])
    const total = balances.reduce((s, b) => s + Number(b.balance), 0)
    const verdict: Verdict = {
      units: issued.size,
      acked: o.acked.length,
      unknown: o.unknown.length,
      unknownCommitted: o.unknown.filter((k) => present.has(k)).length,
      unknownAborted: o.unknown.filter((k) => !present.has(k)).length,
      indeterminate: o.indeterminate.length,
      indeterminateCommitted: o.indeterminate.filter((k) => present.has(k)).length,
      failed: o.failed.length + o.interruptedBeforeCommit.length,
      lost: o.acked.filter((k) => !present.has(k)).length,
      duplicated: mismatched + (o.errors["DuplicateKey"] ?? 0) + (rows.length - present.size),
      phantom:
        [...o.failed, ...o.interruptedBeforeCommit].filter((k) => present.has(k)).length +
        [...present].filter((k) => !issued.has(k)).length,
      total,
      negative: balances.filter((b) => Number(b.balance) < 0).length
    }
    return verdict
  })

/** Whether an error is typed and retryable (used by the pool / lock scenarios). */
export const isRetryable = SessionError.isRetryable
