/**
 * `@effect/sql-mysql2`: `sql.withTransaction(unit)` on a `MysqlClient` pool, retried on deadlocks and lock wait
 * timeouts.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as MysqlClient from "@effect/sql-mysql2/MysqlClient"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import { isRetryableError } from "../workload.js"
import { effectImpl, POOL_SIZE } from "./Impl.js"
import { sqlTransfer } from "./statements.js"

export const effectSql = () =>
  effectImpl(
    "effect-sql-mysql2",
    (url) => MysqlClient.layer({ url: Redacted.make(url), maxConnections: POOL_SIZE }),
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
