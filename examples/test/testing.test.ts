/**
 * docs/testing.md's example: an Engine on a private server in one line (the table dropped first, for MYSQL_URL).
 */
import { assert, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Session } from "@sessionfx/session"
import { MysqlServer, SessionTest } from "@sessionfx/testing"
import * as Effect from "effect/Effect"

const count = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  Effect.map(sql<{ n: number | string }>`SELECT COUNT(*) AS n FROM t`, (rows) => Number(rows[0]!.n))
)

layer(MysqlServer.layerEngine(), { excludeTestServices: true })("MysqlServer.layerEngine", (it) => {
  it.effect("a unit of work commits; a rollback-only session writes nothing", () =>
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      yield* sql`DROP TABLE IF EXISTS t`
      yield* sql`CREATE TABLE t (id INT PRIMARY KEY)`
      yield* Session.transact(sql`INSERT INTO t VALUES (1)`)
      assert.strictEqual(yield* count, 1)
      yield* sql`INSERT INTO t VALUES (2)`.pipe(Effect.provide(SessionTest.SessionTest))
      assert.strictEqual(yield* count, 1)
      const server = yield* MysqlServer.MysqlServer
      assert.include(["mariadb", "mysql"], server.flavor)
    })
  )
})
