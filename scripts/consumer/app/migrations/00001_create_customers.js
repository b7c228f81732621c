// A migration file as an application keeps it: an Effect as the default export.
import * as SqlClient from "@effect/sql/SqlClient"
import * as Effect from "effect/Effect"

export default Effect.flatMap(
  SqlClient.SqlClient,
  (sql) => sql`CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(100) NOT NULL)`
)
