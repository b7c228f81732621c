import { assert, layer } from "@effect/vitest"
import { Engine, Session } from "@sessionfx/session"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Scope from "effect/Scope"
import * as Client from "../src/Client.js"
import * as Demo from "../src/Demo.js"
import { dialects, mariadb, TestDb } from "./dialects.js"
import { countTransfers, startApp, sumBalances, TOKEN, until } from "./utils.js"

const fund = (client: Client.LineClient, n: number, amount: number) =>
  Effect.gen(function* () {
    const created = yield* client.call("batch", {
      ops: Array.from({ length: n }, (_, i) => ({ op: "create_account", name: `t${i}` }))
    })
    const ids: Array<number> = created.results.map((a: { id: number }) => a.id)
    yield* client.call("batch", { ops: ids.map((account) => ({ op: "deposit", account, amount })) })
    return ids
  })

/** How many statements of other connections that contain `marker` the database is running now (waits included). */
const running = (app: Effect.Effect.Success<ReturnType<typeof startApp>>, marker: string) =>
  Effect.map(
    app.sql.onDialectOrElse({
      pg: () => app.sql<{ n: string }>`
        SELECT COUNT(*) AS n FROM pg_stat_activity
        WHERE state = 'active' AND query LIKE ${`%${marker}%`} AND pid <> pg_backend_pid()`,
      orElse: () => app.sql<{ n: string }>`
        SELECT COUNT(*) AS n FROM information_schema.processlist
        WHERE info LIKE ${`%${marker}%`} AND id <> CONNECTION_ID()`
    }),
    (rows) => Number(rows[0]!.n)
  ).pipe(Effect.orDie)

// the ledger's behaviour, on both databases
for (const [name, db] of dialects) {
  layer(db, { timeout: 120_000, excludeTestServices: true })(`ledger over TCP (${name})`, (it) => {
    it.scoped("every operation", () =>
      Effect.gen(function* () {
        const app = yield* startApp()
        const c = yield* app.connect()
        const a = yield* c.call("create_account", { name: "alice" })
        const b = yield* c.call("create_account", { name: "bob" })
        assert.deepStrictEqual(a, { id: a.id, name: "alice", balance: 0 })
        const dep = yield* c.call("deposit", { account: a.id, amount: 1000 })
        assert.deepStrictEqual(dep, {
          id: dep.id,
          kind: "deposit",
          from: null,
          to: a.id,
          amount: 1000,
          idempotencyKey: null
        })
        const wd = yield* c.call("withdraw", { account: a.id, amount: 100 })
        assert.strictEqual(wd.kind, "withdrawal")
        const tr = yield* c.call("transfer", { from: a.id, to: b.id, amount: 250 })
        assert.strictEqual(tr.kind, "transfer")
        assert.strictEqual((yield* c.call("balance", { account: a.id })).balance, 650)
        assert.strictEqual((yield* c.call("balance", { account: b.id })).balance, 250)
        const page1 = yield* c.call("history", { account: a.id, limit: 2 })
        assert.deepStrictEqual(
          page1.items.map((t: { id: number }) => t.id),
          [tr.id, wd.id]
        )
        assert.strictEqual(page1.next, wd.id)
        const page2 = yield* c.call("history", { account: a.id, limit: 2, before: page1.next })
        assert.deepStrictEqual(
          page2.items.map((t: { id: number }) => t.id),
          [dep.id]
        )
        assert.strictEqual(page2.next, null)
        const batch = yield* c.call("batch", {
          ops: [
            { op: "deposit", account: b.id, amount: 5 },
            { op: "transfer", from: b.id, to: a.id, amount: 255 },
            { op: "balance", account: b.id }
          ]
        })
        assert.strictEqual(batch.results.length, 3)
        assert.strictEqual(batch.results[2].balance, 0)
      })
    )

    it.scoped("domain errors and bad input get a clear error and never disturb the connection or others", () =>
      Effect.gen(function* () {
        const app = yield* startApp({ maxLineBytes: 1024 })
        const c = yield* app.connect()
        const other = yield* app.connect()
        const [a, b] = yield* fund(c, 2, 100)
        const code = (r: Client.Response) => r.error?.code
        const err = (raw: string) => Effect.zipRight(c.send(raw), c.next)
        let r = yield* err("{not json\n")
        assert.deepStrictEqual([r.id, r.ok, code(r)], [null, false, "invalid_request"])
        r = yield* err(JSON.stringify([1, 2]) + "\n")
        assert.strictEqual(code(r), "invalid_request")
        r = yield* c.request({ id: "u", op: "launch_rockets" })
        assert.deepStrictEqual([r.id, code(r)], ["u", "unknown_operation"])
        r = yield* c.request({ id: 7, op: "deposit", account: "one", amount: 1.5 })
        assert.deepStrictEqual([r.id, code(r)], [7, "invalid_request"])
        assert.match(r.error!.message, /account/)
        r = yield* c.request({ id: 8, op: "transfer", from: a, to: a, amount: 1 })
        assert.strictEqual(code(r), "invalid_request")
        r = yield* c.request({ id: 9, op: "deposit", account: a, amount: -5 })
        assert.strictEqual(code(r), "invalid_request")
        r = yield* c.request({ id: 10, op: "withdraw", account: a, amount: 101 })
        assert.deepStrictEqual([code(r), r.error!.balance, r.error!.amount], ["insufficient_funds", 100, 101])
        r = yield* c.request({ id: 11, op: "balance", account: 987654321 })
        assert.deepStrictEqual([code(r), r.error!.account], ["account_not_found", 987654321])
        r = yield* c.request({ id: 12, op: "transfer", from: a, to: 987654321, amount: 1 })
        assert.strictEqual(code(r), "account_not_found")
        r = yield* err(`{"id":1,"op":"balance","pad":"${"x".repeat(5000)}"}\n`)
        assert.deepStrictEqual([code(r), r.error!.limit], ["line_too_long", 1024])
        // still usable, and no message reveals SQL or internals
        assert.strictEqual((yield* c.call("balance", { account: b })).balance, 100)
        assert.strictEqual((yield* other.call("balance", { account: a })).balance, 100)
        assert.notMatch(JSON.stringify(r), /SELECT|INSERT|at .*\.ts/)
      })
    )

    it.scoped("pipelined requests are answered in order with their ids", () =>
      Effect.gen(function* () {
        const app = yield* startApp()
        const c = yield* app.connect()
        const [a, b] = yield* fund(c, 2, 1000)
        const requests = Array.from({ length: 60 }, (_, i) =>
          i % 10 === 3
            ? { id: `r${i}`, op: "withdraw", account: a, amount: 1_000_000 }
            : i % 2 === 0
              ? { id: `r${i}`, op: "transfer", from: a, to: b, amount: 1 }
              : { id: `r${i}`, op: "balance", account: b }
        )
        yield* c.send(requests.map((r) => JSON.stringify(r) + "\n").join(""))
        const responses = yield* Effect.forEach(requests, () => c.next)
        assert.deepStrictEqual(
          responses.map((r) => r.id),
          requests.map((r) => r.id)
        )
        responses.forEach((r, i) => {
          if (i % 10 === 3) assert.strictEqual(r.error?.code, "insufficient_funds")
          else if (i % 2 === 0) assert.isTrue(r.ok)
          // each balance reflects exactly the transfers before it
          else assert.strictEqual(r.result.balance, 1000 + (i + 1) / 2)
        })
        assert.strictEqual((yield* c.call("balance", { account: a })).balance, 1000 - 30)
      })
    )

    it.scoped("idempotency key: a retried request returns the original result", () =>
      Effect.gen(function* () {
        const app = yield* startApp()
        const c = yield* app.connect()
        const d = yield* app.connect()
        const [a, b] = yield* fund(c, 2, 1000)
        const req = { from: a, to: b, amount: 300, idempotencyKey: `k-${a}` }
        const first = yield* c.call("transfer", req)
        const again = yield* d.call("transfer", req)
        assert.deepStrictEqual(again, first)
        assert.strictEqual((yield* c.call("balance", { account: a })).balance, 700)
        const conflict = yield* c.request({ id: 1, op: "transfer", ...req, amount: 301 })
        assert.strictEqual(conflict.error?.code, "idempotency_conflict")
        // the same key sent at once on two connections still moves the money once
        const key = { from: b, to: a, amount: 50, idempotencyKey: `k2-${a}` }
        const [x, y] = yield* Effect.all([c.call("transfer", key), d.call("transfer", key)], { concurrency: 2 })
        assert.strictEqual(x.id, y.id)
        assert.strictEqual((yield* c.call("balance", { account: a })).balance, 750)
        assert.strictEqual(yield* countTransfers(app.sql, [a, b]), 4)
      })
    )

    it.scoped(
      "a key inserted meanwhile by another transaction: the INSERT's DuplicateKey is idempotency_conflict",
      () =>
        Effect.gen(function* () {
          const app = yield* startApp()
          const c = yield* app.connect()
          const [a, b] = yield* fund(c, 2, 100)
          const key = `raced-${a}`
          // another writer holds an uncommitted transfer with the key: the ledger's lookup does not see it, its INSERT
          // waits on the unique index and fails with the database's duplicate key error once the other commits
          const { url } = yield* TestDb
          const inserted = yield* Deferred.make<void>()
          const release = yield* Deferred.make<void>()
          const holder = yield* Session.transact(
            Effect.gen(function* () {
              const sql = (yield* Engine.Engine).sql
              yield* sql`INSERT INTO transfers (src, dst, amount, idempotency_key)
              VALUES (${null}, ${a}, ${5n}, ${Buffer.from(key, "utf8")})`
              yield* sql`UPDATE accounts SET balance = balance + ${5n} WHERE id = ${a}`
              yield* Deferred.succeed(inserted, undefined)
              yield* Deferred.await(release)
            })
          ).pipe(Effect.provide(Engine.layer({ url, pool: { size: 1 } })), Effect.fork)
          yield* Deferred.await(inserted)
          const raced = yield* Effect.fork(
            c.request({ id: "raced", op: "deposit", account: b, amount: 7, idempotencyKey: key })
          )
          yield* until(Effect.map(running(app, "INSERT INTO transfers"), (n) => n > 0))
          yield* Deferred.succeed(release, undefined)
          yield* Fiber.join(holder)
          const r = yield* Fiber.join(raced)
          assert.deepStrictEqual([r.id, r.error?.code], ["raced", "idempotency_conflict"])
          // nothing of the refused deposit was kept; the key still answers the other writer's transfer
          assert.strictEqual((yield* c.call("balance", { account: b })).balance, 100)
          assert.strictEqual((yield* c.call("balance", { account: a })).balance, 105)
          const replay = yield* c.call("deposit", { account: a, amount: 5, idempotencyKey: key })
          assert.deepStrictEqual([replay.kind, replay.to, replay.amount, replay.idempotencyKey], ["deposit", a, 5, key])
          assert.strictEqual(yield* countTransfers(app.sql, [a, b]), 3)
        })
    )

    it.scoped("batch is all or nothing", () =>
      Effect.gen(function* () {
        const app = yield* startApp()
        const c = yield* app.connect()
        const [a, b] = yield* fund(c, 2, 100)
        const before = yield* countTransfers(app.sql, [a, b])
        const r = yield* c.request({
          id: "batch",
          op: "batch",
          ops: [
            { op: "create_account", name: "ghost" },
            { op: "deposit", account: a, amount: 1000 },
            { op: "transfer", from: a, to: b, amount: 500 },
            { op: "withdraw", account: b, amount: 10_000 }
          ]
        })
        assert.deepStrictEqual([r.id, r.error?.code], ["batch", "insufficient_funds"])
        assert.strictEqual((yield* c.call("balance", { account: a })).balance, 100)
        assert.strictEqual((yield* c.call("balance", { account: b })).balance, 100)
        assert.strictEqual(yield* countTransfers(app.sql, [a, b]), before)
        const ghosts = yield* app.sql<{ n: number }>`SELECT COUNT(*) AS n FROM accounts WHERE name = 'ghost'`
        assert.strictEqual(Number(ghosts[0]!.n), 0)
      })
    )

    it.scoped("concurrent transfers over many connections conserve the total", () =>
      Effect.gen(function* () {
        const app = yield* startApp({ poolSize: 8 })
        const admin = yield* app.connect()
        const ids = yield* fund(admin, 6, 1000)
        const clients = yield* Effect.forEach(Array.from({ length: 8 }), () => app.connect(), { concurrency: 8 })
        let seed = 7
        const next = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648
        const results = yield* Effect.forEach(
          clients,
          (client) =>
            Effect.forEach(Array.from({ length: 20 }), () => {
              const from = ids[Math.floor(next() * ids.length)]!
              const to = ids[(ids.indexOf(from) + 1 + Math.floor(next() * (ids.length - 1))) % ids.length]!
              return client.request({ id: 0, op: "transfer", from, to, amount: 1 + Math.floor(next() * 400) })
            }),
          { concurrency: "unbounded" }
        )
        const flat = results.flat()
        const ok = flat.filter((r) => r.ok).length
        assert.isTrue(flat.every((r) => r.ok || r.error?.code === "insufficient_funds"))
        assert.strictEqual(yield* sumBalances(app.sql, ids), 6000)
        assert.strictEqual(yield* countTransfers(app.sql, ids), 6 + ok)
        const negative = yield* app.sql<{ n: number }>`SELECT COUNT(*) AS n FROM accounts WHERE balance < 0`
        assert.strictEqual(Number(negative[0]!.n), 0)
      })
    )

    it.scoped("graceful shutdown with requests in flight: none lost, none half-applied", () =>
      Effect.gen(function* () {
        const observer = yield* startApp()
        const admin = yield* observer.connect()
        const ids = yield* fund(admin, 4, 1000)
        const scope = yield* Scope.make()
        const app = yield* startApp({ shutdownTimeout: "20 seconds" }).pipe(Scope.extend(scope))
        const clients = yield* Effect.forEach(Array.from({ length: 6 }), () => app.connect(), { concurrency: 6 })
        const firstAnswer = yield* Deferred.make<void>()
        const perClient = 40
        const collectors = yield* Effect.forEach(
          clients,
          (client, n) =>
            Effect.gen(function* () {
              const lines = Array.from({ length: perClient }, (_, i) => {
                const from = ids[(n + i) % ids.length]!
                const to = ids[(n + i + 1) % ids.length]!
                return JSON.stringify({ id: i, op: "transfer", from, to, amount: 1 + ((n * 7 + i) % 50) }) + "\n"
              })
              yield* client.send(lines.join(""))
              const got: Array<Client.Response> = []
              while (true) {
                const r = yield* Effect.either(client.next)
                if (r._tag === "Left") break
                got.push(r.right)
                yield* Deferred.succeed(firstAnswer, undefined)
              }
              return got
            }).pipe(Effect.fork),
          { concurrency: "unbounded" }
        )
        yield* Deferred.await(firstAnswer)
        yield* Scope.close(scope, Exit.void)
        const answers = yield* Fiber.join(Fiber.all(collectors))
        const all = answers.flat()
        answers.forEach((got) => {
          // answered in order, each either run or refused as not run
          assert.deepStrictEqual(
            got.map((r) => r.id),
            got.map((_, i) => i)
          )
        })
        assert.isTrue(
          all.every((r) => r.ok || r.error?.code === "shutting_down" || r.error?.code === "insufficient_funds")
        )
        const committed = all.filter((r) => r.ok).length
        assert.isAbove(committed, 0)
        assert.strictEqual(yield* countTransfers(observer.sql, ids), 4 + committed)
        assert.strictEqual(yield* sumBalances(observer.sql, ids), 4000)
        // the server is gone: a new connection is refused
        const refused = yield* Effect.either(app.connect())
        assert.strictEqual(refused._tag, "Left")
      })
    )

    it.scoped("the demo client sets up more accounts than one batch holds, against any ledger address", () =>
      Effect.gen(function* () {
        const app = yield* startApp()
        const report = yield* Demo.run({
          host: app.tcp.host,
          port: app.tcp.port,
          token: TOKEN,
          connections: 4,
          transfers: 200,
          accounts: 101,
          seed: 7,
          quiet: true
        })
        assert.deepStrictEqual([report.requests, report.errors, report.conserved], [200, 0, true])
        assert.strictEqual(report.before, 101n * 10_000n)
        const names = yield* app.sql<{
          n: number | string
        }>`SELECT COUNT(*) AS n FROM accounts WHERE name LIKE 'demo-%'`
        assert.isAtLeast(Number(names[0]!.n), 101)
      })
    )
  })
}

// the transport alone: no database behaviour in it
layer(mariadb, { timeout: 120_000, excludeTestServices: true })("ledger TCP line protocol", (it) => {
  it.scoped("authentication: no token, no data", () =>
    Effect.gen(function* () {
      const app = yield* startApp()
      const anon = yield* app.connect(null)
      let r = yield* anon.request({ id: 1, op: "balance", account: 1 })
      assert.deepStrictEqual([r.ok, r.error?.code], [false, "unauthorized"])
      yield* anon.closed
      const wrong = yield* app.connect(null)
      r = yield* wrong.request({ id: 1, op: "auth", token: "nope" })
      assert.strictEqual(r.error?.code, "unauthorized")
      yield* wrong.closed
      const right = yield* app.connect(null)
      r = yield* right.request({ id: "a", op: "auth", token: TOKEN })
      assert.deepStrictEqual(r, { id: "a", ok: true, result: { authenticated: true } })
    })
  )

  it.scoped("connection limit and idle timeout", () =>
    Effect.gen(function* () {
      const app = yield* startApp({ maxConnections: 2, idleTimeout: "400 millis" })
      const first = yield* app.connect()
      yield* app.connect()
      // the limit counts authenticated connections: the third is refused once it authenticates
      const third = yield* app.connect(null)
      const refused = yield* third.request({ op: "auth", token: TOKEN })
      assert.strictEqual(refused.error?.code, "too_many_connections")
      yield* third.closed
      // the first connection goes quiet: it is told and closed, then a new one is accepted
      const idle = yield* first.next
      assert.strictEqual(idle.error?.code, "idle_timeout")
      yield* first.closed
      const again = yield* Effect.eventually(app.connect())
      assert.strictEqual((yield* again.call("create_account", { name: "x" })).balance, 0)
    })
  )

  it.scoped("a burst of lines that need no database is answered and reading goes on", () =>
    Effect.gen(function* () {
      const app = yield* startApp()
      const c = yield* app.connect()
      // far more lines than the read-ahead mark, all answered without the database
      yield* c.send(Array.from({ length: 300 }, (_, i) => JSON.stringify({ id: i, op: "nope" }) + "\n").join(""))
      const answers = yield* Effect.forEach(Array.from({ length: 300 }), () => c.next)
      assert.deepStrictEqual(
        answers.map((r) => [r.id, r.error?.code]),
        answers.map((_, i) => [i, "unknown_operation"])
      )
      // and the connection still reads what comes next
      assert.strictEqual((yield* c.call("create_account", { name: "after-burst" })).balance, 0)
    })
  )
})
