/**
 * Kysely on PostgreSQL: `db.transaction().execute(...)` over a `PostgresDialect` on a `pg` Pool.
 */
import { Kysely, PostgresDialect, sql } from "kysely"
import * as Pg from "pg"
import { isRetryableError } from "../workload.js"
import { type PromiseImpl, POOL_SIZE, retryPromise } from "./Impl.js"
import { type Database, kyselyUnit } from "./kysely.js"

export const kyselyPg = (): PromiseImpl => {
  let db: Kysely<Database> | undefined
  return {
    kind: "promise",
    name: "kysely-pg",
    setup: async (url) => {
      db = new Kysely<Database>({
        dialect: new PostgresDialect({ pool: new Pg.Pool({ connectionString: url, max: POOL_SIZE }) })
      })
      await sql`SELECT 1`.execute(db)
    },
    transfer: (a, b, amount) => retryPromise(() => kyselyUnit(db!, a, b, amount), isRetryableError),
    close: async () => {
      await db?.destroy()
      db = undefined
    }
  }
}
