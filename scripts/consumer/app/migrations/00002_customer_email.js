import * as SqlClient from "@effect/sql/SqlClient"
import * as Effect from "effect/Effect"

export default Effect.flatMap(
  SqlClient.SqlClient,
  (sql) => sql`ALTER TABLE customers ADD COLUMN email VARCHAR(255) NULL`
)
