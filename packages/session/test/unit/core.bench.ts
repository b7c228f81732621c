/**
 * What the core costs by itself: a transfer unit (START TRANSACTION, 4 statements, COMMIT, with `retry: true`) on an
 * in-process driver that answers every command on the next turn of the event loop, against the same six commands
 * issued by hand-written callbacks on the same driver. No server, no mysql2: the difference is the state machine,
 * the lock, the pool, the statement path and Effect's fibers — sessionfx's own share of a unit's CPU (see
 * docs/performance.md). A diagnostic, not a target: `pnpm --filter @sessionfx/session bench:core`.
 */
import { bench, describe } from "vitest"
import * as Effect from "effect/Effect"
import type { RawConnection, Reply, ReplyCallback } from "../../src/internal/driver/types.js"
import * as internalSession from "../../src/internal/units.js"
import { engineOn, fakeDriver } from "./fake.js"

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
const driver = fakeDriver((cb) => setImmediate(() => cb(null, new Conn())), { autocommitOff: true })

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

// the baseline: the same driver, called as hand-written code would (callbacks, one connection per unit)
const conn = new Conn()
const STEPS: ReadonlyArray<readonly [string, ReadonlyArray<unknown>]> = [
  ["START TRANSACTION", []],
  ["SELECT balance FROM accounts WHERE id IN (?, ?) FOR UPDATE", [1, 2]],
  ["UPDATE accounts SET balance = balance - ? WHERE id = ?", [1, 1]],
  ["UPDATE accounts SET balance = balance + ? WHERE id = ?", [1, 2]],
  ["INSERT INTO transfers (src, dst, amount) VALUES (?, ?, ?)", [1, 2, 1]],
  ["COMMIT", []]
]
const rawTransfer = () =>
  new Promise<void>((resolve, reject) => {
    let k = 0
    const next = (err: unknown) => {
      if (err) return reject(err)
      if (k === STEPS.length) return resolve()
      const [text, values] = STEPS[k++]!
      if (values.length === 0) conn.query(text, false, next)
      else conn.execute(text, values, false, next)
    }
    next(null)
  })

describe("a transfer unit on an in-process driver (6 commands)", () => {
  bench("sessionfx: Session.transact(…, { retry: true })", () => Effect.runPromise(transfer(1, 2, 1)), {
    time: 2000
  })
  bench("hand-written callbacks on the same driver", rawTransfer, { time: 2000 })
})
