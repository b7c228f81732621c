// A first program as a user writes it: plain `node`, ESM, the packages installed from their tarballs with npm.
/* global console, process */
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine, Session, SessionError, SessionLive } from "@sessionfx/session"
import * as EngineModule from "@sessionfx/session/Engine"
import { MysqlCluster, MysqlServer } from "@sessionfx/testing"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"

class Overdrawn extends Data.TaggedError("Overdrawn") {}

const balances = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql`SELECT id, balance FROM accounts ORDER BY id`.pipe(
    Effect.map((rows) => rows.map((row) => `${row.id}:${Number(row.balance)}`).join(" "))
  )
)

const transfer = (from, to, amount) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    yield* sql`UPDATE accounts SET balance = balance - ${amount} WHERE id = ${from}`
    yield* sql`UPDATE accounts SET balance = balance + ${amount} WHERE id = ${to}`
    const [row] = yield* sql`SELECT balance FROM accounts WHERE id = ${from}`
    if (Number(row.balance) < 0) return yield* new Overdrawn()
  })

const main = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  yield* sql`DROP TABLE IF EXISTS accounts` // MYSQL_URL may name a server used before
  yield* sql`CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL)`
  yield* sql`INSERT INTO accounts VALUES (1, 100), (2, 0)`

  // the Layer spelling: one unit of work, committed
  yield* transfer(1, 2, 30).pipe(Effect.provide(SessionLive))
  const committed = yield* balances

  // the combinator: the unit fails with a typed error, everything it wrote is rolled back
  const outcome = yield* Session.transact(transfer(1, 2, 500)).pipe(
    Effect.as("committed"),
    Effect.catchTag("Overdrawn", () => Effect.succeed("Overdrawn, rolled back"))
  )
  const afterRollback = yield* balances

  // a failure of the server, as a typed error of sessionfx
  const duplicate = yield* Session.transact(sql`INSERT INTO accounts VALUES (1, 5)`).pipe(
    Effect.as("inserted"),
    Effect.catchTag("DuplicateKey", (e) => Effect.succeed(`DuplicateKey on ${e.key}, retryable=${e.retryable}`))
  )
  const stats = yield* EngineModule.stats

  const report = { committed, outcome, afterRollback, duplicate, poolSize: stats.size }
  console.log(JSON.stringify(report))
  if (committed !== "1:70 2:30" || afterRollback !== "1:70 2:30" || outcome !== "Overdrawn, rolled back") {
    return yield* Effect.die(new Error(`unexpected balances: ${JSON.stringify(report)}`))
  }
  if (!duplicate.startsWith("DuplicateKey on PRIMARY, retryable=false")) {
    return yield* Effect.die(new Error(`unexpected duplicate-key outcome: ${duplicate}`))
  }
  if (!SessionError.isSessionError(new SessionError.SqlError({ message: "x" }))) {
    return yield* Effect.die(new Error("SqlError of @effect/sql is not recognised: two copies of @effect/sql?"))
  }
})

// the Engine is provided once, at the edge of the program
const EngineLive = MysqlServer.layerEngine({ engine: { pool: { size: 2 } } })

await Effect.runPromise(main.pipe(Effect.provide(EngineLive), Effect.scoped))

// scale-out from the tarball: a primary and a replica (embedded, private), a write, the writer's read on the replica
const replicated = Effect.gen(function* () {
  const { primary, replicas } = yield* MysqlCluster.replicated({ replicas: 1 })
  const read = Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    yield* sql`CREATE TABLE kv (id INT PRIMARY KEY, v INT NOT NULL)`
    yield* Session.transact(sql`INSERT INTO kv VALUES (1, 42)`)
    const token = yield* Session.causalityToken
    const [row, server] = yield* Session.transact(
      Effect.all([
        Effect.map(sql`SELECT v FROM kv WHERE id = 1`, (rows) => rows[0]),
        Effect.map(Session.Session, (s) => s.server)
      ]),
      { readOnly: true }
    )
    const servers = yield* EngineModule.servers
    return {
      v: row?.v,
      token: token._tag === "Some" ? token.value : null,
      readOn: servers.find((s) => s.name === server)?.role
    }
  })
  return yield* Effect.provide(read, Engine.layer({ url: primary.url, replicas: replicas.map((r) => r.url) }))
})
const scaled = await Effect.runPromise(Effect.scoped(replicated))
console.log(JSON.stringify(scaled))
if (scaled.v !== 42 || scaled.readOn !== "replica" || !/^\d+-\d+-\d+$/.test(String(scaled.token))) {
  throw new Error(`unexpected scale-out outcome: ${JSON.stringify(scaled)}`)
}
console.log(`consumer program: ok (Engine ${typeof Engine.layer}, node ${process.version})`)
