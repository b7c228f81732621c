/**
 * OpenTelemetry through `@effect/opentelemetry`'s NodeSdk, with in-memory exporters, against a real server: one
 * `sql.session` span per unit with its statement spans as children, database attributes on the statements, and the
 * Engine's metrics exported through the same SDK.
 */
import { assert, expect, it } from "@effect/vitest"
import { Engine } from "@sessionfx/session"
import { MysqlServer } from "@sessionfx/testing"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Example from "../src/opentelemetry.js"

it.live("one sql.session span per unit, statements as its children, metrics exported", () =>
  Effect.suspend(() => {
    const exporters = Example.makeExporters()
    return Effect.gen(function* () {
      const server = yield* MysqlServer.MysqlServer
      const result = yield* Example.program
      assert.strictEqual(result, "1:90 2:10", "the second unit rolled back")
      // the pool gauges are sampled every second; Engine.stats samples them now
      yield* Engine.stats
      yield* Effect.promise(() => exporters.reader.forceFlush())

      const spans = exporters.spans.getFinishedSpans()
      const units = spans.filter((span) => span.name === "sql.session")
      assert.strictEqual(units.length, 2, Example.spanTree(exporters.spans, []))
      const [committed, rolledBack] = units
      assert.strictEqual(committed!.attributes["sql.session.outcome"], "commit")
      expect(String(rolledBack!.attributes["sql.session.outcome"])).toMatch(/^rollback/)
      for (const unit of units) {
        const statements = spans.filter((span) => span.parentSpanContext?.spanId === unit.spanContext().spanId)
        assert.isAbove(statements.length, 0)
        for (const statement of statements) {
          assert.strictEqual(statement.name, "sql.execute")
          // the statement path names the client method here ("execute"), not the SQL verb
          assert.isString(statement.attributes["db.operation.name"])
          expect(["mysql", "mariadb"]).toContain(statement.attributes["db.system"])
          assert.strictEqual(statement.attributes["db.system.name"], statement.attributes["db.system"])
          assert.strictEqual(statement.attributes["db.namespace"], server.database)
        }
        // units are children of the span around them
        const parent = spans.find((span) => span.spanContext().spanId === unit.parentSpanContext?.spanId)
        assert.strictEqual(parent?.name, "transfer-example")
      }

      const names = new Set(
        exporters.metrics
          .getMetrics()
          .flatMap((resource) => resource.scopeMetrics.flatMap((scope) => scope.metrics.map((m) => m.descriptor.name)))
      )
      for (const name of [
        "sessionfx_pool_size",
        "sessionfx_pool_in_use",
        "sessionfx_pool_acquire_wait_ms",
        "sessionfx_session_commits_total",
        "sessionfx_session_rollbacks_total"
      ]) {
        assert.isTrue(names.has(name), `${name} not exported; got ${[...names].join(", ")}`)
      }
      // the exporters are emptied when the SDK shuts down: everything is checked inside the layer
    }).pipe(Effect.provide(MysqlServer.layerEngine().pipe(Layer.provideMerge(Example.TelemetryLive(exporters)))))
  })
)
