/**
 * sessionfx, combinator spelling: `Session.transact(unit, { retry: true })`.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine, Session } from "@sessionfx/session"
import * as Effect from "effect/Effect"
import { effectImpl, POOL_SIZE } from "./Impl.js"
import { sqlTransfer } from "./statements.js"

export const sessionfxTransact = () =>
  effectImpl(
    "sessionfx-transact",
    (url) => Engine.layer({ url, pool: { size: POOL_SIZE, acquireTimeout: "5 minutes" } }),
    (a, b, amount) =>
      Effect.suspend(() => {
        let attempts = 0
        return Session.transact(
          Effect.flatMap(SqlClient.SqlClient, (sql) => {
            attempts++
            return sqlTransfer(sql, a, b, amount)
          }),
          { retry: true }
        ).pipe(Effect.map(() => attempts - 1))
      })
  )
