/**
 * Migrations with `@effect/sql`'s Migrator on a sessionfx Engine: the Migrator runs on the Engine's `SqlClient`
 * (autocommit, a pooled connection), records what it applied in its table (`effect_sql_migrations`) and applies each
 * migration once. In an application the migrations are files (`src/migrations/00001_create_customers.ts`, each with
 * an Effect as `export default`), loaded with `fromFileSystem(dir)` from `@effect/sql/Migrator/FileSystem` (with
 * `NodeContext.layer`); here they are inline, with `Migrator.fromRecord`.
 *
 *   pnpm --filter @sessionfx/examples examples migrations
 */
import * as Migrator from "@effect/sql/Migrator"
import * as SqlClient from "@effect/sql/SqlClient"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"

export const migrations = Migrator.fromRecord({
  "00001_create_customers": Effect.flatMap(
    SqlClient.SqlClient,
    (sql) => sql`CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(100) NOT NULL)`
  ),
  "00002_customer_email": Effect.flatMap(
    SqlClient.SqlClient,
    (sql) => sql`ALTER TABLE customers ADD COLUMN email VARCHAR(255) NULL`
  )
})

/** Applies the migrations not applied yet and returns them as `[id, name]`: a second run returns `[]`. */
export const migrate = Migrator.make({})({ loader: migrations })

/** At start-up (and in tests): the layers above it are built on a migrated database. */
export const MigrationsLive = Layer.effectDiscard(migrate)
