// The README's ManagedRuntime example as a user runs it: plain `node`, ESM, the packages installed with the README's
// command. The runtime's layer is an Engine on a private test server (the README's is Engine.layerConfig on
// DATABASE_URL); everything from the route to the SIGTERM handler is the README's code.
/* global console, fetch, process, URL */
import * as SqlClient from "@effect/sql/SqlClient"
import { Session } from "@sessionfx/session"
import { MysqlServer } from "@sessionfx/testing"
import { Data, Effect, ManagedRuntime, Schema } from "effect"
import { createServer } from "node:http"

class Overdrawn extends Data.TaggedError("Overdrawn") {}

const transfer = (from, to, amount) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    yield* sql`UPDATE accounts SET balance = balance - ${amount} WHERE id = ${from}`
    yield* sql`UPDATE accounts SET balance = balance + ${amount} WHERE id = ${to}`
    const [row] = yield* sql`SELECT balance FROM accounts WHERE id = ${from}`
    if (row === undefined || Number(row.balance) < 0) return yield* new Overdrawn({ account: from })
  })
const handleWithRetry = (from, to, amount) => Session.transact(transfer(from, to, amount), { retry: true })

const TransferRequest = Schema.Struct({
  from: Schema.NumberFromString.pipe(Schema.int()),
  to: Schema.NumberFromString.pipe(Schema.int()),
  amount: Schema.NumberFromString.pipe(Schema.int(), Schema.positive())
})

const transferRoute = (query) =>
  Schema.decodeUnknown(TransferRequest)(Object.fromEntries(query)).pipe(
    Effect.flatMap(({ from, to, amount }) => handleWithRetry(from, to, amount)),
    Effect.as({ status: 200, body: { ok: true } }),
    Effect.catchTags({
      ParseError: (e) => Effect.succeed({ status: 400, body: { error: e.message } }),
      Overdrawn: (e) => Effect.succeed({ status: 409, body: { error: `account ${e.account} would be overdrawn` } }),
      PoolTimeout: () => Effect.succeed({ status: 503, body: { error: "busy, try again" } })
    }),
    Effect.catchAll((e) => Effect.succeed({ status: 500, body: { error: e._tag } }))
  )

const runtime = ManagedRuntime.make(MysqlServer.layerEngine({ engine: { pool: { size: 4 } } }))

const server = createServer(async (req, res) => {
  const url = new URL(req.url ?? "/", "http://localhost")
  const { status, body } =
    req.method === "POST" && url.pathname === "/transfer"
      ? await runtime
          .runPromise(transferRoute(url.searchParams))
          .catch(() => ({ status: 500, body: { error: "internal error" } }))
      : { status: 404, body: { error: "not found" } }
  res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body))
}).listen(0, "127.0.0.1")

process.on("SIGTERM", () => server.close(() => runtime.dispose()))

// the accounts, then requests as a client sends them
await runtime.runPromise(
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.all([
      sql`DROP TABLE IF EXISTS accounts`,
      sql`CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL)`,
      sql`INSERT INTO accounts VALUES (1, 100), (2, 0)`
    ])
  )
)
await new Promise((resolve) => (server.listening ? resolve() : server.once("listening", resolve)))
const base = `http://127.0.0.1:${server.address().port}`
const post = (query) => fetch(`${base}/transfer?${query}`, { method: "POST" }).then((r) => r.status)
const statuses = {
  ok: await post("from=1&to=2&amount=30"),
  overdrawn: await post("from=1&to=2&amount=500"),
  invalid: await post("from=1&to=2&amount=ten"),
  concurrent: await Promise.all(
    Array.from({ length: 8 }, (_, i) => post(i % 2 === 0 ? "from=1&to=2&amount=1" : "from=2&to=1&amount=1"))
  ),
  notFound: (await fetch(`${base}/elsewhere`)).status
}
const balances = await runtime.runPromise(
  Effect.flatMap(SqlClient.SqlClient, (sql) => sql`SELECT id, balance FROM accounts ORDER BY id`)
)
const report = { ...statuses, balances: balances.map((row) => `${row.id}:${Number(row.balance)}`).join(" ") }
console.log(JSON.stringify(report))

// what the README's SIGTERM handler does: stop accepting, then dispose (drains units in flight, closes the pool)
await new Promise((resolve) => server.close(resolve))
await runtime.dispose()
const expected = { ok: 200, overdrawn: 409, invalid: 400, notFound: 404, balances: "1:70 2:30" }
for (const [key, value] of Object.entries(expected)) {
  if (report[key] !== value) throw new Error(`README ManagedRuntime: ${key} is ${report[key]}, expected ${value}`)
}
if (!report.concurrent.every((status) => status === 200)) throw new Error(`concurrent: ${report.concurrent}`)
console.log("README ManagedRuntime: ok (a response on every path, typed errors as statuses)")
