/**
 * What the core costs by itself: a transfer unit (START TRANSACTION, 4 statements, COMMIT, with `retry: true`) on an
 * in-process driver that answers every command on the next turn of the event loop, against the same six commands
 * issued by hand-written callbacks on the same driver. No server, no mysql2: the difference is the state machine,
 * the lock, the pool, the statement path and Effect's fibers — sessionfx's own share of a unit's CPU (see
 * docs/performance.md). A diagnostic, not a target: `pnpm --filter @sessionfx/session bench:core`.
 */
import * as Effect from "effect/Effect"
import { dialect, keysSql, topologySql } from "../../src/internal/driver/mysql/dialect.js"
import * as mysqlErrors from "../../src/internal/driver/mysql/errors.js"
import { bindValues, splitStatements } from "../../src/internal/driver/mysql/values.js"
import type { RawConnection, Reply, ReplyCallback, ServerDriver, Settings } from "../../src/internal/driver/types.js"
import * as internalSession from "../../src/internal/units.js"
import { engineOn } from "./fake.js"

const BASELINE: Settings = { lockWait: 50, statementTime: 0, isolation: "REPEATABLE READ", autocommit: true }
const OK = { affectedRows: 1 }
const ROWS = [{ balance: 1 }, { balance: 2 }]
let thread = 1
class Conn implements RawConnection {
  inTransaction = false
  autocommit = true
  threadId = thread++
  private answer(sql: string, cb: ReplyCallback) {
    const c = sql.charCodeAt(0)
    if (c === 83 && sql.charCodeAt(1) === 84)
      this.inTransaction = true // START
    else if (c === 67 || c === 82)
      this.inTransaction = false // COMMIT / ROLLBACK
    else if (c === 83 && sql.charCodeAt(1) === 69 && sql.charCodeAt(2) === 84) {
      if (/autocommit = 0/.test(sql)) this.autocommit = false // SET SESSION … autocommit = 0
    } else if (!this.autocommit) this.inTransaction = true // SELECT / UPDATE / INSERT open one
    const r: Reply = {
      rows: c === 83 && sql.charCodeAt(1) === 69 ? ROWS : OK,
      inTransaction: this.inTransaction,
      autocommit: this.autocommit,
      stateChanged: false,
      token: undefined
    }
    setImmediate(() => cb(null, r))
  }
  readonly query = (sql: string, _r: boolean, cb: ReplyCallback) => this.answer(sql, cb)
  readonly execute = (sql: string, _v: ReadonlyArray<unknown>, _r: boolean, cb: ReplyCallback) => this.answer(sql, cb)
  readonly stream = () => {
    throw new Error("no")
  }
  readonly ping = (cb: (err: unknown) => void) => setImmediate(() => cb(undefined))
  readonly reset = (cb: (err: unknown) => void) => setImmediate(() => cb(undefined))
  readonly pause = () => undefined
  readonly resume = () => undefined
  readonly bytesRead = () => 0
  readonly destroy = () => undefined
  readonly onGone = () => () => undefined
}
const driver: ServerDriver = {
  connect: (cb) => setImmediate(() => cb(null, new Conn())),
  dialect: dialect("mariadb"),
  baseline: BASELINE,
  setVersion: () => undefined,
  readVersion: (_c, cb) => cb(null, "10.11.0-MariaDB-fake"),
  prepare: (_c, cb) => cb(null, BASELINE),
  marksDirty: () => false,
  statementTime: (ms) => ms / 1000,
  bind: bindValues,
  split: splitStatements,
  errors: mysqlErrors,
  topology: topologySql,
  keysSql
}

const impl = engineOn(driver, { size: 16, acquireTimeoutMs: 60_000, commitTimeoutMs: 10_000 })

const sql = impl.client
const transfer = (a: number, b: number, amount: number) =>
  internalSession.transact(
    impl,
    Effect.gen(function* () {
      yield* sql`SELECT balance FROM accounts WHERE id IN (${a}, ${b}) FOR UPDATE`
      yield* sql`UPDATE accounts SET balance = balance - ${amount} WHERE id = ${a}`
      yield* sql`UPDATE accounts SET balance = balance + ${amount} WHERE id = ${b}`
      yield* sql`INSERT INTO transfers (src, dst, amount) VALUES (${a}, ${b}, ${amount})`
    }),
    { retry: true }
  )


const main = async () => {
  for (let r = 0; r < 3; r++) {
    const t0 = process.cpuUsage()
    const n = 20000
    let done = 0
    const worker = async () => { while (done < n) { done++; await Effect.runPromise(transfer(1, 2, 3)) } }
    await Promise.all(Array.from({ length: Number(process.env.C ?? 1) }, worker))
    const u = process.cpuUsage(t0)
    console.log("cpu µs/unit", ((u.user + u.system) / n).toFixed(1))
  }
  process.exit(0)
}
main()
