/**
 * Hand-written `pg` (node-postgres), the baseline on PostgreSQL: a Pool of 16, BEGIN / named (prepared) statements /
 * COMMIT, ROLLBACK on error (a connection whose ROLLBACK fails is destroyed), release.
 */
import * as Pg from "pg"
import { isRetryableError } from "../workload.js"
import { type PromiseImpl, POOL_SIZE, retryPromise } from "./Impl.js"
import { credit, debit, insertTransfer, selectForUpdate } from "./pgStatements.js"

export const pg = (): PromiseImpl => {
  let pool: Pg.Pool | undefined
  const unit = async (a: number, b: number, amount: number) => {
    const client = await pool!.connect()
    try {
      await client.query("BEGIN")
      await client.query(selectForUpdate([a, b]))
      await client.query(debit([amount, a]))
      await client.query(credit([amount, b]))
      await client.query(insertTransfer([a, b, amount]))
      await client.query("COMMIT")
      client.release()
    } catch (e) {
      await client.query("ROLLBACK").then(
        () => client.release(),
        () => client.release(true)
      )
      throw e
    }
  }
  return {
    kind: "promise",
    name: "pg",
    setup: async (url) => {
      pool = new Pg.Pool({ connectionString: url, max: POOL_SIZE })
      await pool.query("SELECT 1")
    },
    transfer: (a, b, amount) => retryPromise(() => unit(a, b, amount), isRetryableError),
    close: async () => {
      await pool?.end()
      pool = undefined
    }
  }
}
