/**
 * Hand-written `pg` (node-postgres), the baseline on PostgreSQL: a Pool of 16, BEGIN / named (prepared) statements /
 * COMMIT, ROLLBACK on error (a connection whose ROLLBACK fails is destroyed), release.
 */
import * as Pg from "pg"
import { isRetryableError } from "../workload.js"
import { type PromiseImpl, POOL_SIZE, retryPromise } from "./Impl.js"
import { credit, debit, insertTransfer, selectForUpdate } from "./pgStatements.js"

const unnamed = (config: Pg.QueryConfig<Array<number>>): Pg.QueryConfig<Array<number>> => ({
  text: config.text,
  values: config.values!
})

/** `named: false` sends the same statements unnamed (parsed and planned by the server every time): what naming buys. */
export const pg = (named = true): PromiseImpl => {
  let pool: Pg.Pool | undefined
  const as = named ? (c: Pg.QueryConfig<Array<number>>) => c : unnamed
  const unit = async (a: number, b: number, amount: number) => {
    const client = await pool!.connect()
    try {
      await client.query("BEGIN")
      await client.query(as(selectForUpdate([a, b])))
      await client.query(as(debit([amount, a])))
      await client.query(as(credit([amount, b])))
      await client.query(as(insertTransfer([a, b, amount])))
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
    name: named ? "pg" : "pg-unnamed",
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
