import * as SqlClient from "@effect/sql/SqlClient"
import * as Effect from "effect/Effect"

export default Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  yield* sql`
    CREATE TABLE IF NOT EXISTS accounts (
      id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
      name VARCHAR(100) NOT NULL,
      balance BIGINT NOT NULL DEFAULT 0,
      created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
      CONSTRAINT accounts_balance_non_negative CHECK (balance >= 0)
    ) ENGINE=InnoDB
  `
  yield* sql`
    CREATE TABLE IF NOT EXISTS transfers (
      id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
      src BIGINT NULL,
      dst BIGINT NULL,
      amount BIGINT NOT NULL,
      idempotency_key VARCHAR(128) NULL,
      created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
      UNIQUE KEY transfers_idempotency_key (idempotency_key),
      KEY transfers_src (src, id),
      KEY transfers_dst (dst, id),
      CONSTRAINT transfers_src_fk FOREIGN KEY (src) REFERENCES accounts (id),
      CONSTRAINT transfers_dst_fk FOREIGN KEY (dst) REFERENCES accounts (id),
      CONSTRAINT transfers_amount_positive CHECK (amount > 0),
      CONSTRAINT transfers_has_account CHECK (src IS NOT NULL OR dst IS NOT NULL),
      CONSTRAINT transfers_distinct CHECK (src IS NULL OR dst IS NULL OR src <> dst)
    ) ENGINE=InnoDB
  `
})
