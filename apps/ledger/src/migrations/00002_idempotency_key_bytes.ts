/**
 * Idempotency keys compare byte for byte. Under the table's default collation (`utf8mb4_general_ci`) keys that differ
 * only in case, trailing spaces, accents or Unicode normalisation form were "the same key", so a new payment was
 * answered with an earlier one and no money moved. VARBINARY compares bytes (no collation, no PAD SPACE), on MariaDB
 * and MySQL alike; 512 bytes hold 128 characters of UTF-8. Existing keys were unique under the looser comparison, so
 * they stay unique; their bytes are kept as they are.
 *
 * On PostgreSQL there is nothing to do: 00001 creates the key as `bytea` (at most 512 bytes) there.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as Effect from "effect/Effect"

export default Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql.onDialectOrElse({
    pg: () => Effect.void,
    orElse: () => sql`ALTER TABLE transfers MODIFY idempotency_key VARBINARY(512) NULL`
  })
)
