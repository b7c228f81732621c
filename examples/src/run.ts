/**
 * Runs the examples against a private server:
 * `pnpm --filter @sessionfx/examples examples [readme|http|migrations|drizzle|kysely|opentelemetry|replicas]`.
 */
import { NodeRuntime } from "@effect/platform-node"
import * as SqlClient from "@effect/sql/SqlClient"
import type { Engine } from "@sessionfx/session"
import { MysqlServer } from "@sessionfx/testing"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Redacted from "effect/Redacted"
import { balances, createAccounts } from "./Accounts.js"
import * as Drizzle from "./drizzle.js"
import * as Http from "./http.js"
import * as Kysely from "./kysely.js"
import * as Migrations from "./migrations.js"
import * as OpenTelemetry from "./opentelemetry.js"
import * as Readme from "./readme.js"
import * as Replicas from "./replicas.js"

const databaseUrl = Effect.map(MysqlServer.MysqlServer, (server) =>
  ConfigProvider.fromMap(new Map([["DATABASE_URL", Redacted.value(server.url)]]))
)

const readme = Effect.gen(function* () {
  yield* createAccounts(Array.from({ length: 11 }, () => 100))
  yield* Readme.program.pipe(Effect.withConfigProvider(yield* databaseUrl))
  return yield* balances
})

// the README's ManagedRuntime: its own pool (EngineLive, DATABASE_URL), built and disposed like a framework's
const http = Effect.gen(function* () {
  yield* createAccounts([100, 0])
  const runtime = ManagedRuntime.make(
    Readme.EngineLive.pipe(Layer.provide(Layer.setConfigProvider(yield* databaseUrl)))
  )
  const statuses = yield* Http.exercise(runtime)
  return { ...statuses, balances: yield* balances }
})

// twice: the second run applies nothing
const migrations = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  yield* sql`DROP TABLE IF EXISTS customers, effect_sql_migrations`
  const first = yield* Migrations.migrate
  const second = yield* Migrations.migrate
  return { first: first.map(([id, name]) => `${id}_${name}`), second: second.length }
})

const opentelemetry = Effect.suspend(() => {
  const exporters = OpenTelemetry.makeExporters()
  return Effect.gen(function* () {
    const result = yield* OpenTelemetry.program
    yield* Console.log(
      OpenTelemetry.spanTree(exporters.spans, ["sql.session.outcome", "db.system", "db.namespace", "db.operation.name"])
    )
    return result
  }).pipe(Effect.provide(OpenTelemetry.TelemetryLive(exporters)))
})

const examples: Record<
  string,
  Effect.Effect<unknown, unknown, MysqlServer.MysqlServer | Engine.Engine | SqlClient.SqlClient>
> = {
  readme,
  http,
  migrations,
  drizzle: Drizzle.program,
  kysely: Kysely.program,
  opentelemetry,
  replicas: Replicas.run
}

const selected = process.argv.slice(2)
const unknown = selected.filter((name) => !(name in examples))
if (unknown.length > 0) {
  console.error(`unknown example(s): ${unknown.join(", ")}; choose from ${Object.keys(examples).join(", ")}`)
  process.exit(2)
}

Effect.forEach(
  selected.length > 0 ? selected : Object.keys(examples),
  (name) => Effect.flatMap(examples[name]!, (result) => Console.log(`${name}: ${JSON.stringify(result)}`)),
  { discard: true }
).pipe(Effect.provide(MysqlServer.layerEngine()), NodeRuntime.runMain)
