/**
 * Read replicas with read-your-writes: one Engine on a primary and two replicas. Writes go to the primary; read-only
 * units go to a replica, and a fiber that has just committed reads its own write there (the Engine waits until the
 * replica has applied that commit, or reads the primary). The causality token of a commit is a plain string, so a
 * read elsewhere (another process, a later HTTP request) can ask for it too. Here the servers are embedded MariaDB
 * processes of `@sessionfx/testing`; in an application they are your primary and replica urls.
 *
 *   pnpm --filter @sessionfx/examples examples replicas
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine, Session } from "@sessionfx/session"
import { MysqlCluster } from "@sessionfx/testing"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import type * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"

export const EngineLive = (primary: Redacted.Redacted, replicas: ReadonlyArray<Redacted.Redacted>) =>
  Engine.layer({
    url: primary,
    replicas,
    maxReplicaLag: "5 seconds", // a replica further behind is left out until it catches up
    readYourWritesTimeout: "1 second" // how long a read waits for a replica before it reads the primary
  })

/** A balance, and where it was read. */
const balanceOf = (id: number, options: Session.Options = {}) =>
  Session.transact(
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      const session = yield* Session.Session
      const [row] = yield* sql<{ readonly balance: number }>`SELECT balance FROM wallets WHERE id = ${id}`
      return { balance: Number(row?.balance), server: session.server }
    }),
    { readOnly: true, ...options }
  )

export const program = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  yield* sql`CREATE TABLE IF NOT EXISTS wallets (id INT PRIMARY KEY, balance BIGINT NOT NULL)`
  yield* sql`INSERT INTO wallets VALUES (1, 100) ON DUPLICATE KEY UPDATE balance = 100`

  // a write: on the primary
  yield* Session.transact(sql`UPDATE wallets SET balance = balance + 50 WHERE id = 1`, { retry: true })
  // the same fiber reads its own write, on a replica
  const own = yield* balanceOf(1)

  // the token of that commit, as a string (e.g. an HTTP header), and back: a fiber that did not write can ask for it
  const token = Option.getOrThrow(yield* Session.causalityToken)
  const received = yield* Schema.decodeUnknown(Session.CausalityToken)(String(token))
  const elsewhere = yield* Effect.fork(balanceOf(1, { after: received })).pipe(Effect.flatMap(Fiber.join))

  const servers = yield* Engine.servers
  return {
    primary: servers.find((s) => s.role === "primary")!.name,
    ownRead: own,
    token: String(token),
    readAfterToken: elsewhere,
    replicas: servers
      .filter((s) => s.role === "replica")
      .map((s) => `${s.name} ${s.healthy ? "in rotation" : s.reason}`)
  }
})

/** The example on a private primary and two replicas. */
export const run = Effect.scoped(
  Effect.gen(function* () {
    const { primary, replicas } = yield* MysqlCluster.replicated({ replicas: 2 })
    return yield* Effect.provide(
      program,
      EngineLive(
        primary.url,
        replicas.map((r) => r.url)
      )
    )
  })
)
