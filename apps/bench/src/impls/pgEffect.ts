/**
 * The floor of an Effect implementation on PostgreSQL, as `mysql2-effect` is on MariaDB: hand-written `pg` inside
 * Effect — one `Effect.async` per driver call, `Effect.acquireUseRelease` around the pooled client, `Effect.gen` for
 * the unit's statements, BEGIN / named statements / COMMIT, ROLLBACK on error — and none of sessionfx's guarantees.
 */
import * as Effect from "effect/Effect"
import * as Pg from "pg"
import { isRetryableError } from "../workload.js"
import type { Impl } from "./Impl.js"
import { POOL_SIZE } from "./Impl.js"
import { credit, debit, insertTransfer, selectForUpdate } from "./pgStatements.js"

const query = (client: Pg.PoolClient, config: string | Pg.QueryConfig<Array<number>>) =>
  Effect.async<unknown, unknown>((resume) => {
    client.query(config, (err: Error | null, result: Pg.QueryResult) =>
      resume(err ? Effect.fail(err) : Effect.succeed(result))
    )
  })

export const pgEffect = (): Impl => {
  let pool: Pg.Pool | undefined
  const connection = Effect.async<Pg.PoolClient, unknown>((resume) => {
    pool!.connect((err, client) => resume(err || client === undefined ? Effect.fail(err) : Effect.succeed(client)))
  })
  const unit = <A>(body: (client: Pg.PoolClient) => Effect.Effect<A, unknown>): Effect.Effect<A, unknown> =>
    Effect.acquireUseRelease(
      Effect.map(connection, (client) => ({ client, broken: false })),
      (held) =>
        query(held.client, "BEGIN").pipe(
          Effect.zipRight(body(held.client)),
          Effect.zipLeft(query(held.client, "COMMIT")),
          Effect.tapError(() =>
            Effect.catchAll(query(held.client, "ROLLBACK"), () => Effect.sync(() => (held.broken = true)))
          )
        ),
      (held) => Effect.sync(() => held.client.release(held.broken))
    )
  return {
    kind: "effect",
    name: "pg-effect",
    setup: async (url) => {
      pool = new Pg.Pool({ connectionString: url, max: POOL_SIZE })
      await pool.query("SELECT 1")
    },
    transfer: (a, b, amount) =>
      Effect.suspend(() => {
        let attempts = 0
        return unit((client) =>
          Effect.gen(function* () {
            attempts++
            yield* query(client, selectForUpdate([a, b]))
            yield* query(client, debit([amount, a]))
            yield* query(client, credit([amount, b]))
            yield* query(client, insertTransfer([a, b, amount]))
          })
        ).pipe(
          Effect.retry({ times: 20, while: isRetryableError }),
          Effect.map(() => attempts - 1)
        )
      }),
    // every effect of this implementation needs no service
    runPromise: (effect) => Effect.runPromise(effect as Effect.Effect<any, any, never>),
    close: async () => {
      await pool?.end()
      pool = undefined
    }
  }
}
