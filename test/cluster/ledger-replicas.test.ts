/**
 * The ledger (a real process, apps/ledger) on a primary and 2 replicas: DATABASE_URL = the primary,
 * DATABASE_REPLICA_URLS = the replicas. Balances are read on replicas, after the client's own writes: on one TCP
 * connection a transfer then a balance read never shows the old balance — with both replicas replicating, with one
 * replica's SQL thread stopped, and with both stopped. A second connection (no causality token) shows that the check
 * could fail: right after both SQL threads stop, it reads a stale balance where the first connection does not. And
 * the ledger's /metrics show that the reads were served by the replicas (the routing is not "always the primary").
 */
import { assert, layer } from "@effect/vitest"
import * as MysqlCluster from "@sessionfx/testing/MysqlCluster"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import type { LedgerProcess, LineClient } from "./ledger-support.js"
import { lineClient, promSum, spawnLedger, TOKEN } from "./ledger-support.js"
import { waitUntil } from "./support.js"

/** The `server` label the Engine gives a server in metrics: `host:port/database`. */
const serverLabel = (url: Redacted.Redacted<string>) => {
  const u = new URL(Redacted.value(url))
  return `${u.hostname}:${u.port}${u.pathname}`
}

const balanceOf = (client: LineClient, account: number) =>
  Effect.promise(() => client.call("balance", { account })).pipe(Effect.map((r) => BigInt(r.balance)))

const metrics = (ledger: LedgerProcess) => ledger.httpGet("/metrics")

layer(MysqlCluster.layerReplicated({ replicas: 2 }), { timeout: "240 seconds", excludeTestServices: true })(
  "the ledger on a primary and 2 replicas",
  (it) => {
    it.scoped(
      "one connection: transfer then balance never reads the old balance (replicas healthy, one lagging, both lagging)",
      () =>
        Effect.gen(function* () {
          const { primary, replicas } = yield* MysqlCluster.ReplicatedServers
          const ledger = yield* spawnLedger({
            name: "replicas",
            databaseUrl: Redacted.value(primary.url),
            replicaUrls: replicas.map((r) => Redacted.value(r.url)).join(",")
          })
          yield* ledger.waitAnswering(150_000)
          const writer = yield* lineClient(ledger.tcpPort)
          // another connection: another fiber on the server, so no causality token of the writer's commits
          const other = yield* lineClient(ledger.tcpPort)
          const replicaLabels = replicas.map((r) => serverLabel(r.url))
          const replicaAcquires = (text: string) =>
            replicaLabels.map((server) =>
              promSum(text, "sessionfx_pool_acquire_wait_ms_count", { engine: "ledger", server })
            )
          const healthy = (text: string) =>
            replicaLabels.map((server) => promSum(text, "sessionfx_server_healthy", { engine: "ledger", server }))

          const a = Number((yield* Effect.promise(() => writer.call("create_account", { name: "a" }))).id)
          const b = Number((yield* Effect.promise(() => writer.call("create_account", { name: "b" }))).id)
          yield* Effect.promise(() => writer.call("deposit", { account: a, amount: 1_000_000 }))
          const expected = new Map<number, bigint>([
            [a, 1_000_000n],
            [b, 0n]
          ])
          for (const r of replicas) assert.isTrue(yield* r.waitCaughtUp("20 seconds"))

          const stats = { reads: 0, stale: [] as Array<string>, otherReads: 0, otherStale: 0 }
          /** One transfer on the writer, then the writer reads both balances; `other` reads `b` at the same time. */
          const round = (phase: string, i: number) =>
            Effect.gen(function* () {
              const amount = (i % 7) + 1
              yield* Effect.promise(() => writer.call("transfer", { from: a, to: b, amount }))
              expected.set(a, expected.get(a)! - BigInt(amount))
              expected.set(b, expected.get(b)! + BigInt(amount))
              const [[ownA, ownB], otherB] = yield* Effect.all(
                [Effect.zip(balanceOf(writer, a), balanceOf(writer, b)), balanceOf(other, b)],
                { concurrency: 2 }
              )
              stats.reads += 2
              if (ownA !== expected.get(a)) stats.stale.push(`${phase} #${i}: a ${ownA}, expected ${expected.get(a)}`)
              if (ownB !== expected.get(b)) stats.stale.push(`${phase} #${i}: b ${ownB}, expected ${expected.get(b)}`)
              stats.otherReads++
              if (otherB !== expected.get(b)) stats.otherStale++
            })

          // 1. both replicas replicating: the reads are served by the replicas
          // a read borrows a connection of a replica; it is served there unless its wait for the token timed out
          // (or failed) and it fell back to the primary
          const fallbacksIn = (text: string) => promSum(text, "sessionfx_read_fallbacks_total", { engine: "ledger" })
          const before = yield* metrics(ledger)
          for (let i = 0; i < 150; i++) yield* round("healthy", i)
          const after = yield* metrics(ledger)
          const borrowedOnReplicas = replicaAcquires(after).map((n, k) => n - replicaAcquires(before)[k]!)
          const fellBack = fallbacksIn(after) - fallbacksIn(before)
          const servedByReplicas = borrowedOnReplicas.reduce((x, y) => x + y, 0) - fellBack
          const healthyPhase = { otherStale: stats.otherStale, otherReads: stats.otherReads }

          // 2. replica 1's SQL thread stopped: it lags; the writer's reads still see its transfers
          yield* replicas[0]!.stopSqlThread
          yield* Effect.addFinalizer(() => Effect.ignore(replicas[0]!.startSqlThread))
          for (let i = 0; i < 100; i++) yield* round("replica 1 lagging", i)

          // 3. both SQL threads stopped. Right after the stop (before the Engine's health check, every second,
          // takes the replicas out), a reader without the token reads a replica that has not applied the transfer:
          // stale; the writer's read waits for its token, times out and reads the primary: fresh. A check can land
          // in between, so up to 5 attempts, each from two replicas back in rotation.
          yield* Effect.addFinalizer(() => Effect.ignore(replicas[1]!.startSqlThread))
          let demo: { attempt: number; other: bigint; own: bigint; expected: bigint } | undefined
          for (let attempt = 1; attempt <= 5 && demo === undefined; attempt++) {
            for (const r of replicas) {
              yield* r.startSqlThread
              assert.isTrue(yield* r.waitCaughtUp("20 seconds"))
            }
            yield* waitUntil(
              "both replicas back in rotation",
              Effect.map(metrics(ledger), healthy),
              (h) => h.every((v) => v === 1),
              { timeout: "30 seconds", every: "200 millis" }
            )
            for (const r of replicas) yield* r.stopSqlThread
            const amount = 3
            yield* Effect.promise(() => writer.call("transfer", { from: a, to: b, amount }))
            expected.set(a, expected.get(a)! - BigInt(amount))
            expected.set(b, expected.get(b)! + BigInt(amount))
            const [otherB, ownB] = yield* Effect.all([balanceOf(other, b), balanceOf(writer, b)], { concurrency: 2 })
            stats.reads++
            if (ownB !== expected.get(b)) stats.stale.push(`demo #${attempt}: b ${ownB}, expected ${expected.get(b)}`)
            if (otherB !== expected.get(b)) demo = { attempt, other: otherB, own: ownB, expected: expected.get(b)! }
          }
          // both still stopped: the writer's reads go to the primary once the replicas are out (or wait for them)
          for (let i = 0; i < 50; i++) yield* round("both lagging", i)
          const final = yield* metrics(ledger)
          const fallbacks = fallbacksIn(final)

          console.log(
            `ledger-replicas: ${stats.reads} reads after the connection's own transfer, ${stats.stale.length} stale; ` +
              `while both replicated: ${servedByReplicas} of ${3 * 150} reads served by the replicas ` +
              `(${borrowedOnReplicas.join(" + ")} borrowed a replica's connection, ${fellBack} fell back); ` +
              `another connection (no token) read stale ${healthyPhase.otherStale}/${healthyPhase.otherReads} ` +
              `times while both replicated, ${stats.otherStale}/${stats.otherReads} in all; demonstration: ` +
              (demo === undefined
                ? "no stale read in 5 attempts"
                : `attempt ${demo.attempt}: other connection read ${demo.other}, the writer ${demo.own}, ` +
                  `expected ${demo.expected}`) +
              `; read fallbacks to the primary: ${fallbacks}`
          )
          assert.deepStrictEqual(stats.stale, [], "reads on the writer's connection that missed its own transfer")
          assert.isAtLeast(stats.reads, 200)
          // the routing is not "always the primary": the reads of phase 1 went to both replicas
          for (const n of borrowedOnReplicas) assert.isAtLeast(n, 20, `reads per replica: ${borrowedOnReplicas}`)
          assert.isAtLeast(servedByReplicas, (3 * 150) / 2, "most reads of phase 1 served by a replica")
          // and the check above could fail: without the token, a read right after a write was stale
          assert.isDefined(demo, "a read on another connection, right after both SQL threads stopped, was stale")
          assert.isTrue(demo!.other < demo!.expected, "the stale read shows less than the transfer made")
          assert.strictEqual(demo!.own, demo!.expected)
        }),
      240_000
    )

    it.scoped(
      "HTTP: a response carries the causality token; a read that sends it back sees the write, also with both replicas lagging",
      () =>
        Effect.gen(function* () {
          const { primary, replicas } = yield* MysqlCluster.ReplicatedServers
          const ledger = yield* spawnLedger({
            name: "replicas-http",
            databaseUrl: Redacted.value(primary.url),
            replicaUrls: replicas.map((r) => Redacted.value(r.url)).join(",")
          })
          yield* ledger.waitAnswering(150_000)
          const call = (method: string, path: string, body?: unknown, token?: string) =>
            Effect.promise(async () => {
              const response = await fetch(`http://127.0.0.1:${ledger.httpPort}${path}`, {
                method,
                headers: {
                  authorization: `Bearer ${TOKEN}`,
                  "content-type": "application/json",
                  ...(token !== undefined ? { "x-causality-token": token } : {})
                },
                ...(body !== undefined ? { body: JSON.stringify(body) } : {})
              })
              return {
                status: response.status,
                token: response.headers.get("x-causality-token"),
                body: (await response.json()) as Record<string, any>
              }
            })
          const created = yield* call("POST", "/accounts", { name: "h" })
          assert.strictEqual(created.status, 201, JSON.stringify(created.body))
          const id = Number(created.body.id)
          assert.match(created.token ?? "", /^\d+-\d+-\d+/, "a write's response carries its commit's token")
          // a malformed token is refused with a message that says what to send
          const bad = yield* call("GET", `/accounts/${id}`, undefined, "not-a-token")
          assert.strictEqual(bad.status, 400)
          assert.include(String(bad.body.message), "x-causality-token")

          let stale = 0
          let reads = 0
          let expected = 0
          const round = Effect.gen(function* () {
            const deposit = yield* call("POST", `/accounts/${id}/deposit`, { amount: 5 })
            assert.strictEqual(deposit.status, 200, JSON.stringify(deposit.body))
            expected += 5
            assert.isString(deposit.token)
            const read = yield* call("GET", `/accounts/${id}`, undefined, deposit.token!)
            assert.strictEqual(read.status, 200, JSON.stringify(read.body))
            reads++
            if (Number(read.body.balance) !== expected) stale++
          })
          for (let i = 0; i < 40; i++) yield* round
          for (const r of replicas) yield* r.stopSqlThread
          yield* Effect.addFinalizer(() => Effect.forEach(replicas, (r) => Effect.ignore(r.startSqlThread)))
          for (let i = 0; i < 20; i++) yield* round
          const text = yield* metrics(ledger)
          const waits = promSum(text, "sessionfx_causal_wait_ms_count", { engine: "ledger" })
          console.log(`ledger-replicas over HTTP: ${reads} reads with the token, ${stale} stale; ${waits} causal waits`)
          assert.strictEqual(stale, 0, "a read that sent the token back missed the write")
          assert.isAtLeast(waits, 1, "the token made reads wait on a replica")
        }),
      240_000
    )
  }
)
