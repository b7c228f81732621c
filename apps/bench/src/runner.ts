/**
 * Drives one run: `concurrency` workers take the next transfer of the plan until it is exhausted. Measures wall
 * time, per-unit latency and the process CPU time (every implementation runs in this process, one at a time).
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type { Impl } from "./impls/index.js"
import type { Progress } from "./progress.js"
import type { Plan } from "./workload.js"

export interface Measurement {
  readonly completed: number
  readonly failed: number
  readonly retries: number
  readonly elapsedMs: number
  readonly throughput: number
  readonly p50Ms: number
  readonly p99Ms: number
  readonly cpuUsPerTransfer: number
  readonly errors: ReadonlyArray<string>
}

const quantile = (sorted: Float64Array, q: number): number =>
  sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!

const describeError = (e: unknown): string => {
  const text = e instanceof Error ? `${e.name}: ${e.message}` : String(e)
  return text.length > 300 ? `${text.slice(0, 300)}…` : text
}

class Tally {
  readonly latencies: Float64Array
  completed = 0
  failed = 0
  retries = 0
  errors: Array<string> = []
  constructor(
    size: number,
    readonly progress: Progress
  ) {
    this.latencies = new Float64Array(size)
  }
  ok(retries: number, started: number) {
    this.latencies[this.completed++] = performance.now() - started
    this.retries += retries
    this.progress.done++
  }
  fail(e: unknown) {
    this.failed++
    this.progress.done++
    if (this.errors.length < 5) this.errors.push(describeError(e))
  }
}

const drivePromise = async (
  transfer: (a: number, b: number, amount: number) => Promise<number>,
  plan: Plan,
  concurrency: number,
  tally: Tally
) => {
  let next = 0
  const worker = async () => {
    for (let i = next++; i < plan.size; i = next++) {
      const started = performance.now()
      try {
        tally.ok(await transfer(plan.src[i]!, plan.dst[i]!, plan.amount[i]!), started)
      } catch (e) {
        tally.fail(e)
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
}

const driveEffect = <R>(
  transfer: (a: number, b: number, amount: number) => Effect.Effect<number, unknown, R>,
  plan: Plan,
  concurrency: number,
  tally: Tally
): Effect.Effect<void, never, R> => {
  let next = 0
  const worker = Effect.gen(function* () {
    for (let i = next++; i < plan.size; i = next++) {
      const started = performance.now()
      const exit = yield* Effect.exit(transfer(plan.src[i]!, plan.dst[i]!, plan.amount[i]!))
      if (Exit.isSuccess(exit)) tally.ok(exit.value, started)
      else tally.fail(Cause.squash(exit.cause))
    }
  })
  return Effect.all(
    Array.from({ length: concurrency }, () => worker),
    { concurrency: "unbounded", discard: true }
  )
}

export const runOnce = async (
  impl: Impl,
  plan: Plan,
  concurrency: number,
  progress: Progress
): Promise<Measurement> => {
  const tally = new Tally(plan.size, progress)
  const cpu = process.cpuUsage()
  const started = performance.now()
  if (impl.kind === "promise") await drivePromise(impl.transfer, plan, concurrency, tally)
  else await impl.runPromise(driveEffect(impl.transfer, plan, concurrency, tally))
  const elapsedMs = performance.now() - started
  const used = process.cpuUsage(cpu)
  const sorted = tally.latencies.subarray(0, tally.completed).sort()
  return {
    completed: tally.completed,
    failed: tally.failed,
    retries: tally.retries,
    elapsedMs,
    throughput: (tally.completed / elapsedMs) * 1000,
    p50Ms: quantile(sorted, 0.5),
    p99Ms: quantile(sorted, 0.99),
    cpuUsPerTransfer: (used.user + used.system) / Math.max(1, tally.completed),
    errors: tally.errors
  }
}
