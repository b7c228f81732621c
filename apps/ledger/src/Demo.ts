/**
 * The demo client: N TCP connections run random transfers concurrently (progress bar on stderr), then it prints
 * the throughput and checks that the total balance of its accounts is conserved.
 */
import * as Effect from "effect/Effect"
import { Prng } from "@sessionfx/testing"
import * as Fiber from "effect/Fiber"
import * as Metric from "effect/Metric"
import * as MetricState from "effect/MetricState"
import * as Client from "./Client.js"
import { MAX_BATCH } from "./Domain/Requests.js"

export interface Options {
  readonly host: string
  readonly port: number
  readonly token: string
  readonly connections: number
  readonly transfers: number
  readonly accounts: number
  readonly seed: number
  /** Called right before and right after the transfers (not the setup): the benchmark measures CPU between. */
  readonly onTransfers?: { readonly start: () => void; readonly end: () => void } | undefined
  /** No progress bar. */
  readonly quiet?: boolean | undefined
}

export interface Report {
  readonly requests: number
  readonly committed: number
  readonly refused: number
  readonly errors: number
  readonly seconds: number
  readonly perSecond: number
  readonly p50: number
  readonly p99: number
  readonly before: bigint
  readonly after: bigint
  readonly conserved: boolean
  readonly retries: number | undefined
}

const INITIAL = 10_000

const prng = Prng.make

const retriesSoFar = Effect.map(Metric.snapshot, (pairs) => {
  let total: number | undefined
  for (const p of pairs) {
    if (p.metricKey.name === "sessionfx_session_retries_total" && MetricState.isCounterState(p.metricState)) {
      total = (total ?? 0) + Number(p.metricState.count)
    }
  }
  return total
})

/** Runs `ops` as batches of at most `MAX_BATCH` (one transaction each) and returns all results in order. */
export const batched = (client: Client.LineClient, ops: ReadonlyArray<Record<string, unknown>>) =>
  Effect.gen(function* () {
    const results: Array<any> = []
    for (let i = 0; i < ops.length; i += MAX_BATCH) {
      const r: { results: Array<any> } = yield* client.call("batch", { ops: ops.slice(i, i + MAX_BATCH) })
      results.push(...r.results)
    }
    return results
  })

/** The sum of the balances (money on the wire: a number, or a decimal string above 2^53 − 1). */
const totalOf = (client: Client.LineClient, ids: ReadonlyArray<number>) =>
  Effect.map(
    batched(
      client,
      ids.map((account) => ({ op: "balance", account }))
    ),
    (results: Array<{ balance: number | string }>) => results.reduce((sum, a) => sum + BigInt(a.balance), 0n)
  )

const bar = (done: number, total: number, startedAt: number) => {
  const width = 30
  const filled = Math.round((done / total) * width)
  const seconds = (performance.now() - startedAt) / 1000
  const rate = seconds > 0 ? Math.round(done / seconds) : 0
  return `[${"#".repeat(filled)}${".".repeat(width - filled)}] ${done}/${total} transfers  ${rate}/s`
}

export const run = (options: Options): Effect.Effect<Report, Client.ClientClosed | Client.CallFailed> =>
  Effect.scoped(
    Effect.gen(function* () {
      const random = prng(options.seed)
      const admin = yield* Client.connect({ host: options.host, port: options.port, token: options.token })
      const tag = `demo-${Date.now().toString(36)}`
      const created: Array<{ id: number }> = yield* batched(
        admin,
        Array.from({ length: options.accounts }, (_, i) => ({ op: "create_account", name: `${tag}-${i}` }))
      )
      const ids = created.map((a) => a.id)
      yield* batched(
        admin,
        ids.map((account) => ({ op: "deposit", account, amount: INITIAL }))
      )
      const before = yield* totalOf(admin, ids)
      const retriesBefore = yield* retriesSoFar

      const clients = yield* Effect.forEach(
        Array.from({ length: options.connections }),
        () => Client.connect({ host: options.host, port: options.port, token: options.token }),
        { concurrency: "unbounded" }
      )
      let issued = 0
      let finished = 0
      let committed = 0
      let refused = 0
      let errors = 0
      const latencies: Array<number> = []
      options.onTransfers?.start()
      const startedAt = performance.now()
      const tty = process.stderr.isTTY === true
      let lastPrinted = -1
      const progress = Effect.sync(() => {
        if (options.quiet) return
        const step = Math.floor((finished / options.transfers) * 10)
        if (tty) process.stderr.write(`\r${bar(finished, options.transfers, startedAt)}`)
        else if (step !== lastPrinted) {
          lastPrinted = step
          process.stderr.write(`${bar(finished, options.transfers, startedAt)}\n`)
        }
      })
      const worker = (client: Client.LineClient) =>
        Effect.gen(function* () {
          while (issued < options.transfers) {
            issued++
            const from = ids[Math.floor(random() * ids.length)]!
            let to = ids[Math.floor(random() * ids.length)]!
            if (to === from) to = ids[(ids.indexOf(from) + 1) % ids.length]!
            const amount = 1 + Math.floor(random() * 500)
            const t0 = performance.now()
            const response = yield* client.request({ id: issued, op: "transfer", from, to, amount })
            latencies.push(performance.now() - t0)
            finished++
            if (response.ok) committed++
            else if (response.error?.code === "insufficient_funds") refused++
            else errors++
          }
        })
      const ticker = yield* progress.pipe(Effect.delay("100 millis"), Effect.forever, Effect.fork)
      yield* Effect.forEach(clients, worker, { concurrency: "unbounded", discard: true })
      const seconds = (performance.now() - startedAt) / 1000
      options.onTransfers?.end()
      yield* progress
      if (!options.quiet) process.stderr.write(tty ? "\n" : "")
      yield* Fiber.interrupt(ticker)
      const after = yield* totalOf(admin, ids)
      const retriesAfter = yield* retriesSoFar
      latencies.sort((a, b) => a - b)
      const pct = (p: number) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] ?? 0
      return {
        requests: finished,
        committed,
        refused,
        errors,
        seconds,
        perSecond: finished / seconds,
        p50: pct(0.5),
        p99: pct(0.99),
        before,
        after,
        conserved: before === after && errors === 0,
        retries: retriesBefore === undefined || retriesAfter === undefined ? undefined : retriesAfter - retriesBefore
      } satisfies Report
    })
  )

export const format = (options: Options, r: Report): string =>
  [
    `ledger demo: ${options.connections} TCP connections, ${options.transfers} random transfers over ${options.accounts} accounts`,
    `  throughput  ${r.requests} requests in ${r.seconds.toFixed(2)} s = ${Math.round(r.perSecond)} transfers/s`,
    `  latency     p50 ${r.p50.toFixed(1)} ms, p99 ${r.p99.toFixed(1)} ms`,
    `  outcome     ${r.committed} committed, ${r.refused} refused (insufficient funds), ${r.errors} errors` +
      (r.retries === undefined ? "" : `, ${r.retries} retried units (deadlocks / lock waits)`),
    `  total       before ${r.before}, after ${r.after}: ${r.conserved ? "conserved" : "NOT CONSERVED"}`
  ].join("\n")
