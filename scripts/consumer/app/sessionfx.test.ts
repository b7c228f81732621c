// docs/testing.md as a user's test file: vitest and @effect/vitest as the install command pins them, a private
// server for the file, rollback-only sessions and a read-only unit under test.
import { assert, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Session } from "@sessionfx/session"
import { MysqlServer, SessionTest } from "@sessionfx/testing"
import * as Effect from "effect/Effect"

const customerNames = Session.transact(
  Effect.flatMap(SqlClient.SqlClient, (sql) => sql<{ readonly name: string }>`SELECT name FROM customers ORDER BY id`),
  { readOnly: true }
).pipe(Effect.map((rows) => rows.map((row) => row.name)))

layer(MysqlServer.layerEngine(), { excludeTestServices: true, timeout: "2 minutes" })(
  "sessionfx in a user's tests",
  (it) => {
    it.effect("a unit of work commits; a rollback-only session writes nothing", () =>
      Effect.gen(function* () {
        const sql = yield* SqlClient.SqlClient
        yield* sql`DROP TABLE IF EXISTS customers`
        yield* sql`CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(100) NOT NULL)`
        yield* Session.transact(sql`INSERT INTO customers VALUES (1, 'Ada'), (2, 'Grace')`)
        yield* sql`INSERT INTO customers VALUES (3, 'Temp')`.pipe(Effect.provide(SessionTest.SessionTest))
        assert.deepStrictEqual(yield* customerNames, ["Ada", "Grace"])
      })
    )

    it.effect("a read-only unit: in SessionTest.layer({ readOnly: true }), refused in the default SessionTest", () =>
      Effect.gen(function* () {
        const names = yield* customerNames.pipe(Effect.provide(SessionTest.layer({ readOnly: true })))
        assert.deepStrictEqual(names, ["Ada", "Grace"])
        const refused = yield* Effect.flip(customerNames.pipe(Effect.provide(SessionTest.SessionTest)))
        assert.strictEqual(refused._tag, "InvalidOption")
      })
    )
  }
)
