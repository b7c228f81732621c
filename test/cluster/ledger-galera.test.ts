/**
 * Three ledger processes (apps/ledger) against a 3-node Galera cluster, each preferring a different node
 * (DATABASE_URL = its node first, then the two others), under concurrent transfers from several TCP clients per
 * ledger; mid-run node 2 is killed and restarted. Every transfer has a unique idempotency key, and a client that gets
 * `outcome_unknown` / `unavailable` (or loses its connection) sends the same request again, as the protocol says.
 * Then: every acknowledged transfer is in the database with its key and amount, exactly once; no key twice; the total
 * is conserved (and every balance equals its deposits and transfers); all three nodes agree; and the clients of the
 * killed node's ledger got acknowledgements while it was down.
 */
import { assert, layer } from "@effect/vitest"
import * as MysqlCluster from "@sessionfx/testing/MysqlCluster"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Redacted from "effect/Redacted"
import type * as Mysql from "mysql2/promise"
import type { LedgerProcess } from "./ledger-support.js"
import { Closed, LineClient, sleep, spawnLedger } from "./ledger-support.js"
import { connect, query, rows } from "./support.js"

const LEDGERS = 3
const CLIENTS_PER_LEDGER = 3
const ACCOUNTS = 16
const FUNDING = 1_000_000
/** Transfers run this long before the kill, with the node down, and after it is back. */
const BEFORE_KILL_MS = 5_000
const DOWN_MS = 8_000
const AFTER_RESTART_MS = 5_000
/** Responses after which a client sends the same request (same idempotency key) again. */
const RETRYABLE = new Set(["outcome_unknown", "unavailable"])

interface Ack {
  readonly key: string
  readonly ledger: number
  readonly id: number
  readonly from: number
  readonly to: number
  readonly amount: number
  readonly at: number
  readonly attempts: number
}

interface Stats {
  readonly acks: Array<Ack>
  /** Requests sent again with the same key, by reason (an error code, or `connection` for a lost connection). */
  readonly retries: Record<string, number>
  /** Responses that were neither ok nor retryable, or keys given up after the deadline. */
  readonly failures: Array<string>
  /** An ok response whose transfer is not the request (wrong key, amount or accounts). */
  readonly mismatches: Array<string>
  sent: number
}

/**
 * One client: transfers between random accounts until `stop()`, each with a fresh key, each sent again with the same
 * key until it gets a final answer (at most until `giveUpAt`); reconnects when its connection is lost.
 */
const runClient = async (
  ledger: number,
  client: number,
  port: number,
  accounts: ReadonlyArray<number>,
  stats: Stats,
  stop: () => boolean,
  giveUpAt: () => number
) => {
  let conn: LineClient | undefined
  let seq = 0
  try {
    while (!stop()) {
      const key = `galera-${ledger}-${client}-${seq++}`
      const i = Math.floor(Math.random() * accounts.length)
      const j = (i + 1 + Math.floor(Math.random() * (accounts.length - 1))) % accounts.length
      const request = {
        op: "transfer",
        from: accounts[i]!,
        to: accounts[j]!,
        amount: 1 + Math.floor(Math.random() * 1000)
      }
      stats.sent++
      for (let attempt = 1; ; attempt++) {
        if (Date.now() > giveUpAt()) {
          stats.failures.push(`${key}: no final answer before the deadline (${attempt - 1} attempts)`)
          break
        }
        let response
        try {
          conn ??= await LineClient.connect(port, undefined, 5_000)
          response = await conn.request({ id: seq, ...request, idempotencyKey: key }, 30_000)
        } catch (e) {
          if (!(e instanceof Closed)) throw e
          conn?.close()
          conn = undefined
          stats.retries.connection = (stats.retries.connection ?? 0) + 1
          await sleep(200)
          continue
        }
        if (response.ok) {
          const t = response.result
          if (
            t.idempotencyKey !== key ||
            Number(t.amount) !== request.amount ||
            t.from !== request.from ||
            t.to !== request.to
          ) {
            stats.mismatches.push(`${key}: sent ${JSON.stringify(request)}, got ${JSON.stringify(t)}`)
          }
          stats.acks.push({ key, ledger, id: Number(t.id), ...request, at: Date.now(), attempts: attempt })
          break
        }
        const code = response.error!.code
        if (RETRYABLE.has(code)) {
          stats.retries[code] = (stats.retries[code] ?? 0) + 1
          await sleep(100)
          continue
        }
        stats.failures.push(`${key}: ${code} ${response.error!.message}`)
        break
      }
    }
  } finally {
    conn?.close()
  }
}

const sum = (values: ReadonlyArray<number>) => values.reduce((x, y) => x + y, 0)

layer(MysqlCluster.layerGalera({ nodes: 3 }), { timeout: "300 seconds", excludeTestServices: true })(
  "three ledgers on a 3-node Galera cluster",
  (it) => {
    it.scoped(
      "concurrent transfers through all three, node 2 killed and restarted mid-run: nothing acknowledged is lost or doubled",
      () =>
        Effect.gen(function* () {
          const { nodes, waitForClusterSize } = yield* MysqlCluster.GaleraCluster
          yield* waitForClusterSize(3, "60 seconds")
          for (const n of nodes) yield* n.waitReady("60 seconds")
          const urls = nodes.map((n) => Redacted.value(n.url))
          // ledger k prefers node k, then the others in order
          const databaseUrl = (k: number) => [urls[k]!, ...urls.filter((_, i) => i !== k)].join(",")

          // the first ledger alone (its migrations run), then the other two
          const ledgers: Array<LedgerProcess> = []
          ledgers.push(yield* spawnLedger({ name: "ledger-1", databaseUrl: databaseUrl(0) }))
          yield* ledgers[0]!.waitAnswering(150_000)
          for (let k = 1; k < LEDGERS; k++) {
            ledgers.push(yield* spawnLedger({ name: `ledger-${k + 1}`, databaseUrl: databaseUrl(k) }))
          }
          yield* Effect.forEach(ledgers.slice(1), (l) => l.waitAnswering(150_000), { concurrency: "unbounded" })

          // accounts, funded through the first ledger
          const accounts = yield* Effect.promise(async () => {
            const c = await LineClient.connect(ledgers[0]!.tcpPort)
            try {
              const ids: Array<number> = []
              for (let i = 0; i < ACCOUNTS; i++) {
                const account = await c.call("create_account", { name: `galera-${i}` })
                await c.call("deposit", { account: account.id, amount: FUNDING, idempotencyKey: `fund-${i}` })
                ids.push(Number(account.id))
              }
              return ids
            } finally {
              c.close()
            }
          })

          const stats: Stats = { acks: [], retries: {}, failures: [], mismatches: [], sent: 0 }
          let stopped = false
          let giveUpAt = Infinity
          const workload = yield* Effect.promise(() =>
            Promise.all(
              ledgers.flatMap((l, k) =>
                Array.from({ length: CLIENTS_PER_LEDGER }, (_, c) =>
                  runClient(
                    k,
                    c,
                    l.tcpPort,
                    accounts,
                    stats,
                    () => stopped,
                    () => giveUpAt
                  )
                )
              )
            )
          ).pipe(Effect.fork)
          // stop the clients however the test ends
          yield* Effect.addFinalizer(() =>
            Effect.sync(() => {
              stopped = true
              giveUpAt = 0
            })
          )

          const started = Date.now()
          yield* Effect.sleep(BEFORE_KILL_MS)
          const victim = nodes[1]!
          yield* victim.kill
          const killedAt = Date.now()
          yield* waitForClusterSize(2, "60 seconds")
          const evictedAt = Date.now()
          yield* Effect.sleep(DOWN_MS)
          const restartAt = Date.now()
          yield* victim.start
          yield* victim.waitReady("120 seconds")
          const backAt = Date.now()
          yield* Effect.sleep(AFTER_RESTART_MS)
          stopped = true
          // a transfer in flight gets its final answer within this (retries with its key until then)
          giveUpAt = Date.now() + 60_000
          yield* Fiber.join(workload).pipe(Effect.timeout("90 seconds"), Effect.orDie)
          const endedAt = Date.now()

          // the cluster whole again; read through node 1 with causal reads
          yield* waitForClusterSize(3, "60 seconds")
          for (const n of nodes) yield* n.waitReady("60 seconds")
          const causal = (n: MysqlCluster.GaleraNode) =>
            Effect.tap(connect(n.url), (conn) => query(conn, "SET SESSION wsrep_sync_wait = 1"))
          const db: Mysql.Connection = yield* causal(nodes[0]!)
          const stored = yield* rows<{
            readonly id: number
            readonly k: string
            readonly src: number
            readonly dst: number
            readonly amount: string
          }>(
            db,
            "SELECT id, CAST(idempotency_key AS CHAR) AS k, src, dst, CAST(amount AS CHAR) AS amount FROM transfers WHERE idempotency_key LIKE 'galera-%'"
          )
          const duplicates = yield* rows<{ readonly k: string; readonly n: number }>(
            db,
            "SELECT CAST(idempotency_key AS CHAR) AS k, COUNT(*) AS n FROM transfers WHERE idempotency_key IS NOT NULL GROUP BY idempotency_key HAVING COUNT(*) > 1"
          )
          const checksum = (conn: Mysql.Connection) =>
            Effect.map(
              rows<{ readonly total: string; readonly n: number; readonly moved: string }>(
                conn,
                "SELECT (SELECT CAST(SUM(balance) AS CHAR) FROM accounts) AS total, (SELECT COUNT(*) FROM transfers) AS n, (SELECT CAST(SUM(amount) AS CHAR) FROM transfers) AS moved"
              ),
              (r) => ({ total: String(r[0]?.total), transfers: Number(r[0]?.n), moved: String(r[0]?.moved) })
            )
          const onNodes = yield* Effect.forEach(nodes, (n) => Effect.flatMap(causal(n), checksum))
          // every balance = its funding + what came in - what went out, over the transfers table
          const unbalanced = yield* rows<{ readonly id: number; readonly balance: string; readonly derived: string }>(
            db,
            `SELECT a.id, CAST(a.balance AS CHAR) AS balance,
                    CAST(COALESCE((SELECT SUM(amount) FROM transfers WHERE dst = a.id), 0)
                       - COALESCE((SELECT SUM(amount) FROM transfers WHERE src = a.id), 0) AS CHAR) AS derived
               FROM accounts a WHERE a.id IN (?) HAVING balance <> derived`,
            [accounts]
          )

          const byKey = new Map(stored.map((r) => [r.k, r]))
          const lost: Array<string> = []
          const wrong: Array<string> = []
          for (const ack of stats.acks) {
            const row = byKey.get(ack.key)
            if (row === undefined) lost.push(ack.key)
            else if (
              Number(row.id) !== ack.id ||
              Number(row.src) !== ack.from ||
              Number(row.dst) !== ack.to ||
              row.amount !== String(ack.amount)
            ) {
              wrong.push(`${ack.key}: acknowledged ${JSON.stringify(ack)}, stored ${JSON.stringify(row)}`)
            }
          }
          const ackedKeys = new Set(stats.acks.map((a) => a.key))
          const ackedTwice = stats.acks.length - ackedKeys.size
          const storedUnacked = stored.filter((r) => !ackedKeys.has(r.k)).length
          const victimLedger = stats.acks.filter((a) => a.ledger === 1)
          const victimOkAfterKill = victimLedger.filter((a) => a.at > killedAt).length
          const victimOkWhileDown = victimLedger.filter((a) => a.at > evictedAt && a.at < restartAt).length
          const perLedgerWhileDown = ledgers.map(
            (_, k) => stats.acks.filter((a) => a.ledger === k && a.at > killedAt && a.at < restartAt).length
          )
          const retried = sum(Object.values(stats.retries))
          const expectedTotal = String(ACCOUNTS * FUNDING)

          console.log(
            `ledger-galera: acknowledged=${stats.acks.length} stored=${stored.length} ` +
              `(stored but never acknowledged=${storedUnacked}) retried=${retried} ${JSON.stringify(stats.retries)} ` +
              `lost=${lost.length} duplicates=${duplicates.length} wrong=${wrong.length} sent=${stats.sent} ` +
              `failures=${stats.failures.length}; killed node's ledger ok after the kill=${victimOkAfterKill} ` +
              `(while evicted and down=${victimOkWhileDown}); ok per ledger while node 2 down=${perLedgerWhileDown.join("/")}; ` +
              `total=${onNodes.map((c) => c.total).join("/")} (expected ${expectedTotal}); ` +
              `timeline: kill at +${killedAt - started} ms, evicted +${evictedAt - started}, restart +${restartAt - started}, ` +
              `synced +${backAt - started}, clients done +${endedAt - started}`
          )
          if (stats.failures.length > 0) console.log(`failures (first 10): ${stats.failures.slice(0, 10).join("; ")}`)
          for (const l of ledgers) {
            const warnings = l
              .output()
              .split("\n")
              .filter((line) => line !== "")
            if (warnings.length > 0) {
              console.log(`${l.name}: ${warnings.length} log lines, last 5:\n${warnings.slice(-5).join("\n")}`)
            }
          }

          assert.isAbove(stats.acks.length, 100, "the workload ran")
          assert.deepStrictEqual(lost, [], "acknowledged transfers missing from the database")
          assert.deepStrictEqual(wrong, [], "acknowledged transfers stored differently")
          assert.deepStrictEqual(stats.mismatches, [], "ok responses that are not the request's transfer")
          assert.strictEqual(ackedTwice, 0, "a key acknowledged twice")
          assert.deepStrictEqual(duplicates, [], "idempotency keys stored more than once")
          assert.deepStrictEqual(unbalanced, [], "balances that differ from their transfers")
          for (const c of onNodes) {
            assert.deepStrictEqual(c, onNodes[0], "all three nodes agree")
            assert.strictEqual(c.total, expectedTotal, "the total is conserved")
          }
          assert.deepStrictEqual(stats.failures, [], "transfers without a final answer, or refused")
          assert.isAtLeast(stored.length, stats.acks.length)
          assert.isAbove(victimOkAfterKill, 0, "the killed node's ledger answered ok after the kill")
          assert.isAbove(victimOkWhileDown, 0, "…and while its node was out of the cluster")
        }),
      // the ledgers start (up to 150 s each under load), ~20 s of transfers, a node restart (up to 120 s): bounded
      300_000
    )
  }
)
