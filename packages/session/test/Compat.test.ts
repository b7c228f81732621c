import { assert, layer } from "@effect/vitest"
import * as Model from "@effect/sql/Model"
import * as SqlClient from "@effect/sql/SqlClient"
import * as SqlResolver from "@effect/sql/SqlResolver"
import * as SqlSchema from "@effect/sql/SqlSchema"
import * as Migrator from "@effect/sql/Migrator"
import * as MysqlMigrator from "@effect/sql-mysql2/MysqlMigrator"
import * as NodeContext from "@effect/platform-node/NodeContext"
import { Session } from "@sessionfx/session"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import { DbTag, dialects, engineOn } from "./support/dialects.js"

class Person extends Model.Class<Person>("Person")({
  id: Model.Generated(Schema.Number),
  name: Schema.String
}) {}

const migrations = Migrator.fromRecord({
  "00001_people": Effect.flatMap(SqlClient.SqlClient, (sql) =>
    sql.onDialectOrElse({
      pg: () => Effect.asVoid(sql`CREATE TABLE people (id SERIAL PRIMARY KEY, name VARCHAR(50) NOT NULL)`),
      orElse: () =>
        Effect.asVoid(sql`CREATE TABLE people (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(50) NOT NULL)`)
    })
  )
})

/** `@effect/sql-mysql2`'s migrator on MariaDB; `@effect/sql`'s own (what `@effect/sql-pg`'s wraps) on PostgreSQL. */
const runMigrations = Effect.flatMap(DbTag, (db) =>
  db.name === "postgres"
    ? Migrator.make({})({ loader: migrations })
    : MysqlMigrator.run({ loader: migrations }).pipe(Effect.provide(NodeContext.layer))
)

for (const [name, dbLayer] of dialects) {
  layer(Layer.provideMerge(engineOn(), dbLayer), { timeout: 120_000, excludeTestServices: true })(
    `@effect/sql code runs unchanged on the Engine and inside a Session (${name})`,
    (it) => {
      it.effect("a migrator, Model repositories, SqlSchema and SqlResolver", () =>
        Effect.gen(function* () {
          const sql0 = yield* SqlClient.SqlClient
          yield* sql0`DROP TABLE IF EXISTS people, effect_sql_migrations`
          const applied = yield* runMigrations
          assert.deepStrictEqual(
            applied.map(([id, name]) => [id, name]),
            [[1, "people"]]
          )
          // the repository captures the Engine's client when it is built, outside any session
          const repo = yield* Model.makeRepository(Person, {
            tableName: "people",
            spanPrefix: "People",
            idColumn: "id"
          })
          const sql = yield* SqlClient.SqlClient
          const findByName = SqlSchema.findAll({
            Request: Schema.String,
            Result: Person,
            execute: (name) => sql`SELECT * FROM people WHERE name = ${name}`
          })
          const byId = yield* SqlResolver.findById("PersonById", {
            Id: Schema.Number,
            Result: Person,
            ResultId: (p) => p.id,
            execute: (ids) => sql`SELECT * FROM people WHERE ${sql.in("id", ids)}`
          })
          const ada = yield* Session.transact(repo.insert(Person.insert.make({ name: "Ada" })))
          assert.strictEqual(ada.name, "Ada")
          // a repository call inside a unit that fails is rolled back with it
          yield* Effect.exit(
            Session.transact(Effect.zipRight(repo.insert(Person.insert.make({ name: "Ghost" })), Effect.fail("no")))
          )
          assert.strictEqual((yield* findByName("Ghost")).length, 0)
          assert.strictEqual((yield* findByName("Ada")).length, 1)
          const found = yield* Session.transact(byId.execute(ada.id))
          assert.strictEqual(found._tag, "Some")
        })
      )
    }
  )
}
