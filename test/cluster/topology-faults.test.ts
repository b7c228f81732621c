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
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
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
  }
)
