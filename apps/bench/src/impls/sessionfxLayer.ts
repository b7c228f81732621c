/**
 * sessionfx, Layer spelling: `unit.pipe(Effect.provide(SessionLive))`, retried on retryable SessionErrors.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine, SessionError, SessionLive } from "@sessionfx/session"
import * as Effect from "effect/Effect"
import { effectImpl, POOL_SIZE } from "./Impl.js"
import { sqlTransfer } from "./statements.js"

export const sessionfxLayer = () =>
  effectImpl(
    "sessionfx-layer",
    (url) => Engine.layer({ url, pool: { size: POOL_SIZE, acquireTimeout: "5 minutes" } }),
    (a, b, amount) =>
      Effect.suspend(() => {
        let attempts = 0
        return Effect.flatMap(SqlClient.SqlClient, (sql) => {
          attempts++
          return sqlTransfer(sql, a, b, amount)
        }).pipe(
          Effect.provide(SessionLive),
          // the statement's SqlError carries the unit's SessionError (a deadlock on PostgreSQL) as its cause
          Effect.retry({ times: 20, while: (e) => SessionError.isRetryable(SessionError.classify(e)) }),
          Effect.map(() => attempts - 1)
        )
      })
  )
