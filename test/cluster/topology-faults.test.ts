/**
 * A replica that disappears without closing anything (a black-holed link: no RST, no FIN, packets dropped), between
 * the Engine and one of two replicas (`FaultProxy` in front of it). Reads must carry on on the other replica within a
 * bounded time, nothing may hang, the pools must end whole, and the replica must come back when the link heals.
 */
import { assert, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine, Session } from "@sessionfx/session"
import * as FaultProxy from "@sessionfx/testing/FaultProxy"
import * as MysqlCluster from "@sessionfx/testing/MysqlCluster"
import * as Cause from "effect/Cause"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import { waitUntil } from "./support.js"

layer(MysqlCluster.layerReplicated({ replicas: 2 }), { timeout: "180 seconds", excludeTestServices: true })(
  "Engine topology under network faults",
  (it) => {
    it.scoped(
      "a black-holed replica: reads carry on elsewhere within the control timeout, nothing hangs, it comes back when the link heals",
      () =>
        Effect.gen(function* () {
          const { primary, replicas } = yield* MysqlCluster.ReplicatedServers
          const [holed, other] = replicas
          const proxy = yield* FaultProxy.make({ target: { host: "127.0.0.1", port: holed!.port } })
          const ctx = yield* Layer.build(
            Engine.layer({
              name: "faults",
              url: primary.url,
              replicas: [proxy.urlFor(holed!), other!.url],
              pool: { size: 4 },
              healthCheckInterval: "200 millis",
              killGrace: "500 millis"
            })
          )
          const sql = yield* Effect.provide(SqlClient.SqlClient, ctx)
          yield* Effect.provide(sql`CREATE TABLE IF NOT EXISTS faults (id INT PRIMARY KEY, v INT NOT NULL)`, ctx)
          yield* Effect.provide(sql`INSERT INTO faults VALUES (1, 42)`, ctx)
          for (const r of replicas) assert.isTrue(yield* r.waitCaughtUp("20 seconds"))
          const read = Session.transact(
            Effect.gen(function* () {
              const session = yield* Session.Session
              const [row] = yield* sql<{ readonly v: number }>`SELECT v FROM faults WHERE id = 1`
              return { server: session.server, v: Number(row?.v) }
            }),
            { readOnly: true, retry: true }
          ).pipe(Effect.provide(ctx))
          const proxied = (yield* Effect.provide(Engine.servers, ctx)).find(
            (s) => s.role === "replica" && s.name.includes(`:${proxy.port}/`)
          )
          assert.isDefined(proxied, "the proxied replica is one of the servers")
          // both replicas serve reads while the link is fine
          const seen = new Set<string>()
          for (let i = 0; i < 20; i++) seen.add((yield* read).server)
          assert.isTrue(seen.has(proxied!.name), `reads reach the proxied replica: ${[...seen].join(", ")}`)

          yield* proxy.blackhole(true)
          // 12 concurrent reads, some of them on connections to the black-holed replica
          const [took, results] = yield* Effect.timed(
            Effect.all(
              Array.from({ length: 12 }, () => read),
              { concurrency: 12 }
            )
          )
          console.log(`topology faults: 12 reads across a black-holed replica took ${Duration.toMillis(took)} ms`)
          assert.isTrue(
            results.every((r) => r.v === 42),
            JSON.stringify(results)
          )
          assert.isBelow(Duration.toMillis(took), 9_000, "bounded by the control timeout (5 s) and a retry, not a hang")
          const status = (yield* Effect.provide(Engine.servers, ctx)).find((s) => s.name === proxied!.name)!
          assert.isFalse(status.healthy, "the black-holed replica is out of rotation")
          assert.isString(status.reason)
          // while it is out, reads go elsewhere at once
          const [quick, again] = yield* Effect.timed(Effect.all(Array.from({ length: 10 }, () => read)))
          assert.isTrue(again.every((r) => r.server !== proxied!.name && r.v === 42))
          assert.isBelow(Duration.toMillis(quick), 5_000)

          yield* proxy.blackhole(false)
          yield* waitUntil(
            "the replica back in rotation",
            Effect.provide(Engine.servers, ctx),
            (ss) => ss.every((s) => s.healthy),
            { timeout: "30 seconds" }
          )
          const back = new Set<string>()
          for (let i = 0; i < 20; i++) back.add((yield* read).server)
          assert.isTrue(back.has(proxied!.name), "reads reach it again")
          const pools = yield* Effect.provide(Engine.servers, ctx)
          assert.isTrue(
            pools.every((s) => s.stats.inUse === 0 && s.stats.waiting === 0),
            JSON.stringify(pools.map((s) => s.stats))
          )
        })
    )

    it.scoped(
      "a read-only unit interrupted while its COMMIT is in flight on a replica: the replica's pool gets its slot back, no other pool's count moves",
      () =>
        Effect.gen(function* () {
          const { primary, replicas } = yield* MysqlCluster.ReplicatedServers
          const proxy = yield* FaultProxy.make({ target: { host: "127.0.0.1", port: replicas[0]!.port } })
          // only the proxied replica: every read-only unit runs there
          const ctx = yield* Layer.build(
            Engine.layer({
              name: "commit-faults",
              url: primary.url,
              replicas: [proxy.urlFor(replicas[0]!)],
              pool: { size: 2 }
            })
          )
          const sql = yield* Effect.provide(SqlClient.SqlClient, ctx)
          const servers = Effect.provide(Engine.servers, ctx)
          yield* proxy.resetNextAfter({ match: (chunk) => chunk.includes("COMMIT"), action: "blackhole" })
          const started = yield* Deferred.make<void>()
          const unit = yield* Effect.fork(
            Session.transact(Effect.zipRight(sql`SELECT 1 AS one`, Deferred.succeed(started, undefined)), {
              readOnly: true
            }).pipe(Effect.provide(ctx))
          )
          yield* Deferred.await(started)
          // the COMMIT is black-holed: wait until it is in flight (the trigger fired), then interrupt
          yield* waitUntil("the COMMIT reached the proxy", proxy.armed, (armed) => !armed)
          yield* Fiber.interrupt(unit)
          const after = yield* servers
          for (const s of after) {
            assert.isAtLeast(s.stats.inUse, 0, `no negative count: ${JSON.stringify(after.map((x) => x.stats))}`)
            assert.strictEqual(
              s.stats.inUse,
              0,
              `every slot back: ${JSON.stringify(after.map((x) => [x.name, x.stats]))}`
            )
          }
          // and both pools still serve
          const r = yield* Session.transact(sql`SELECT 2 AS two`, { readOnly: true }).pipe(Effect.provide(ctx))
          assert.strictEqual(Number(r[0]?.two), 2)
          yield* Effect.provide(sql`SELECT 3`, ctx)
        })
    )

    it.scoped(
      "an autocommit write through any statement form (helpers, unsafe, reserve) yields a causality token",
      () =>
        Effect.gen(function* () {
          const { primary, replicas } = yield* MysqlCluster.ReplicatedServers
          const ctx = yield* Layer.build(
            Engine.layer({ name: "autocommit-tokens", url: primary.url, replicas: replicas.map((r) => r.url) })
          )
          const sql = yield* Effect.provide(SqlClient.SqlClient, ctx)
          yield* Effect.provide(sql`CREATE TABLE IF NOT EXISTS tokens (id INT PRIMARY KEY, v INT NOT NULL)`, ctx)
          yield* Effect.provide(sql`INSERT INTO tokens VALUES (1, 0) ON DUPLICATE KEY UPDATE v = 0`, ctx)
          const forms: ReadonlyArray<readonly [string, Effect.Effect<unknown, unknown, never>]> = [
            ["sql.update helper", sql`UPDATE tokens SET ${sql.update({ v: 1 })} WHERE id = 1`],
            ["sql.unsafe", sql.unsafe("UPDATE tokens SET v = ? WHERE id = 1", [2])],
            ["sql.in fragment", sql`UPDATE tokens SET v = 3 WHERE id IN ${sql.in([1])}`],
            [
              "sql.reserve",
              Effect.scoped(
                Effect.flatMap(sql.reserve, (conn) =>
                  conn.execute("UPDATE tokens SET v = 4 WHERE id = 1", [], undefined)
                )
              )
            ]
          ]
          let expected = 0
          for (const [form, write] of forms) {
            const [before, after] = yield* Effect.gen(function* () {
              const before = yield* Session.causalityToken
              yield* write
              return [before, yield* Session.causalityToken] as const
            }).pipe(Effect.provide(ctx))
            expected++
            assert.isTrue(Option.isSome(after), `${form}: the write yields a token`)
            assert.notDeepEqual(after, before, `${form}: the token moved on with the write`)
          }
          assert.strictEqual(expected, forms.length)
        })
    )

    it.scoped("a replica that loses a connection under a stream inside a unit is taken out (not the primary)", () =>
      Effect.gen(function* () {
        const { primary, replicas } = yield* MysqlCluster.ReplicatedServers
        const proxy = yield* FaultProxy.make({ target: { host: "127.0.0.1", port: replicas[0]!.port } })
        const ctx = yield* Layer.build(
          Engine.layer({
            name: "stream-faults",
            url: primary.url,
            replicas: [proxy.urlFor(replicas[0]!), replicas[1]!.url],
            healthCheckInterval: "1 minute"
          })
        )
        const sql = yield* Effect.provide(SqlClient.SqlClient, ctx)
        const servers = Effect.provide(Engine.servers, ctx)
        const proxied = (yield* servers).find((s) => s.name.includes(`:${proxy.port}/`))!
        // until a unit lands on the proxied replica: a stream there, reset mid-stream
        let found = false
        for (let i = 0; i < 20 && !found; i++) {
          const exit = yield* Effect.exit(
            Session.transact(
              Effect.gen(function* () {
                const session = yield* Session.Session
                if (session.server !== proxied.name) return "elsewhere"
                found = true
                // the connection is reset while the stream reads its rows
                return yield* sql<{ readonly seq: number }>`SELECT seq FROM seq_1_to_1000000`.stream.pipe(
                  Stream.tap((row) => (Number(row.seq) === 1000 ? proxy.resetAll : Effect.void)),
                  Stream.runDrain
                )
              }),
              { readOnly: true }
            ).pipe(Effect.provide(ctx))
          )
          if (found) assert.isTrue(Exit.isFailure(exit), "the stream lost its connection")
        }
        assert.isTrue(found, "a unit ran on the proxied replica")
        const after = yield* servers
        const status = after.find((s) => s.name === proxied.name)!
        assert.isFalse(status.healthy, `the proxied replica is out: ${JSON.stringify(after)}`)
        assert.isTrue(
          after.filter((s) => s.name !== proxied.name).every((s) => s.healthy),
          `no other server is blamed: ${JSON.stringify(after)}`
        )
      })
    )

    it.scoped(
      "a hostile token never becomes SQL: useCausalityToken refuses it as a defect, after as InvalidOption",
      () =>
        Effect.gen(function* () {
          const { primary, replicas } = yield* MysqlCluster.ReplicatedServers
          const ctx = yield* Layer.build(
            Engine.layer({ name: "hostile-tokens", url: primary.url, replicas: replicas.map((r) => r.url) })
          )
          const sql = yield* Effect.provide(SqlClient.SqlClient, ctx)
          const read = (options: Session.Options) =>
            Session.transact(sql`SELECT 1 AS one`, { readOnly: true, ...options }).pipe(Effect.provide(ctx))
          const hostile = [
            "0-1-1', 0) AS applied, (SELECT SLEEP(5)) AS x -- ",
            "0-1-1'); DROP TABLE kv; --",
            "0-1-1\\' OR 1=1",
            "",
            "1-1-1,",
            "0-1-1 "
          ]
          for (const token of hostile) {
            const used = yield* Effect.exit(
              Session.useCausalityToken(token as Session.CausalityToken).pipe(Effect.provide(ctx))
            )
            assert.isTrue(
              Exit.isFailure(used) && Cause.isDie(used.cause),
              `useCausalityToken(${JSON.stringify(token)}) dies`
            )
            assert.isTrue(Option.isNone(yield* Effect.provide(Session.causalityToken, ctx)), "nothing was kept")
            const refused = yield* Effect.flip(read({ after: token as Session.CausalityToken }))
            assert.strictEqual(refused._tag, "InvalidOption", JSON.stringify(token))
          }
          // a well-formed token this topology never produced: bound as a value, waited for on a replica, then
          // refused — the primary does not have it either, so a read there would silently not see what was asked
          const [took, unknown] = yield* Effect.timed(
            Effect.flip(read({ after: "0-1-99999999999" as Session.CausalityToken }))
          )
          assert.strictEqual(unknown._tag, "InvalidOption")
          assert.include(unknown.message, "never produced")
          assert.isBelow(Duration.toMillis(took), 5_000)
          // a token the primary did produce still reads (on a replica once it has it, else on the primary)
          yield* Effect.provide(sql`CREATE TABLE IF NOT EXISTS produced (id INT PRIMARY KEY)`, ctx)
          const produced = yield* Effect.provide(
            Effect.flatMap(Session.transact(sql`INSERT INTO produced VALUES (1)`), () => Session.causalityToken),
            ctx
          )
          assert.isTrue(Option.isSome(produced), "a commit gives the fiber a token")
          const rows = yield* read({ after: Option.getOrThrow(produced) })
          assert.strictEqual(Number(rows[0]?.one), 1)
        })
    )
  }
)
