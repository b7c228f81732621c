/**
 * OpenTelemetry for sessionfx through `@effect/opentelemetry`: one `sql.session` span per unit of work with its
 * statements (`sql.execute`) as children, and the Engine's metrics (pool, commits, rollbacks, retries) exported
 * through the same SDK. Here the exporters keep everything in memory and the program prints what they received;
 * in an application, use OTLP exporters instead (see docs/observability.md).
 *
 *   pnpm --filter @sessionfx/examples examples opentelemetry
 */
import * as NodeSdk from "@effect/opentelemetry/NodeSdk"
import * as SqlClient from "@effect/sql/SqlClient"
import {
  AggregationTemporality,
  InMemoryMetricExporter,
  PeriodicExportingMetricReader
} from "@opentelemetry/sdk-metrics"
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base"
import { Session } from "@sessionfx/session"
import * as Effect from "effect/Effect"
import { balances, createAccounts } from "./Accounts.js"

/** In-memory exporters: what a collector would receive. */
export const makeExporters = () => {
  const spans = new InMemorySpanExporter()
  const metrics = new InMemoryMetricExporter(AggregationTemporality.CUMULATIVE)
  const reader = new PeriodicExportingMetricReader({ exporter: metrics, exportIntervalMillis: 60_000 })
  return { spans, metrics, reader }
}

/** The SDK as a layer: provide it once, at the program's edge, like the Engine. */
export const TelemetryLive = (exporters: ReturnType<typeof makeExporters>) =>
  NodeSdk.layer(() => ({
    resource: { serviceName: "sessionfx-example" },
    spanProcessor: new SimpleSpanProcessor(exporters.spans),
    metricReader: exporters.reader
  }))

/** Two units of work: one commits, one rolls back. */
export const program = Effect.gen(function* () {
  yield* createAccounts([100, 0])
  yield* Session.transact(
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      yield* sql`UPDATE accounts SET balance = balance - 10 WHERE id = 1`
      yield* sql`UPDATE accounts SET balance = balance + 10 WHERE id = 2`
    })
  )
  yield* Session.transact(
    Effect.flatMap(SqlClient.SqlClient, (sql) =>
      Effect.zipRight(sql`UPDATE accounts SET balance = 0 WHERE id = 1`, Effect.fail("changed my mind" as const))
    )
  ).pipe(Effect.ignore)
  return yield* balances
}).pipe(Effect.withSpan("transfer-example"))

/** `name [attribute=value …]`, indented under its parent, for every exported span. */
export const spanTree = (exporter: InMemorySpanExporter, attributes: ReadonlyArray<string>): string => {
  const spans = exporter.getFinishedSpans()
  const children = (parent: string | undefined) =>
    spans.filter(
      (span) => span.parentSpanContext?.spanId === parent || (parent === undefined && !span.parentSpanContext)
    )
  const lines: Array<string> = []
  const walk = (parent: string | undefined, depth: number) => {
    for (const span of children(parent)) {
      const shown = attributes.filter((a) => a in span.attributes).map((a) => `${a}=${String(span.attributes[a])}`)
      lines.push(`${"  ".repeat(depth)}${span.name}${shown.length ? ` [${shown.join(" ")}]` : ""}`)
      walk(span.spanContext().spanId, depth + 1)
    }
  }
  walk(undefined, 0)
  return lines.join("\n")
}
