/**
 * Spans, metrics, a program's exit and a server restart, the same test on MariaDB and PostgreSQL (see
 * `support/dialects.ts`).
 */
import { assert, expect, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine, Session } from "@sessionfx/session"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as Redacted from "effect/Redacted"
import * as Tracer from "effect/Tracer"
import { spawn } from "node:child_process"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { DbTag, dialects, embeddedDialects, engineOn as engineLayer } from "./support/dialects.js"

interface Recorded {
  readonly name: string
  readonly attributes: Map<string, unknown>
}

/** A tracer that keeps every span it is asked to make. */
const recordingTracer = (spans: Array<Recorded>) => {
  const native = Tracer.make({
    span: (name, parent, context, links, startTime, kind, options) => {
      const span = nativeTracer.span(name, parent, context, links, startTime, kind, options)
      spans.push({ name, attributes: span.attributes as Map<string, unknown> })
      return span
    },
    context: (f) => f()
  })
  return native
}
let nativeTracer: Tracer.Tracer

const counterValue = (name: string, engine: string) =>
  Effect.map(Metric.snapshot, (pairs) =>
    pairs
      .filter(
        (p) => p.metricKey.name === name && p.metricKey.tags.some((t) => t.key === "engine" && t.value === engine)
      )
      .reduce((sum, p) => sum + Number((p.metricState as { count?: number }).count ?? 0), 0)
  )

/** The id of the connection the unit runs on, as the server names it. */
const connectionId = Effect.flatMap(DbTag, (db) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.map(sql.unsafe<{ id: number }>(db.connectionId), (rows) => Number(rows[0]!.id))
  )
)

for (const [name, dbLayer] of dialects) {
  layer(dbLayer, { timeout: 120_000, excludeTestServices: true })(`observability (${name})`, (it) => {
    it.effect("spans: sql.session with isolation, attempts and outcome; statements; never the password", () =>
      Effect.gen(function* () {
        nativeTracer = yield* Effect.tracer
        const db = yield* DbTag
        const spans: Array<Recorded> = []
        yield* Session.transact(
          Effect.flatMap(SqlClient.SqlClient, (sql) => sql`SELECT ${1} AS one`),
          { isolation: "READ COMMITTED" }
        ).pipe(
          Effect.withTracer(recordingTracer(spans)),
          Effect.provide(engineLayer({ name: "traced", queryTextInSpans: true }))
        )
        const session = spans.find((s) => s.name === "sql.session")
        assert.isDefined(session)
        assert.strictEqual(session!.attributes.get("db.isolation"), "READ COMMITTED")
        assert.strictEqual(session!.attributes.get("sql.session.attempts"), 1)
        assert.strictEqual(session!.attributes.get("sql.session.outcome"), "commit")
        const statement = spans.find((s) => s.name === "sql.execute")
        assert.isDefined(statement)
        assert.strictEqual(statement!.attributes.get("db.query.text"), `SELECT ${db.param(1)} AS one`)
        assert.strictEqual(statement!.attributes.get("db.operation.name"), "SELECT")
        // without queryTextInSpans, no SQL text on spans
        const quiet: Array<Recorded> = []
        yield* Effect.flatMap(SqlClient.SqlClient, (sql) => sql`SELECT ${2} AS two`).pipe(
          Effect.withTracer(recordingTracer(quiet)),
          Effect.provide(engineLayer({ name: "quiet" }))
        )
        const plain = quiet.find((s) => s.name === "sql.execute")
        assert.isDefined(plain)
        assert.isUndefined(plain!.attributes.get("db.query.text"))
        assert.strictEqual(plain!.attributes.get("db.operation.name"), "SELECT")
        const password = decodeURIComponent(new URL(Redacted.value(db.url)).password)
        assert.isAbove(password.length, 0)
        for (const s of spans) {
          for (const v of s.attributes.values()) expect(String(v)).not.toContain(password)
        }
      })
    )

    // metrics are process-wide: each database's engine has a name of its own, so the counts are its own
    it.effect("metrics: connections created, commits and rollbacks by cause, per engine", () =>
      Effect.gen(function* () {
        yield* Session.transact(Effect.flatMap(SqlClient.SqlClient, (sql) => sql`SELECT 1`))
        yield* Effect.exit(
          Session.transact(
            Effect.zipRight(
              Effect.flatMap(SqlClient.SqlClient, (sql) => sql`SELECT 1`),
              Effect.fail("no")
            )
          )
        )
        assert.isAtLeast(yield* counterValue("sessionfx_pool_connections_created_total", `metered-${name}`), 1)
        assert.strictEqual(yield* counterValue("sessionfx_session_commits_total", `metered-${name}`), 1)
        assert.strictEqual(yield* counterValue("sessionfx_session_rollbacks_total", `metered-${name}`), 1)
        const stats = yield* Engine.stats
        const pairs = yield* Metric.snapshot
        const inUse = pairs.find(
          (p) =>
            p.metricKey.name === "sessionfx_pool_size" && p.metricKey.tags.some((t) => t.value === `metered-${name}`)
        )
        assert.strictEqual((inUse?.metricState as { value?: number } | undefined)?.value, stats.size)
      }).pipe(Effect.provide(engineLayer({ name: `metered-${name}` })))
    )

    it.effect("a program that used an Engine exits on its own: no open handles", () =>
      Effect.gen(function* () {
        const db = yield* DbTag
        const here = path.dirname(fileURLToPath(import.meta.url))
        const script = `
        import { Engine, Session } from "@sessionfx/session"
        import * as SqlClient from "@effect/sql/SqlClient"
        import * as Effect from "effect/Effect"
        const program = Session.transact(Effect.flatMap(SqlClient.SqlClient, (sql) => sql\`SELECT 1\`)).pipe(
          Effect.provide(Engine.layer({ url: process.env.SFX_URL, pool: { size: 4 } }))
        )
        Effect.runPromise(program).then(() => console.log("done"))
      `
        const t0 = Date.now()
        const result = yield* Effect.async<{ code: number | null; out: string }>((resume) => {
          const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
            cwd: here,
            env: { ...process.env, SFX_URL: Redacted.value(db.url) },
            stdio: ["ignore", "pipe", "pipe"]
          })
          let out = ""
          child.stdout.on("data", (d) => (out += d))
          child.stderr.on("data", (d) => (out += d))
          const timer = setTimeout(() => child.kill("SIGKILL"), 20_000)
          child.on("exit", (code) => {
            clearTimeout(timer)
            resume(Effect.succeed({ code, out }))
          })
        })
        assert.strictEqual(result.code, 0, result.out)
        assert.include(result.out, "done")
        assert.isBelow(Date.now() - t0, 20_000)
      })
    )
  })
}

for (const [name, dbLayer] of embeddedDialects) {
  layer(dbLayer, { timeout: 120_000, excludeTestServices: true })(`server restart (${name})`, (it) => {
    it.effect("after a server restart the pool evicts its dead connections and the next unit succeeds", () =>
      Effect.gen(function* () {
        const db = yield* DbTag
        const before = yield* Session.transact(connectionId)
        yield* db.restart
        const after = yield* Session.transact(connectionId, { retry: true })
        assert.isFalse(Number.isNaN(after))
        assert.isFalse(Number.isNaN(before))
        const stats = yield* Engine.stats
        assert.isAtLeast(stats.destroyed, 1)
        assert.strictEqual(stats.inUse, 0)
      }).pipe(Effect.provide(engineLayer({ pool: { size: 2 } })))
    )
  })
}
