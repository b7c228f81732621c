import { assert, layer } from "@effect/vitest"
import * as MysqlClient from "@effect/sql-mysql2/MysqlClient"
import { MysqlServer } from "@sessionfx/testing"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"

interface Row {
  readonly id: number
  readonly note: string
}

// an independent pool (its own connections) for the application user
const client = Effect.gen(function* () {
  const server = yield* MysqlServer.MysqlServer
  const context = yield* Layer.build(MysqlClient.layer({ url: server.url, maxConnections: 2 }))
  return Context.get(context, MysqlClient.MysqlClient)
})

layer(MysqlServer.layer())("smoke", (it) => {
  it.scoped("answers SELECT VERSION()", () =>
    Effect.gen(function* () {
      const server = yield* MysqlServer.MysqlServer
      const sql = yield* client
      const rows = yield* sql<{ readonly version: string }>`SELECT VERSION() AS version`
      assert.strictEqual(rows[0]?.version, server.version)
      assert.match(server.version, /^\d+\.\d+\.\d+/)
      assert.strictEqual(server.flavor, /mariadb/i.test(server.version) ? "mariadb" : "mysql")
    })
  )

  it.scoped("a committed row is visible from an independent connection, an uncommitted one is not", () =>
    Effect.gen(function* () {
      const writer = yield* client
      const reader = yield* client
      const [writerId] = yield* writer<{ readonly id: number }>`SELECT CONNECTION_ID() AS id`
      const [readerId] = yield* reader<{ readonly id: number }>`SELECT CONNECTION_ID() AS id`
      assert.notStrictEqual(writerId?.id, readerId?.id)

      yield* writer`CREATE TABLE smoke_rows (id INT PRIMARY KEY, note VARCHAR(50) NOT NULL) ENGINE=InnoDB`
      // a reserved connection with a hand-made transaction: @effect/sql's withTransaction would also capture the
      // reader's statements (its transaction connection lives in the fiber's context, shared by every client)
      const connection = yield* writer.reserve
      yield* connection.executeRaw("START TRANSACTION", [])
      yield* connection.executeRaw("INSERT INTO smoke_rows (id, note) VALUES (?, ?)", [1, "committed"])
      const beforeCommit = yield* reader<Row>`SELECT id, note FROM smoke_rows`
      assert.deepStrictEqual(beforeCommit, [])
      yield* connection.executeRaw("COMMIT", [])

      const afterCommit = yield* reader<Row>`SELECT id, note FROM smoke_rows`
      assert.deepStrictEqual(
        afterCommit.map((row) => ({ id: row.id, note: row.note })),
        [{ id: 1, note: "committed" }]
      )
    })
  )

  it.scoped("the application user has no rights outside its database", () =>
    Effect.gen(function* () {
      const server = yield* MysqlServer.MysqlServer
      const sql = yield* client
      const createDatabase = yield* Effect.flip(sql`CREATE DATABASE other_db`)
      assert.match(String(createDatabase.cause), /denied/i)
      const readGrants = yield* Effect.flip(sql`SELECT user FROM mysql.user`)
      assert.match(String(readGrants.cause), /denied/i)
      const [current] = yield* sql<{ readonly db: string; readonly user: string }>`
        SELECT DATABASE() AS db, CURRENT_USER() AS user
      `
      assert.strictEqual(current?.db, server.database)
      assert.strictEqual(current?.user.split("@")[0], server.username)
    })
  )
})
