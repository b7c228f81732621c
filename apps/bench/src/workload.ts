/**
 * The "transfer" workload: a seeded plan of transfers, the schema, the reset between runs and the conservation check.
 */
import { Prng } from "@sessionfx/testing"
import * as Mysql from "mysql2/promise"

export const INITIAL_BALANCE = 1000

/** MariaDB's deadlock (1213) and lock wait timeout (1205): the unit is retried. */
export const RETRYABLE_ERRNOS: ReadonlySet<number> = new Set([1213, 1205])

/** PostgreSQL's deadlock (40P01) and serialization failure (40001): the unit is retried. */
export const RETRYABLE_SQLSTATES: ReadonlySet<string> = new Set(["40P01", "40001"])

/** True when `error` (or one of its causes) is a retryable server error, of either database. */
export const isRetryableError = (error: unknown): boolean => {
  let e: unknown = error
  for (let depth = 0; depth < 5 && typeof e === "object" && e !== null; depth++) {
    const { errno, code } = e as { errno?: unknown; code?: unknown }
    if (typeof errno === "number" && RETRYABLE_ERRNOS.has(errno)) return true
    if (typeof code === "string" && RETRYABLE_SQLSTATES.has(code)) return true
    e = (e as { cause?: unknown }).cause
  }
  return false
}

/** What the runner needs of a database: the schema, the reset between runs and the conservation check. */
export interface Workload {
  readonly createSchema: (url: string, accounts: number) => Promise<void>
  readonly resetAccounts: (url: string) => Promise<void>
  readonly checkConservation: (url: string, accounts: number, completed: number) => Promise<Conservation>
}

/** mulberry32, shared with the tests and the ledger demo. */
export const mulberry32 = Prng.make

/** The transfers of one run, drawn ahead of time so every implementation does the same work. */
export interface Plan {
  readonly size: number
  readonly src: Int32Array
  readonly dst: Int32Array
  readonly amount: Int32Array
}

export const makePlan = (transfers: number, accounts: number, seed: number): Plan => {
  const random = mulberry32(seed)
  const src = new Int32Array(transfers)
  const dst = new Int32Array(transfers)
  const amount = new Int32Array(transfers)
  for (let i = 0; i < transfers; i++) {
    const a = 1 + Math.floor(random() * accounts)
    let b = 1 + Math.floor(random() * (accounts - 1))
    if (b >= a) b++
    src[i] = a
    dst[i] = b
    amount[i] = 1 + Math.floor(random() * 100)
  }
  return { size: transfers, src, dst, amount }
}

const withConnection = async <A>(url: string, f: (conn: Mysql.Connection) => Promise<A>): Promise<A> => {
  const conn = await Mysql.createConnection({ uri: url, multipleStatements: true })
  try {
    return await f(conn)
  } finally {
    await conn.end()
  }
}

/** Drops and creates `accounts` and `transfers`, then fills `accounts`. */
export const createSchema = (url: string, accounts: number): Promise<void> =>
  withConnection(url, async (conn) => {
    await conn.query("DROP TABLE IF EXISTS transfers, accounts")
    await conn.query("CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB")
    await conn.query(
      "CREATE TABLE transfers (id BIGINT AUTO_INCREMENT PRIMARY KEY, src INT NOT NULL, dst INT NOT NULL, amount BIGINT NOT NULL) ENGINE=InnoDB"
    )
    for (let from = 1; from <= accounts; from += 1000) {
      const rows: Array<[number, number]> = []
      for (let id = from; id < Math.min(from + 1000, accounts + 1); id++) rows.push([id, INITIAL_BALANCE])
      await conn.query("INSERT INTO accounts (id, balance) VALUES ?", [rows])
    }
  })

/** Every balance back to the initial amount, no transfer rows. */
export const resetAccounts = (url: string): Promise<void> =>
  withConnection(url, async (conn) => {
    await conn.query("TRUNCATE TABLE transfers")
    await conn.query("UPDATE accounts SET balance = ?", [INITIAL_BALANCE])
  })

export interface Conservation {
  readonly ok: boolean
  readonly balanceSum: number
  readonly expectedSum: number
  readonly transferRows: number
  readonly completed: number
  readonly movedAmount: number
}

/**
 * The sum of balances is unchanged, the transfer rows are exactly the completed units, and the balances equal the
 * initial balances plus the net of the recorded transfers (money neither created nor lost, nothing half-applied).
 */
export const checkConservation = (url: string, accounts: number, completed: number): Promise<Conservation> =>
  withConnection(url, async (conn) => {
    const [sumRows] = await conn.query<Array<Mysql.RowDataPacket>>(
      "SELECT CAST(COALESCE(SUM(balance), 0) AS SIGNED) AS s, COUNT(*) AS n FROM accounts"
    )
    const [transferRows] = await conn.query<Array<Mysql.RowDataPacket>>(
      "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(amount), 0) AS SIGNED) AS moved FROM transfers"
    )
    const [mismatch] = await conn.query<Array<Mysql.RowDataPacket>>(
      `SELECT COUNT(*) AS n FROM accounts a
       LEFT JOIN (SELECT id, SUM(delta) AS delta FROM (
         SELECT src AS id, -amount AS delta FROM transfers UNION ALL SELECT dst AS id, amount AS delta FROM transfers
       ) d GROUP BY id) t ON t.id = a.id
       WHERE a.balance <> ? + COALESCE(t.delta, 0)`,
      [INITIAL_BALANCE]
    )
    const balanceSum = Number(sumRows[0]!["s"])
    const expectedSum = accounts * INITIAL_BALANCE
    const rows = Number(transferRows[0]!["n"])
    return {
      ok:
        balanceSum === expectedSum &&
        Number(sumRows[0]!["n"]) === accounts &&
        rows === completed &&
        Number(mismatch[0]!["n"]) === 0,
      balanceSum,
      expectedSum,
      transferRows: rows,
      completed,
      movedAmount: Number(transferRows[0]!["moved"])
    }
  })

/** The workload on MariaDB / MySQL. */
export const mysqlWorkload: Workload = { createSchema, resetAccounts, checkConservation }
