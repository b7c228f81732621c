/**
 * Request metrics and a Prometheus text rendering of every `effect/Metric` in the process (the ledger's own and
 * sessionfx's `sessionfx_*` pool and session metrics).
 */
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import * as MetricLabel from "effect/MetricLabel"
import * as MetricState from "effect/MetricState"
import * as Option from "effect/Option"

export const requestDuration = Metric.histogram(
  "ledger_request_duration_ms",
  MetricBoundaries.exponential({ start: 0.25, factor: 2, count: 16 }),
  "time to answer one request, in milliseconds"
)

export const requests = Metric.counter("ledger_requests_total", {
  description: "requests answered",
  incremental: true
})

export const connections = Metric.gauge("ledger_tcp_connections", {
  description: "open TCP connections (authenticated or not)"
})

export const unauthenticatedConnections = Metric.gauge("ledger_tcp_unauthenticated_connections", {
  description: "open TCP connections that have not authenticated yet"
})

export const rejectedConnections = Metric.counter("ledger_tcp_rejected_connections_total", {
  description: "TCP connections closed by a limit, by reason",
  incremental: true
})

// Tagged updates go through the untagged metric with a label array built once: `Metric.tagged(...)` would build a
// new array per update, and Effect finds a metric's hook by the identity of that array (a key and a hash otherwise).
const labelsOf = new Map<string, ReadonlyArray<MetricLabel.MetricLabel>>()
const labelSet = (key: string, make: () => ReadonlyArray<MetricLabel.MetricLabel>) => {
  let l = labelsOf.get(key)
  if (l === undefined) labelsOf.set(key, (l = make()))
  return l
}

/** Counts a connection closed by a limit under its `reason`. */
export const rejected = (reason: string) =>
  rejectedConnections.unsafeUpdate(
    1,
    labelSet(`rejected ${reason}`, () => [MetricLabel.make("reason", reason)])
  )

/** The label arrays of one `op` on one transport: its latency's, and its count's by outcome. */
interface OpLabels {
  readonly duration: ReadonlyArray<MetricLabel.MetricLabel>
  readonly byOutcome: Map<string, ReadonlyArray<MetricLabel.MetricLabel>>
}

// looked up by op, then transport, then outcome — no key string built per request (a concatenated key is a new
// string to flatten and hash on every update: measured at about 3 µs per request)
const opLabels = new Map<string, Map<string, OpLabels>>()

const labelsFor = (op: string, transport: "tcp" | "http"): OpLabels => {
  let byTransport = opLabels.get(op)
  if (byTransport === undefined) opLabels.set(op, (byTransport = new Map()))
  let l = byTransport.get(transport)
  if (l === undefined) {
    l = {
      duration: [MetricLabel.make("op", op), MetricLabel.make("transport", transport)],
      byOutcome: new Map()
    }
    byTransport.set(transport, l)
  }
  return l
}

/** Records one answered request: its latency under `op`/`transport`, its outcome (`ok` or an error code). */
export const record = (op: string, transport: "tcp" | "http", outcome: string, ms: number): void => {
  const l = labelsFor(op, transport)
  requestDuration.unsafeUpdate(ms, l.duration)
  let counted = l.byOutcome.get(outcome)
  if (counted === undefined) {
    counted = [
      MetricLabel.make("op", op),
      MetricLabel.make("transport", transport),
      MetricLabel.make("outcome", outcome)
    ]
    l.byOutcome.set(outcome, counted)
  }
  requests.unsafeUpdate(1, counted)
}

/** Times `effect` and records it under `op` and `transport`; `outcome` is `ok` or the error's code. */
export const track =
  (op: string, transport: "tcp" | "http", outcome: (e: unknown) => string) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    Effect.suspend(() => {
      const start = performance.now()
      return Effect.onExit(effect, (exit) =>
        Effect.sync(() =>
          record(
            op,
            transport,
            exit._tag === "Success" ? "ok" : exit.cause._tag === "Fail" ? outcome(exit.cause.error) : "defect",
            performance.now() - start
          )
        )
      )
    })

const escapeLabel = (v: string) => v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"')

const labels = (tags: ReadonlyArray<{ key: string; value: string }>, extra?: readonly [string, string]) => {
  const all = tags.map((t) => [t.key, t.value] as const).concat(extra ? [extra] : [])
  return all.length === 0 ? "" : `{${all.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(",")}}`
}

const num = (n: number | bigint) =>
  typeof n === "bigint" ? n.toString() : Number.isFinite(n) ? String(n) : n > 0 ? "+Inf" : "-Inf"

/** Every metric in the default registry, in the Prometheus text exposition format (version 0.0.4). */
export const prometheus: Effect.Effect<string> = Effect.map(Metric.snapshot, (pairs) => {
  const families = new Map<string, { type: string; help: string; lines: Array<string> }>()
  const family = (name: string, type: string, help: Option.Option<string>) => {
    let f = families.get(name)
    if (!f) {
      f = { type, help: Option.getOrElse(help, () => name.replace(/_/g, " ")), lines: [] }
      families.set(name, f)
    }
    return f
  }
  for (const pair of pairs) {
    const key = pair.metricKey
    const name = key.name.replace(/[^a-zA-Z0-9_:]/g, "_")
    const state = pair.metricState
    const tags = key.tags
    if (MetricState.isCounterState(state)) {
      family(name, "counter", key.description).lines.push(`${name}${labels(tags)} ${num(state.count)}`)
    } else if (MetricState.isGaugeState(state)) {
      family(name, "gauge", key.description).lines.push(`${name}${labels(tags)} ${num(state.value)}`)
    } else if (MetricState.isHistogramState(state)) {
      const f = family(name, "histogram", key.description)
      for (const [bound, count] of state.buckets) {
        f.lines.push(`${name}_bucket${labels(tags, ["le", num(bound)])} ${count}`)
      }
      f.lines.push(`${name}_bucket${labels(tags, ["le", "+Inf"])} ${state.count}`)
      f.lines.push(`${name}_sum${labels(tags)} ${num(state.sum)}`)
      f.lines.push(`${name}_count${labels(tags)} ${state.count}`)
    } else if (MetricState.isFrequencyState(state)) {
      const f = family(name, "counter", key.description)
      for (const [value, count] of state.occurrences) {
        f.lines.push(`${name}${labels(tags, ["value", value])} ${count}`)
      }
    } else if (MetricState.isSummaryState(state)) {
      const f = family(name, "summary", key.description)
      for (const [q, value] of state.quantiles) {
        if (Option.isSome(value)) f.lines.push(`${name}${labels(tags, ["quantile", String(q)])} ${num(value.value)}`)
      }
      f.lines.push(`${name}_sum${labels(tags)} ${num(state.sum)}`)
      f.lines.push(`${name}_count${labels(tags)} ${state.count}`)
    }
  }
  const out: Array<string> = []
  for (const [name, f] of [...families.entries()].sort(([a], [b]) => a.localeCompare(b))) {
    out.push(`# HELP ${name} ${f.help.replace(/\n/g, " ")}`, `# TYPE ${name} ${f.type}`, ...f.lines)
  }
  return out.join("\n") + "\n"
})
