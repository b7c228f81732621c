/**
 * The two sessionfx-only modes: `scale` (many units waiting at once on a small pool) and `soak` (many sequential
 * sessions, heap after GC sampled: a flat line means nothing leaks per session).
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine, Session } from "@sessionfx/session"
import * as Effect from "effect/Effect"
import * as ManagedRuntime from "effect/ManagedRuntime"
import { POOL_SIZE } from "./impls/Impl.js"
import { sqlTransfer } from "./impls/statements.js"
import type { Progress } from "./progress.js"
import { checkConservation, type Conservation, makePlan } from "./workload.js"

const MB = 1024 * 1024

const quantile = (sorted: ReadonlyArray<number>, q: number) =>
  sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!

const engineRuntime = (url: string) =>
  ManagedRuntime.make(Engine.layer({ url, pool: { size: POOL_SIZE, acquireTimeout: "10 minutes" } }))

/**
 * How the units are started. `fiber`: one `runtime.runFork` per unit, as a server runs each request in a fiber of its
 * own. `forEach`: one `Effect.forEach(units, unit, { concurrency: "unbounded" })`, whose own bookkeeping costs
 * about 5 KB per element on top of the unit (measured around a bare `Deferred.await`: 7.9 KB against 2.8 KB).
 */
export type Spawn = "fiber" | "forEach"

export interface ScaleResult {
  readonly units: number
  readonly spawn: Spawn
  readonly pool: number
  readonly completed: number
  readonly failed: number
  readonly elapsedMs: number
  readonly throughput: number
  /** wait from the unit's start until its body runs: pool acquire plus the START TRANSACTION round trip */
  readonly waitMs: { readonly min: number; readonly p50: number; readonly p99: number; readonly max: number }
  /** largest |start rank − entry rank|: 0 would be perfect FIFO */
  readonly maxRankDisplacement: number
  /** fraction of units that entered their body in start order (entry rank within ±pool of start rank) */
  readonly inOrderFraction: number
  readonly rssBeforeMb: number
  readonly peakRssMb: number
  readonly maxRssMb: number
  readonly conservation: Conservation
}

export const runScale = async (
  url: string,
  accounts: number,
  units: number,
  seed: number,
  spawn: Spawn,
  progress: Progress
): Promise<ScaleResult> => {
  const runtime = engineRuntime(url)
  await runtime.runtime()
  const plan = makePlan(units, accounts, seed)
  const startedAt = new Float64Array(units)
  const enteredAt = new Float64Array(units).fill(NaN)
  let entrySeq = 0
  const entryRank = new Int32Array(units).fill(-1)
  let peakRss = process.memoryUsage().rss
  const rssBefore = peakRss
  const sampler = setInterval(() => {
    peakRss = Math.max(peakRss, process.memoryUsage().rss)
  }, 20)
  let failed = 0
  let finished = 0
  let allFinished = () => {}
  const finish = Effect.sync(() => {
    progress.done++
    if (++finished === units) allFinished()
  })
  const unit = (i: number) =>
    Effect.suspend(() => {
      startedAt[i] = performance.now()
      return Session.transact(
        Effect.flatMap(SqlClient.SqlClient, (sql) => {
          if (Number.isNaN(enteredAt[i]!)) {
            enteredAt[i] = performance.now()
            entryRank[i] = entrySeq++
          }
          return sqlTransfer(sql, plan.src[i]!, plan.dst[i]!, plan.amount[i]!)
        }),
        { retry: true }
      ).pipe(
        Effect.catchAllCause(() => Effect.sync(() => failed++)),
        Effect.ensuring(finish)
      )
    })
  const started = performance.now()
  try {
    if (spawn === "fiber") {
      // a fiber of its own per unit, the way a server runs a request
      await new Promise<void>((resolve) => {
        allFinished = resolve
        if (units === 0) resolve()
        for (let i = 0; i < units; i++) runtime.runFork(unit(i))
      })
    } else {
      await runtime.runPromise(Effect.forEach(plan.src, (_, i) => unit(i), { concurrency: "unbounded", discard: true }))
    }
  } finally {
    clearInterval(sampler)
    await runtime.dispose()
  }
  const elapsedMs = performance.now() - started
  const waits: Array<number> = []
  let maxDisp = 0
  let inOrder = 0
  for (let i = 0; i < units; i++) {
    if (Number.isNaN(enteredAt[i]!)) continue
    waits.push(enteredAt[i]! - startedAt[i]!)
    const disp = Math.abs(entryRank[i]! - i)
    maxDisp = Math.max(maxDisp, disp)
    if (disp <= POOL_SIZE) inOrder++
  }
  waits.sort((x, y) => x - y)
  const completed = units - failed
  return {
    units,
    spawn,
    pool: POOL_SIZE,
    completed,
    failed,
    elapsedMs,
    throughput: (completed / elapsedMs) * 1000,
    waitMs: { min: waits[0] ?? NaN, p50: quantile(waits, 0.5), p99: quantile(waits, 0.99), max: waits.at(-1) ?? NaN },
    maxRankDisplacement: maxDisp,
    inOrderFraction: waits.length === 0 ? 0 : inOrder / waits.length,
    rssBeforeMb: rssBefore / MB,
    peakRssMb: Math.max(peakRss, process.memoryUsage().rss) / MB,
    maxRssMb: process.resourceUsage().maxRSS / 1024,
    conservation: await checkConservation(url, accounts, completed)
  }
}

export interface HeapSample {
  readonly sessions: number
  readonly heapUsedMb: number
  readonly rssMb: number
}

export interface SoakResult {
  readonly sessions: number
  readonly completed: number
  readonly failed: number
  readonly elapsedMs: number
  readonly samples: ReadonlyArray<HeapSample>
  readonly heapStartMb: number
  readonly heapMiddleMb: number
  readonly heapEndMb: number
  readonly conservation: Conservation
}

export const runSoak = async (
  url: string,
  accounts: number,
  sessions: number,
  seed: number,
  progress: Progress
): Promise<SoakResult> => {
  const gc = (globalThis as { gc?: () => void }).gc
  if (gc === undefined) throw new Error("soak needs node --expose-gc")
  const runtime = engineRuntime(url)
  await runtime.runtime()
  const plan = makePlan(Math.min(sessions, 100_000), accounts, seed)
  const samples: Array<HeapSample> = []
  const sample = (n: number) => {
    gc()
    gc()
    const m = process.memoryUsage()
    samples.push({ sessions: n, heapUsedMb: m.heapUsed / MB, rssMb: m.rss / MB })
  }
  const every = Math.max(1, Math.floor(sessions / 20))
  let failed = 0
  const started = performance.now()
  try {
    await runtime.runPromise(
      Effect.gen(function* () {
        // warm up (JIT, pool filled, prepared statements cached) before the first sample
        for (let i = 0; i < Math.min(1000, plan.size); i++) {
          yield* Session.transact(
            Effect.flatMap(SqlClient.SqlClient, (sql) => sqlTransfer(sql, plan.src[i]!, plan.dst[i]!, plan.amount[i]!)),
            { retry: true }
          )
        }
        sample(0)
        for (let n = 0; n < sessions; n++) {
          const i = n % plan.size
          const exit = yield* Effect.exit(
            Session.transact(
              Effect.flatMap(SqlClient.SqlClient, (sql) =>
                sqlTransfer(sql, plan.src[i]!, plan.dst[i]!, plan.amount[i]!)
              ),
              { retry: true }
            )
          )
          if (exit._tag === "Failure") failed++
          progress.done++
          if ((n + 1) % every === 0 || n + 1 === sessions) sample(n + 1)
        }
      })
    )
  } finally {
    await runtime.dispose()
  }
  const elapsedMs = performance.now() - started
  const at = (fraction: number) =>
    samples.reduce((best, s) =>
      Math.abs(s.sessions - fraction * sessions) < Math.abs(best.sessions - fraction * sessions) ? s : best
    ).heapUsedMb
  const warmup = Math.min(1000, plan.size)
  return {
    sessions,
    completed: sessions - failed,
    failed,
    elapsedMs,
    samples,
    heapStartMb: at(0),
    heapMiddleMb: at(0.5),
    heapEndMb: at(1),
    conservation: await checkConservation(url, accounts, sessions - failed + warmup)
  }
}

/** What `main` asks of the stress process (`build/stress.mjs`), as its one JSON argument. */
export type StressJob =
  | {
      readonly mode: "scale"
      readonly accounts: number
      readonly units: number
      readonly seed: number
      readonly spawn: Spawn
    }
  | { readonly mode: "soak"; readonly accounts: number; readonly sessions: number; readonly seed: number }
