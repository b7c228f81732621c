/**
 * `@effect/sql-pg`: `sql.withTransaction(unit)` on a `PgClient` pool, retried on deadlocks and serialization failures.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import { isRetryableError } from "../workload.js"
import { effectImpl, POOL_SIZE } from "./Impl.js"
import { sqlTransfer } from "./statements.js"

export const effectSqlPg = () =>
  effectImpl(
    "effect-sql-pg",
    (url) => PgClient.layer({ url: Redacted.make(url), maxConnections: POOL_SIZE }),
    (a, b, amount) =>
      Effect.suspend(() => {
        let attempts = 0
        return Effect.flatMap(SqlClient.SqlClient, (sql) =>
          sql.withTransaction(
            Effect.suspend(() => {
              attempts++
              return sqlTransfer(sql, a, b, amount)
            })
          )
        ).pipe(
          Effect.retry({ times: 20, while: isRetryableError }),
          Effect.map(() => attempts - 1)
        )
      })
  )
