/**
 * The floor of an Effect implementation: hand-written mysql2 (its callback API) inside Effect — one `Effect.async`
 * per driver call, `Effect.acquireUseRelease` around the pooled connection, `Effect.gen` for the unit's statements,
 * BEGIN / prepared statements / COMMIT, ROLLBACK on error — and none of sessionfx's guarantees. What separates it
 * from `mysql2` is Effect's own run loop and allocation: what any Effect library on this driver starts from.
 */
import * as Effect from "effect/Effect"
import * as Mysql from "mysql2"
import { isRetryableError } from "../workload.js"
import type { Impl } from "./Impl.js"
import { POOL_SIZE } from "./Impl.js"
import { CREDIT, DEBIT, INSERT_TRANSFER, SELECT_FOR_UPDATE } from "./statements.js"

type Callback = (err: unknown, rows?: unknown) => void

const call = (f: (cb: Callback) => void): Effect.Effect<unknown, unknown> =>
  Effect.async<unknown, unknown>((resume) => {
    f((err, rows) => resume(err ? Effect.fail(err) : Effect.succeed(rows)))
  })

export const mysql2Effect = (): Impl => {
  let pool: Mysql.Pool | undefined
  const connection = Effect.async<Mysql.PoolConnection, unknown>((resume) => {
    pool!.getConnection((err, conn) => resume(err ? Effect.fail(err) : Effect.succeed(conn)))
  })
  const query = (conn: Mysql.PoolConnection, sql: string) => call((cb) => conn.query(sql, cb))
  const execute = (conn: Mysql.PoolConnection, sql: string, values: Array<number>) =>
    call((cb) => conn.execute(sql, values, cb))
  const unit = <A>(body: (conn: Mysql.PoolConnection) => Effect.Effect<A, unknown>): Effect.Effect<A, unknown> =>
    Effect.acquireUseRelease(
      connection,
      (conn) =>
        query(conn, "BEGIN").pipe(
          Effect.zipRight(body(conn)),
          Effect.zipLeft(query(conn, "COMMIT")),
          Effect.tapError(() => Effect.catchAll(query(conn, "ROLLBACK"), () => Effect.sync(() => conn.destroy())))
        ),
      (conn) => Effect.sync(() => conn.release())
    )
  return {
    kind: "effect",
    name: "mysql2-effect",
    setup: async (url) => {
      pool = Mysql.createPool({ uri: url, connectionLimit: POOL_SIZE })
      await Effect.runPromise(Effect.flatMap(connection, (conn) => Effect.sync(() => conn.release())))
    },
    transfer: (a, b, amount) =>
      Effect.suspend(() => {
        let attempts = 0
        return unit((conn) =>
          Effect.gen(function* () {
            attempts++
            yield* execute(conn, SELECT_FOR_UPDATE, [a, b])
            yield* execute(conn, DEBIT, [amount, a])
            yield* execute(conn, CREDIT, [amount, b])
            yield* execute(conn, INSERT_TRANSFER, [a, b, amount])
          })
        ).pipe(
          Effect.retry({ times: 20, while: isRetryableError }),
          Effect.map(() => attempts - 1)
        )
      }),
    // every effect of this implementation needs no service
    runPromise: (effect) => Effect.runPromise(effect as Effect.Effect<any, any, never>),
    close: async () => {
      const p = pool
      pool = undefined
      if (p !== undefined) await new Promise<void>((resolve) => p.end(() => resolve()))
    }
  }
}
