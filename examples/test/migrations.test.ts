/**
 * docs/testing.md's examples: a private server migrated once per file with @effect/sql's Migrator, tests that write
 * in rollback-only sessions, and read-only units under test.
 */
import { assert, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Session, SessionError } from "@sessionfx/session"
import { MysqlServer, SessionTest } from "@sessionfx/testing"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import { migrate, MigrationsLive } from "../src/migrations.js"

// the code under test: a read-only unit, and a write
const customerNames = Session.transact(
  Effect.flatMap(SqlClient.SqlClient, (sql) => sql<{ readonly name: string }>`SELECT name FROM customers ORDER BY id`),
  { readOnly: true }
).pipe(Effect.map((rows) => rows.map((row) => row.name)))
const addCustomer = (id: number, name: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) => sql`INSERT INTO customers (id, name) VALUES (${id}, ${name})`)

// one private server per file, migrated before the first test
const TestDatabase = MigrationsLive.pipe(Layer.provideMerge(MysqlServer.layerEngine()))

layer(TestDatabase, { excludeTestServices: true })("a migrated private server", (it) => {
  it.effect("the layer applied every migration; another run applies nothing", () =>
    Effect.gen(function* () {
      assert.deepStrictEqual(yield* migrate, [])
      const sql = yield* SqlClient.SqlClient
      const columns = yield* sql<{ readonly name: string }>`SELECT column_name AS name FROM information_schema.columns
        WHERE table_schema = DATABASE() AND table_name = 'customers' ORDER BY ordinal_position`
      assert.deepStrictEqual(
        columns.map((c) => c.name),
        ["id", "name", "email"]
      )
    })
  )

  it.effect("a test that writes runs in SessionTest and leaves nothing behind", () =>
    Effect.gen(function* () {
      const seen = yield* addCustomer(100, "Temp").pipe(
        Effect.zipRight(Effect.flatMap(SqlClient.SqlClient, (sql) => sql`SELECT id FROM customers WHERE id = 100`)),
        Effect.provide(SessionTest.SessionTest)
      )
      assert.strictEqual(seen.length, 1)
      const sql = yield* SqlClient.SqlClient
      assert.strictEqual((yield* sql`SELECT id FROM customers WHERE id = 100`).length, 0)
    })
  )

  it.effect("a read-only unit: committed rows, then the unit in SessionTest.layer({ readOnly: true })", () =>
    Effect.gen(function* () {
      // what the read-only unit reads must be committed: a read-only transaction cannot write its own fixtures
      yield* Session.transact(Effect.zipRight(addCustomer(1, "Ada"), addCustomer(2, "Grace")))
      const names = yield* customerNames.pipe(Effect.provide(SessionTest.layer({ readOnly: true })))
      assert.deepStrictEqual(names, ["Ada", "Grace"])
      // the test's transaction is read-only too: a write in it is refused
      const write = yield* Effect.flip(
        addCustomer(3, "Mallory").pipe(Effect.provide(SessionTest.layer({ readOnly: true })))
      )
      assert.strictEqual(SessionError.classify(write)._tag, "ReadOnlyTransaction")
      // consistentSnapshot units: a test session with both options
      const snapshot = yield* Session.transact(customerNames, { consistentSnapshot: true }).pipe(
        Effect.provide(SessionTest.layer({ readOnly: true, consistentSnapshot: true }))
      )
      assert.deepStrictEqual(snapshot, ["Ada", "Grace"])
    })
  )

  it.effect("a read-only unit inside the default SessionTest (read-write) is refused with InvalidOption", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(customerNames.pipe(Effect.provide(SessionTest.SessionTest)))
      assert.strictEqual(error._tag, "InvalidOption")
      assert.include(error.message, "readOnly: the enclosing transaction is read-write")
      assert.include(error.message, "SessionTest.layer({ readOnly: true })", "the error says what to write")
      // retry: true is accepted there
      const retried = yield* Effect.flatMap(SqlClient.SqlClient, (sql) => sql`SELECT 1 AS one`).pipe(
        Session.transact({ retry: true }),
        Effect.provide(SessionTest.SessionTest)
      )
      assert.strictEqual(retried.length, 1)
      // outside any test session it is an ordinary read-only unit of its own
      assert.includeMembers(yield* customerNames, ["Ada", "Grace"])
    })
  )
})
