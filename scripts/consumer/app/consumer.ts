// A TypeScript consumer, checked with `tsc` (strict, nodenext) against the packed type declarations.
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine, Session, SessionLive } from "@sessionfx/session"
import * as SessionError from "@sessionfx/session/SessionError"
import { MysqlServer, SessionTest } from "@sessionfx/testing"
import * as Config from "effect/Config"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"

// code that must run inside a unit of work says so in its type
const audit = (note: string): Effect.Effect<void, SessionError.SessionError, SqlClient.SqlClient | Session.Session> =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    yield* sql`INSERT INTO audit (note) VALUES (${note})`
    yield* Session.afterCommit(Effect.log(`audited ${note}`))
  }).pipe(Effect.mapError((e) => SessionError.classify(e)))

const EngineLive: Layer.Layer<Engine.Engine | SqlClient.SqlClient, unknown> = Engine.layerConfig({
  url: Config.redacted("DATABASE_URL"),
  pool: { size: Config.integer("DB_POOL_SIZE").pipe(Config.withDefault(8)) }
})

export const inUnit: Effect.Effect<void, unknown> = audit("layer").pipe(
  Effect.provide(SessionLive),
  Effect.provide(EngineLive)
)

export const transacted: Effect.Effect<void, unknown> = Session.transact(audit("transact"), { retry: true }).pipe(
  Effect.catchTag("DuplicateKey", (e) => Effect.logWarning(e.message)),
  Effect.provide(EngineLive)
)

export const retryable: boolean = SessionError.isRetryable(new SessionError.Deadlock({ message: "x" }))

export const testLayer = SessionTest.SessionTest.pipe(Layer.provideMerge(MysqlServer.layerEngine()))

// @ts-expect-error needs a Session: the Engine alone does not open a unit of work
export const missingSession: Effect.Effect<void, unknown> = audit("no unit").pipe(Effect.provide(EngineLive))

// @ts-expect-error internal modules are not part of the package's exports
export const internal = import("@sessionfx/session/internal/session")

// scale-out: replicas from Config, a read with a token received as a string, the servers' health
export const ReplicatedLive: Layer.Layer<Engine.Engine | SqlClient.SqlClient, unknown> = Engine.layerConfig({
  url: Config.redacted("PRIMARY_URL"),
  replicas: Config.array(Config.redacted(), "REPLICA_URLS"),
  readYourWritesTimeout: Config.duration("READ_YOUR_WRITES_TIMEOUT").pipe(Config.withDefault("1 second"))
})

export const readAfter = (header: string): Effect.Effect<number, unknown, Engine.Engine> =>
  Effect.flatMap(Schema.decodeUnknown(Session.CausalityToken)(header), (token: Session.CausalityToken) =>
    Session.transact(
      Effect.flatMap(SqlClient.SqlClient, (sql) => sql<{ readonly n: number }>`SELECT COUNT(*) AS n FROM audit`),
      { readOnly: true, after: token, consistency: "read-your-writes" }
    ).pipe(Effect.map((rows) => Number(rows[0]?.n ?? 0)))
  )

export const health: Effect.Effect<ReadonlyArray<string>, never, Engine.Engine> = Effect.map(
  Engine.servers,
  (servers) => servers.map((s: Engine.ServerStatus) => `${s.role} ${s.name} ${s.healthy ? "up" : s.reason}`)
)

// @ts-expect-error a token is a CausalityToken (decoded), not any string
export const unchecked = Session.transact(Effect.void, { readOnly: true, after: "0-1-1" })
