/**
 * The ledger's database in tests, whichever it is: `TestDb` names it and gives the url the ledger is started with.
 * `dialects` runs a suite on both (a private server per test file, as `packages/session/test/support/dialects.ts`
 * does); `mariadb` alone is for the suites about the transports, which do not depend on the database. A server that
 * cannot start fails the suite with its reason; nothing is skipped.
 */
import { MysqlServer, PgServer } from "@sessionfx/testing"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Redacted from "effect/Redacted"

export type Dialect = "mariadb" | "postgres"

export class TestDb extends Context.Tag("ledger/test/TestDb")<
  TestDb,
  { readonly name: Dialect; readonly url: Redacted.Redacted<string> }
>() {}

/** MariaDB, with its `MysqlServer` (for the tests that stop it or read it directly). */
export const mariadb: Layer.Layer<TestDb | MysqlServer.MysqlServer, unknown> = Layer.effect(
  TestDb,
  Effect.map(MysqlServer.MysqlServer, (server) => ({ name: "mariadb" as const, url: server.url }))
).pipe(Layer.provideMerge(MysqlServer.layer()))

/** PostgreSQL, with its `PgServer`. */
export const postgres: Layer.Layer<TestDb | PgServer.PgServer, unknown> = Layer.effect(
  TestDb,
  Effect.map(PgServer.PgServer, (server) => ({ name: "postgres" as const, url: server.url }))
).pipe(Layer.provideMerge(PgServer.layer()))

/** Both databases, by name: `for (const [name, db] of dialects) layer(db, …)(\`… (${name})\`, …)`. */
export const dialects: ReadonlyArray<readonly [Dialect, Layer.Layer<TestDb, unknown>]> = [
  ["mariadb", mariadb],
  ["postgres", postgres]
]
