/**
 * Hand-written mysql2: a promise pool, BEGIN / prepared statements / COMMIT, ROLLBACK on error, release.
 */
import * as Mysql from "mysql2/promise"
import { isRetryableError } from "../workload.js"
import { type PromiseImpl, POOL_SIZE, retryPromise } from "./Impl.js"
import { CREDIT, DEBIT, INSERT_TRANSFER, SELECT_FOR_UPDATE } from "./statements.js"

export const mysql2 = (): PromiseImpl => {
  let pool: Mysql.Pool | undefined
  const unit = async (a: number, b: number, amount: number) => {
    const conn = await pool!.getConnection()
    try {
      await conn.query("BEGIN")
      await conn.execute(SELECT_FOR_UPDATE, [a, b])
      await conn.execute(DEBIT, [amount, a])
      await conn.execute(CREDIT, [amount, b])
      await conn.execute(INSERT_TRANSFER, [a, b, amount])
      await conn.query("COMMIT")
    } catch (e) {
      try {
        await conn.query("ROLLBACK")
      } catch {
        conn.destroy()
      }
      throw e
    } finally {
      conn.release()
    }
  }
  return {
    kind: "promise",
    name: "mysql2",
    setup: async (url) => {
      pool = Mysql.createPool({ uri: url, connectionLimit: POOL_SIZE })
      await pool.query("SELECT 1")
    },
    transfer: (a, b, amount) => retryPromise(() => unit(a, b, amount), isRetryableError),
    close: async () => {
      await pool?.end()
      pool = undefined
    }
  }
}
