/**
 * `pnpm bench replicas`: the read-heavy mix against one server and against a primary with replicas.
 *
 * Every client is a fiber of its own doing its own sequence of operations: 90 % balance reads (a read-only unit
 * reading one account's balance) and 10 % transfers (a read-write unit moving money between two of the client's own
 * accounts, the four statements of the transfer workload). Three configurations run in the same process against
 * the same cluster, in interleaved rounds:
 *
 * - `single`: an Engine on the primary only (the replicas keep replicating, nothing reads them);
 * - `replica`: an Engine with the replicas, reads with `consistency: "replica"` (any healthy replica, no wait);
 * - `read-your-writes`: the same Engine options, reads with the default consistency (wait for the fiber's own
 *   commits, or the primary after `readYourWritesTimeout`).
 *
 * Stale reads: each client owns a few accounts that only it writes (its transfers move money between them) and
 * knows their balances from its own transfers (the balances its unit read `FOR UPDATE`, minus / plus the amount);
 * a read of its own accounts right after one of its transfers reads one of the two accounts it has just written.
 * A read of one of them that returns anything else is stale. The other accounts (shared) are only read. Before
 * every run the balances are reset on the primary and every replica has applied the reset, so the expected
 * balance of an account the client has not written yet is the initial one.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine, Session } from "@sessionfx/session"
import type { MysqlCluster } from "@sessionfx/testing"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Cause from "effect/Cause"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Redacted from "effect/Redacted"
import * as Metric from "effect/Metric"
import * as MetricState from "effect/MetricState"
import * as Mysql from "mysql2/promise"
import { POOL_SIZE } from "./impls/Impl.js"
import { checkConservation, type Conservation, createSchema, INITIAL_BALANCE, mulberry32 } from "./workload.js"

export type ConfigName = "single" | "replica" | "read-your-writes" | "replica-lagging" | "read-your-writes-lagging"

export interface Config {
  readonly name: ConfigName
  readonly label: string
  readonly replicas: boolean
  readonly consistency: "replica" | "read-your-writes" | undefined
  /** the replicas run with `MASTER_DELAY` (`ReplicasOptions.lagSeconds`) */
  readonly lagging: boolean
}

export const CONFIGS: ReadonlyArray<Config> = [
  { name: "single", label: "(a) one server", replicas: false, consistency: undefined, lagging: false },
  {
    name: "replica",
    label: '(b) primary + replicas, consistency "replica"',
    replicas: true,
    consistency: "replica",
    lagging: false
  },
  {
    name: "read-your-writes",
    label: "(c) primary + replicas, read-your-writes",
    replicas: true,
    consistency: "read-your-writes",
    lagging: false
  },
  {
    name: "replica-lagging",
    label: '(b′) replicas behind by MASTER_DELAY, consistency "replica"',
    replicas: true,
    consistency: "replica",
    lagging: true
  },
  {
    name: "read-your-writes-lagging",
    label: "(c′) replicas behind by MASTER_DELAY, read-your-writes",
    replicas: true,
    consistency: "read-your-writes",
    lagging: true
  }
]

/** Configurations that must never read stale. */
const mustNotBeStale = (config: ConfigName) => config === "single" || config.startsWith("read-your-writes")

export interface ReplicasOptions {
  readonly clients: number
  readonly seconds: number
  readonly warmupSeconds: number
  readonly reps: number
  /** read-only accounts, read by every client */
  readonly sharedAccounts: number
  /** accounts per client, written only by it */
  readonly ownAccounts: number
  /** percentage of operations that are reads */
  readonly readPercent: number
  /** percentage of reads that read one of the client's own accounts (the others read a shared account) */
  readonly ownReadPercent: number
  /**
   * After (a)–(c), (b) and (c) again with every replica applying the primary's events this many seconds late
   * (`CHANGE MASTER TO MASTER_DELAY`); 0: not run.
   */
  readonly lagSeconds: number
  readonly seed: number
}

/** The cluster the benchmark runs against; `catchUp` returns once every replica has applied the primary's position. */
export interface Cluster {
  readonly primaryUrl: string
  readonly replicaUrls: ReadonlyArray<string>
  readonly catchUp: () => Promise<void>
  /** `MASTER_DELAY` on every replica (seconds; 0 to replicate as fast as it can) */
  readonly setDelay: (seconds: number) => Promise<void>
  readonly describe: string
}

/** The benchmark's view of a `MysqlCluster.replicated` cluster. */
export const clusterOf = (servers: MysqlCluster.Replicated): Cluster => {
  const catchUp = Effect.forEach(
    servers.replicas,
    (replica) =>
      Effect.flatMap(replica.waitCaughtUp("30 seconds"), (ok) =>
        ok ? Effect.void : Effect.dieMessage(`replica ${replica.port} did not catch up within 30 s`)
      ),
    { concurrency: "unbounded", discard: true }
  )
  return {
    primaryUrl: Redacted.value(servers.primary.url),
    replicaUrls: servers.replicas.map((r) => Redacted.value(r.url)),
    catchUp: () => Effect.runPromise(catchUp),
    setDelay: async (seconds) => {
      for (const replica of servers.replicas) {
        await withConnection(Redacted.value(replica.admin.url), async (conn) => {
          await conn.query("STOP SLAVE")
          await conn.query(`CHANGE MASTER TO MASTER_DELAY = ${Math.max(0, Math.floor(seconds))}`)
          await conn.query("START SLAVE")
        })
      }
    },
    describe: `${servers.primary.flavor} ${servers.primary.version}, primary + ${servers.replicas.length} replicas on loopback`
  }
}

interface Latencies {
  readonly p50: number
  readonly p99: number
}

export interface RunResult {
  readonly config: ConfigName
  readonly round: number
  readonly elapsedMs: number
  readonly ops: number
  readonly throughput: number
  readonly reads: number
  readonly transfers: number
  readonly failedReads: number
  readonly failedTransfers: number
  readonly errors: ReadonlyArray<string>
  readonly readMs: Latencies
  readonly transferMs: Latencies
  /** from calling `Session.transact` to the first statement of a read: pool, causal wait, START TRANSACTION */
  readonly readStartMs: Latencies
  readonly readsOnReplicas: number
  readonly readsOnPrimary: number
  /** `sessionfx_read_fallbacks_total` over the run, by reason */
  readonly fallbacks: Readonly<Record<string, number>>
  /** `sessionfx_causal_wait_ms` over the run: waits made, mean, and the histogram bucket holding the median */
  readonly waits: { readonly count: number; readonly meanMs: number; readonly p50BucketMs: number }
  /** reads of the client's own accounts: each compared with the balance its own transfers left */
  readonly checkedReads: number
  /** of those, reads of an account the client's previous operation (a transfer) had just written */
  readonly checkedAfterWrite: number
  readonly staleReads: number
  /** the balances a transfer read FOR UPDATE on the primary differed from the client's own expectation */
  readonly primaryMismatches: number
  readonly conservation: Conservation
  /** every replica holds the primary's balances once it has caught up after the run */
  readonly replicasConverged: boolean
}

export interface ConfigSummary {
  readonly config: ConfigName
  readonly label: string
  readonly runs: number
  readonly throughput: number
  readonly readP50: number
  readonly readP99: number
  readonly transferP50: number
  readonly transferP99: number
  readonly readStartP50: number
  readonly replicaShare: number
  readonly fallbacks: number
  readonly waitsPerRead: number
  readonly waitMeanMs: number
  readonly waitP50BucketMs: number
  readonly checkedReads: number
  readonly checkedAfterWrite: number
  readonly staleReads: number
  readonly failed: number
  readonly conserved: boolean
}

export interface ReplicasResult {
  readonly meta: {
    readonly date: string
    readonly node: string
    readonly cpus: string
    readonly cluster: string
    readonly options: ReplicasOptions
    readonly pool: number
  }
  readonly runs: ReadonlyArray<RunResult>
  readonly summary: ReadonlyArray<ConfigSummary>
  /** stale reads in `single` and `read-your-writes` are 0, money conserved everywhere, nothing failed */
  readonly ok: boolean
  readonly problems: ReadonlyArray<string>
}

const quantiles = (values: Array<number>): Latencies => {
  if (values.length === 0) return { p50: NaN, p99: NaN }
  const sorted = Float64Array.from(values).sort()
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!
  return { p50: at(0.5), p99: at(0.99) }
}

const median = (values: ReadonlyArray<number>): number => {
  const v = values.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b)
  if (v.length === 0) return NaN
  const m = Math.floor(v.length / 2)
  return v.length % 2 === 1 ? v[m]! : (v[m - 1]! + v[m]!) / 2
}

const describeError = (e: unknown): string => {
  const text = e instanceof Error ? `${e.name}: ${e.message}` : String(e)
  return text.length > 300 ? `${text.slice(0, 300)}…` : text
}

// -----------------------------------------------------------------------------
// metrics: what sessionfx itself counted, per engine (the engine's name is its `engine` label)
// -----------------------------------------------------------------------------

interface MetricTotals {
  readonly fallbacks: Map<string, number>
  readonly waitCount: number
  readonly waitSum: number
  readonly waitBuckets: ReadonlyArray<readonly [number, number]>
}

const metricTotals = (engine: string): MetricTotals => {
  const fallbacks = new Map<string, number>()
  let waitCount = 0
  let waitSum = 0
  let waitBuckets: ReadonlyArray<readonly [number, number]> = []
  for (const pair of Metric.unsafeSnapshot()) {
    const key = pair.metricKey
    if (!key.tags.some((t) => t.key === "engine" && t.value === engine)) continue
    const state = pair.metricState
    if (key.name === "sessionfx_read_fallbacks_total" && MetricState.isCounterState(state)) {
      const reason = key.tags.find((t) => t.key === "reason")?.value ?? "?"
      fallbacks.set(reason, (fallbacks.get(reason) ?? 0) + Number(state.count))
    } else if (key.name === "sessionfx_causal_wait_ms" && MetricState.isHistogramState(state)) {
      waitCount += state.count
      waitSum += state.sum
      waitBuckets = Array.from(state.buckets)
    }
  }
  return { fallbacks, waitCount, waitSum, waitBuckets }
}

const metricDelta = (before: MetricTotals, after: MetricTotals) => {
  const fallbacks: Record<string, number> = {}
  for (const [reason, n] of after.fallbacks) {
    const d = n - (before.fallbacks.get(reason) ?? 0)
    if (d > 0) fallbacks[reason] = d
  }
  const count = after.waitCount - before.waitCount
  // the buckets are cumulative counts per upper bound: the first bound whose delta reaches half the waits
  let p50BucketMs = NaN
  for (let i = 0; i < after.waitBuckets.length && count > 0; i++) {
    const [bound, cumulative] = after.waitBuckets[i]!
    const prior = before.waitBuckets[i]?.[1] ?? 0
    if (cumulative - prior >= count / 2) {
      p50BucketMs = bound
      break
    }
  }
  return {
    fallbacks,
    waits: { count, meanMs: count === 0 ? NaN : (after.waitSum - before.waitSum) / count, p50BucketMs }
  }
}

// -----------------------------------------------------------------------------
// schema
// -----------------------------------------------------------------------------

const withConnection = async <A>(url: string, f: (conn: Mysql.Connection) => Promise<A>): Promise<A> => {
  const conn = await Mysql.createConnection({ uri: url })
  try {
    return await f(conn)
  } finally {
    await conn.end()
  }
}

const DIGEST =
  "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(balance), 0) AS SIGNED) AS s, BIT_XOR(CRC32(CONCAT(id, ':', balance))) AS x FROM accounts"

const digest = (url: string): Promise<string> =>
  withConnection(url, async (conn) => {
    const [rows] = await conn.query<Array<Mysql.RowDataPacket>>(DIGEST)
    const r = rows[0]!
    return `${r["n"]}/${r["s"]}/${r["x"]}`
  })

// -----------------------------------------------------------------------------
// one run
// -----------------------------------------------------------------------------

interface Tally {
  ops: number
  reads: Array<number>
  readStarts: Array<number>
  transfers: Array<number>
  failedReads: number
  failedTransfers: number
  errors: Array<string>
  readsOnReplicas: number
  readsOnPrimary: number
  checkedReads: number
  checkedAfterWrite: number
  staleReads: number
  primaryMismatches: number
}

const newTally = (): Tally => ({
  ops: 0,
  reads: [],
  readStarts: [],
  transfers: [],
  failedReads: 0,
  failedTransfers: 0,
  errors: [],
  readsOnReplicas: 0,
  readsOnPrimary: 0,
  checkedReads: 0,
  checkedAfterWrite: 0,
  staleReads: 0,
  primaryMismatches: 0
})

/** A balance read: a read-only unit on whichever server the engine picks. */
const readBalance = (account: number, config: Config, onBody: () => void) =>
  Session.transact(
    Effect.gen(function* () {
      onBody()
      const session = yield* Session.Session
      const rows = yield* session.sql<{
        readonly balance: number | string
      }>`SELECT balance FROM accounts WHERE id = ${account}`
      return { balance: Number(rows[0]?.balance), server: session.server }
    }),
    config.consistency === undefined ? { readOnly: true } : { readOnly: true, consistency: config.consistency }
  )

/** A transfer between two of the client's accounts; returns their balances as its unit locked them. */
const transfer = (a: number, b: number, amount: number) =>
  Session.transact(
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      const rows = yield* sql<{
        readonly id: number
        readonly balance: number | string
      }>`SELECT id, balance FROM accounts WHERE id IN (${a}, ${b}) FOR UPDATE`
      yield* sql`UPDATE accounts SET balance = balance - ${amount} WHERE id = ${a}`
      yield* sql`UPDATE accounts SET balance = balance + ${amount} WHERE id = ${b}`
      yield* sql`INSERT INTO transfers (src, dst, amount) VALUES (${a}, ${b}, ${amount})`
      const before = new Map(rows.map((r) => [Number(r.id), Number(r.balance)]))
      return { a: before.get(a)!, b: before.get(b)! }
    }),
    { retry: true }
  )

/** The accounts client `k` owns: after the shared ones. */
const ownAccountsOf = (options: ReplicasOptions, k: number): Array<number> =>
  Array.from({ length: options.ownAccounts }, (_, i) => options.sharedAccounts + 1 + k * options.ownAccounts + i)

export const totalAccounts = (options: ReplicasOptions): number =>
  options.sharedAccounts + options.clients * options.ownAccounts

const client = (
  k: number,
  options: ReplicasOptions,
  config: Config,
  primaryName: string,
  seed: number,
  deadline: number,
  tally: Tally
) =>
  Effect.gen(function* () {
    const random = mulberry32(seed + k * 7919)
    const own = ownAccountsOf(options, k)
    // the balance each own account has after this client's last committed write (only this client writes them);
    // an account whose transfer failed (outcome unknown) is no longer checked
    const expected = new Map<number, number>(own.map((id) => [id, INITIAL_BALANCE]))
    const readShare = options.readPercent / 100
    const ownShare = options.ownReadPercent / 100
    // the two accounts of the transfer this client has just made (until its next operation): a read of its own
    // accounts right after a transfer reads one of them, as a client shows the balance it just changed
    let justWritten: readonly [number, number] | undefined
    while (performance.now() < deadline) {
      const started = performance.now()
      const previous = justWritten
      justWritten = undefined
      if (random() < readShare) {
        const account =
          random() < ownShare
            ? previous !== undefined
              ? previous[random() < 0.5 ? 0 : 1]
              : own[Math.floor(random() * own.length)]!
            : 1 + Math.floor(random() * options.sharedAccounts)
        let bodyAt = NaN
        const exit = yield* Effect.exit(readBalance(account, config, () => (bodyAt = performance.now())))
        const now = performance.now()
        tally.ops++
        if (Exit.isFailure(exit)) {
          tally.failedReads++
          if (tally.errors.length < 5) tally.errors.push(`read: ${describeError(Cause.squash(exit.cause))}`)
          continue
        }
        tally.reads.push(now - started)
        tally.readStarts.push(bodyAt - started)
        if (exit.value.server === primaryName) tally.readsOnPrimary++
        else tally.readsOnReplicas++
        const want = expected.get(account)
        if (want !== undefined) {
          tally.checkedReads++
          if (previous !== undefined && (previous[0] === account || previous[1] === account)) tally.checkedAfterWrite++
          if (exit.value.balance !== want) tally.staleReads++
        }
      } else {
        const i = Math.floor(random() * own.length)
        let j = Math.floor(random() * (own.length - 1))
        if (j >= i) j++
        const a = own[i]!
        const b = own[j]!
        const amount = 1 + Math.floor(random() * 100)
        const exit = yield* Effect.exit(transfer(a, b, amount))
        tally.ops++
        if (Exit.isFailure(exit)) {
          tally.failedTransfers++
          expected.delete(a)
          expected.delete(b)
          if (tally.errors.length < 5) tally.errors.push(`transfer: ${describeError(Cause.squash(exit.cause))}`)
          continue
        }
        tally.transfers.push(performance.now() - started)
        const locked = exit.value
        if ((expected.has(a) && expected.get(a) !== locked.a) || (expected.has(b) && expected.get(b) !== locked.b)) {
          tally.primaryMismatches++
        }
        expected.set(a, locked.a - amount)
        expected.set(b, locked.b + amount)
        justWritten = [a, b]
      }
    }
  })

/** A progress line on stderr: redrawn every 200 ms on a terminal, a line every 10 s (and at the end) in a log. */
const progressLine = (label: string, durationMs: number, tally: Tally) => {
  const tty = process.stderr.isTTY === true
  const started = performance.now()
  const draw = (final: boolean) => {
    const fraction = final ? 1 : Math.min(1, (performance.now() - started) / durationMs)
    const width = 30
    const filled = Math.round(fraction * width)
    const line = `[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${(fraction * 100).toFixed(0).padStart(3)}% ${label} · ${tally.ops} ops`
    if (tty) process.stderr.write(`\r\x1b[2K${line}${final ? "\n" : ""}`)
    else process.stderr.write(line + "\n")
  }
  const timer = setInterval(() => draw(false), tty ? 200 : 10_000)
  timer.unref()
  return () => {
    clearInterval(timer)
    draw(true)
  }
}

type EngineRuntime = ManagedRuntime.ManagedRuntime<Engine.Engine, unknown>

interface Prepared {
  readonly config: Config
  readonly engineName: string
  readonly runtime: EngineRuntime
  readonly primaryName: string
}

const prepare = async (cluster: Cluster, config: Config): Promise<Prepared> => {
  const engineName = `bench-${config.name}`
  const runtime: EngineRuntime = ManagedRuntime.make(
    Engine.layer({
      url: cluster.primaryUrl,
      ...(config.replicas ? { replicas: cluster.replicaUrls } : {}),
      name: engineName,
      pool: { size: POOL_SIZE, acquireTimeout: "5 minutes" }
    })
  )
  // every server in rotation before the runs (a replica whose replication has just been restarted may start out)
  let servers = await runtime.runPromise(Effect.flatMap(Engine.Engine, (e) => e.servers))
  for (let tries = 0; tries < 100 && servers.some((s) => !s.healthy); tries++) {
    await new Promise((resolve) => setTimeout(resolve, 100))
    servers = await runtime.runPromise(Effect.flatMap(Engine.Engine, (e) => e.servers))
  }
  const primary = servers.find((s) => s.role === "primary") ?? servers[0]!
  const unhealthy = servers.filter((s) => !s.healthy)
  if (unhealthy.length > 0) {
    await runtime.dispose()
    throw new Error(`${config.label}: ${unhealthy.map((s) => `${s.name}: ${s.reason}`).join("; ")}`)
  }
  return { config, engineName, runtime, primaryName: primary.name }
}

/** Resets the balances on the primary and waits until every replica has applied the reset. */
const reset = async (cluster: Cluster) => {
  await withConnection(cluster.primaryUrl, async (conn) => {
    await conn.query("TRUNCATE TABLE transfers")
    await conn.query("UPDATE accounts SET balance = ?", [INITIAL_BALANCE])
  })
  await cluster.catchUp()
}

const runOne = async (
  cluster: Cluster,
  p: Prepared,
  options: ReplicasOptions,
  round: number,
  seconds: number,
  label: string
): Promise<RunResult> => {
  await reset(cluster)
  ;(globalThis as { gc?: () => void }).gc?.()
  const tally = newTally()
  const before = metricTotals(p.engineName)
  const started = performance.now()
  const deadline = started + seconds * 1000
  const seed = options.seed + round * 104_729
  const done = progressLine(label, seconds * 1000, tally)
  try {
    await p.runtime.runPromise(
      Effect.all(
        Array.from({ length: options.clients }, (_, k) =>
          client(k, options, p.config, p.primaryName, seed, deadline, tally)
        ),
        { concurrency: "unbounded", discard: true }
      )
    )
  } finally {
    done()
  }
  const elapsedMs = performance.now() - started
  const delta = metricDelta(before, metricTotals(p.engineName))
  const conservation = await checkConservation(cluster.primaryUrl, totalAccounts(options), tally.transfers.length)
  await cluster.catchUp()
  const primaryDigest = await digest(cluster.primaryUrl)
  const replicaDigests = await Promise.all(cluster.replicaUrls.map(digest))
  return {
    config: p.config.name,
    round,
    elapsedMs,
    ops: tally.ops,
    throughput: ((tally.reads.length + tally.transfers.length) / elapsedMs) * 1000,
    reads: tally.reads.length,
    transfers: tally.transfers.length,
    failedReads: tally.failedReads,
    failedTransfers: tally.failedTransfers,
    errors: tally.errors,
    readMs: quantiles(tally.reads),
    transferMs: quantiles(tally.transfers),
    readStartMs: quantiles(tally.readStarts),
    readsOnReplicas: tally.readsOnReplicas,
    readsOnPrimary: tally.readsOnPrimary,
    fallbacks: delta.fallbacks,
    waits: delta.waits,
    checkedReads: tally.checkedReads,
    checkedAfterWrite: tally.checkedAfterWrite,
    staleReads: tally.staleReads,
    primaryMismatches: tally.primaryMismatches,
    conservation,
    replicasConverged: replicaDigests.every((d) => d === primaryDigest)
  }
}

export const summarize = (runs: ReadonlyArray<RunResult>): Array<ConfigSummary> =>
  CONFIGS.filter((config) => runs.some((r) => r.config === config.name)).map((config) => {
    const rs = runs.filter((r) => r.config === config.name)
    const sum = (f: (r: RunResult) => number) => rs.reduce((s, r) => s + f(r), 0)
    return {
      config: config.name,
      label: config.label,
      runs: rs.length,
      throughput: median(rs.map((r) => r.throughput)),
      readP50: median(rs.map((r) => r.readMs.p50)),
      readP99: median(rs.map((r) => r.readMs.p99)),
      transferP50: median(rs.map((r) => r.transferMs.p50)),
      transferP99: median(rs.map((r) => r.transferMs.p99)),
      readStartP50: median(rs.map((r) => r.readStartMs.p50)),
      replicaShare: median(rs.map((r) => r.readsOnReplicas / Math.max(1, r.reads))),
      fallbacks: sum((r) => Object.values(r.fallbacks).reduce((s, n) => s + n, 0)),
      waitsPerRead: median(rs.map((r) => r.waits.count / Math.max(1, r.reads))),
      waitMeanMs: median(rs.map((r) => r.waits.meanMs)),
      waitP50BucketMs: median(rs.map((r) => r.waits.p50BucketMs)),
      checkedReads: sum((r) => r.checkedReads),
      checkedAfterWrite: sum((r) => r.checkedAfterWrite),
      staleReads: sum((r) => r.staleReads),
      failed: sum((r) => r.failedReads + r.failedTransfers),
      conserved: rs.every((r) => r.conservation.ok && r.replicasConverged && r.primaryMismatches === 0)
    }
  })

const problemsOf = (runs: ReadonlyArray<RunResult>): Array<string> => {
  const out: Array<string> = []
  for (const r of runs) {
    const at = `${r.config} round ${r.round}`
    if (mustNotBeStale(r.config) && r.staleReads > 0) out.push(`${at}: ${r.staleReads} stale reads`)
    if (!r.conservation.ok) out.push(`${at}: money not conserved ${JSON.stringify(r.conservation)}`)
    if (!r.replicasConverged) out.push(`${at}: a replica differs from the primary after catching up`)
    if (r.primaryMismatches > 0) out.push(`${at}: ${r.primaryMismatches} transfers locked an unexpected balance`)
    if (r.failedReads + r.failedTransfers > 0) {
      out.push(`${at}: ${r.failedReads} reads and ${r.failedTransfers} transfers failed: ${r.errors.join(" | ")}`)
    }
  }
  return out
}

/** Creates the accounts (shared and per client) on the primary, runs every configuration, and checks each run. */
export const runReplicas = async (cluster: Cluster, options: ReplicasOptions): Promise<ReplicasResult> => {
  await createSchema(cluster.primaryUrl, totalAccounts(options))
  await cluster.catchUp()
  const groups = [CONFIGS.filter((c) => !c.lagging), options.lagSeconds > 0 ? CONFIGS.filter((c) => c.lagging) : []]
  const total = options.reps * (groups[0]!.length + groups[1]!.length)
  const runs: Array<RunResult> = []
  let n = 0
  for (const group of groups) {
    if (group.length === 0) continue
    const lagging = group[0]!.lagging
    if (lagging) await cluster.setDelay(options.lagSeconds)
    const prepared: Array<Prepared> = []
    try {
      for (const config of group) prepared.push(await prepare(cluster, config))
      // the lagging group runs on a warm process
      if (options.warmupSeconds > 0 && !lagging) {
        for (const p of prepared) {
          await runOne(cluster, p, options, 0, options.warmupSeconds, `warm-up · ${p.config.label}`)
        }
      }
      for (let round = 1; round <= options.reps; round++) {
        // rotate the order so that no configuration always runs first (or right after the same one)
        const order = prepared.map((_, k) => prepared[(k + round - 1) % prepared.length]!)
        for (const p of order) {
          n++
          const label = `run ${n}/${total} · round ${round} · ${p.config.label}`
          const r = await runOne(cluster, p, options, round, options.seconds, label)
          runs.push(r)
          for (const problem of problemsOf([r])) process.stderr.write(`!! ${problem}\n`)
        }
      }
    } finally {
      for (const p of prepared) await p.runtime.dispose()
      if (lagging) await cluster.setDelay(0)
    }
  }
  const problems = problemsOf(runs)
  return {
    meta: {
      date: new Date().toISOString(),
      node: process.version,
      cpus: `${(await import("node:os")).cpus().length} cpus`,
      cluster: cluster.describe,
      options,
      pool: POOL_SIZE
    },
    runs,
    summary: summarize(runs),
    ok: problems.length === 0,
    problems
  }
}

// -----------------------------------------------------------------------------
// report
// -----------------------------------------------------------------------------

const f1 = (x: number) => (Number.isNaN(x) ? "–" : x < 10 ? x.toFixed(2) : x.toFixed(1))
const pct = (x: number) => (Number.isNaN(x) ? "–" : `${(x * 100).toFixed(1)} %`)

export const markdown = (r: ReplicasResult): string => {
  const o = r.meta.options
  const rows = r.summary.map((s) => {
    const waits = s.config.startsWith("read-your-writes")
      ? `${pct(s.waitsPerRead)} · ${f1(s.waitMeanMs)} / ≤ ${f1(s.waitP50BucketMs)}`
      : s.waitsPerRead > 0
        ? `${pct(s.waitsPerRead)} · ${f1(s.waitMeanMs)}`
        : "–"
    return `| ${s.label} | ${Math.round(s.throughput)} | ${f1(s.readP50)} / ${f1(s.readP99)} | ${f1(s.transferP50)} / ${f1(s.transferP99)} | ${f1(s.readStartP50)} | ${pct(s.replicaShare)} | ${s.fallbacks} | ${waits} | **${s.staleReads}** / ${s.checkedReads} (${s.checkedAfterWrite}) | ${s.failed} | ${s.conserved ? "yes" : "**NO**"} |`
  })
  const perRun = r.runs.map(
    (x) =>
      `| ${x.round} | ${x.config} | ${(x.elapsedMs / 1000).toFixed(1)} | ${x.reads} | ${x.transfers} | ${Math.round(x.throughput)} | ${f1(x.readMs.p50)} / ${f1(x.readMs.p99)} | ${f1(x.transferMs.p50)} / ${f1(x.transferMs.p99)} | ${x.readsOnReplicas} / ${x.readsOnPrimary} | ${
        Object.entries(x.fallbacks)
          .map(([k, v]) => `${k} ${v}`)
          .join(", ") || "–"
      } | ${x.waits.count} · ${f1(x.waits.meanMs)} | ${x.staleReads} / ${x.checkedReads} | ${x.conservation.ok && x.replicasConverged ? "yes" : "NO"} |`
  )
  return [
    `# Replicas: read-heavy mix`,
    ``,
    `${r.meta.date} · node ${r.meta.node} · ${r.meta.cpus} · ${r.meta.cluster} · pool ${r.meta.pool} per server`,
    ``,
    `${o.clients} clients (a fiber each), ${o.readPercent} % balance reads (read-only units; ${o.ownReadPercent} % of them of the client's own ${o.ownAccounts} accounts, the rest of ${o.sharedAccounts} shared accounts) and ${100 - o.readPercent} % transfers between the client's own accounts; ${o.reps} interleaved rounds × ${o.seconds} s per configuration (medians; stale reads, fallbacks and failures summed).`,
    ``,
    `| configuration | ops/s | read p50 / p99 ms | transfer p50 / p99 ms | read start p50 ms | reads on replicas | fallbacks to primary | causal waits: share of reads · mean / median ms | stale reads / checked (right after the write) | failed | conserved |`,
    `| :-- | --: | --: | --: | --: | --: | --: | --: | --: | --: | :-: |`,
    ...rows,
    ``,
    `- *read start*: from calling \`Session.transact\` to the read's first statement (pool, causal wait, \`START TRANSACTION READ ONLY\`).`,
    `- *causal waits*: \`sessionfx_causal_wait_ms\` over the run (units that ran \`MASTER_GTID_WAIT\`; a token the replica was already known to cover needs none); the median is the histogram bucket's upper bound.`,
    `- *stale reads*: reads of an account only that client writes that returned something other than the balance its own last committed transfer left; in brackets, the checked reads made right after the transfer that wrote the account (the client's next operation), where a replica that has not applied the commit yet shows.`,
    `- *conserved*: sum of balances and per-account balances match the recorded transfers, every replica holds the primary's balances after catching up, and no transfer locked a balance other than the client expected.`,
    ``,
    r.ok ? `All checks passed.` : `Problems:\n\n${r.problems.map((p) => `- ${p}`).join("\n")}`,
    ``,
    `## Runs`,
    ``,
    `| round | configuration | s | reads | transfers | ops/s | read p50 / p99 ms | transfer p50 / p99 ms | reads replica / primary | fallbacks | waits · mean ms | stale / checked | conserved |`,
    `| --: | :-- | --: | --: | --: | --: | --: | --: | --: | :-- | --: | --: | :-: |`,
    ...perRun,
    ``
  ].join("\n")
}
