/**
 * The causality token of a PostgreSQL commit: the cluster's `system_identifier` (a primary and its physical replicas
 * share it) and a WAL position at or after the end of the commit's record, `7715455669126898549:0/1501250`.
 *
 * PostgreSQL reports no commit position in its replies, so a tracked COMMIT is sent as one simple-protocol Query of
 * three statements, one round trip: what the transaction is (inside it, before COMMIT), COMMIT, then the WAL position
 * (after it). Only a transaction that has an xid wrote anything another session can see; a read-only one yields no
 * token. The position after COMMIT:
 * - a synchronous commit (`synchronous_commit` other than `off`) has flushed its record before COMMIT answers, so
 *   `pg_current_wal_flush_lsn()` is at or past its end, and a replica can be sent all of it at once;
 * - an asynchronous one has not: `pg_current_wal_insert_lsn()` is past its end (the flush follows within
 *   `wal_writer_delay`). Right after a record that ends on a page boundary the insert position points past the next
 *   page's header, which no record ends at: that header is taken off, or a replica would never reach the token.
 *
 * Either may be a little past the commit (WAL other sessions wrote in between): never before it.
 *
 * @internal
 */

const onPrimary = (expr: string) => `CASE WHEN pg_is_in_recovery() THEN NULL ELSE (${expr})::text END`

/** The insert position, less a page header it may point past (see above). @internal */
export const INSERTED =
  "SELECT CASE WHEN o.file_offset = 40 THEN l - 40::numeric WHEN o.file_offset % b = 24 THEN l - 24::numeric ELSE l END " +
  "FROM pg_current_wal_insert_lsn() AS l, pg_walfile_name_offset(l) AS o, CAST(current_setting('wal_block_size') AS int) AS b"

/** The token's parts: `sys`, `flushed`, `inserted`; NULL positions on a standby (it refuses the WAL functions). */
const TOKEN_SQL =
  "SELECT (SELECT system_identifier FROM pg_control_system())::text AS sys, " +
  `${onPrimary("pg_current_wal_flush_lsn()")} AS flushed, ${onPrimary(INSERTED)} AS inserted`

/** The three statements of a tracked COMMIT. @internal */
export const TRACKED_COMMIT = [
  "SELECT pg_current_xact_id_if_assigned() IS NOT NULL AS wrote, current_setting('synchronous_commit') <> 'off' AS sync",
  "COMMIT",
  TOKEN_SQL
].join(";\n")

/** The token alone, for a write outside a unit (its own implicit transaction: committed when it answered). @internal */
export const TOKEN_AFTER = TOKEN_SQL

/** The row of `TOKEN_SQL`. */
interface TokenRow {
  readonly sys?: unknown
  readonly flushed?: unknown
  readonly inserted?: unknown
}

/** The token from the row of the token statement; `sync`: the commit was synchronous. @internal */
export const tokenOf = (row: TokenRow | undefined, sync: boolean): string | undefined => {
  const lsn = sync ? row?.flushed : row?.inserted
  if (row?.sys === undefined || row.sys === null || lsn === undefined || lsn === null) return undefined
  return `${String(row.sys)}:${String(lsn)}`
}

/** From the first statement's row: whether the transaction wrote, and whether its commit is synchronous. @internal */
export const commitKind = (row: { readonly wrote?: unknown; readonly sync?: unknown } | undefined) => ({
  wrote: row?.wrote === true,
  sync: row?.sync !== false
})

/** Command tags (their first word, as node-postgres gives them) of statements that change no data. */
const READS = new Set(
  "SELECT SHOW EXPLAIN FETCH MOVE BEGIN START COMMIT ROLLBACK SAVEPOINT RELEASE SET RESET DISCARD LISTEN UNLISTEN NOTIFY PREPARE DEALLOCATE DECLARE CLOSE LOAD".split(
    " "
  )
)

/** Words of a statement that a SELECT tag can hide a write behind (a data-modifying WITH, CREATE TABLE AS, …). */
const WRITE_WORDS = /\b(?:insert|update|delete|merge|into|create|nextval|setval)\b/i

/**
 * Whether a statement that ran outside a transaction may have committed a write: its command tag is not a read's,
 * or (a SELECT) its text has a word that writes. A SELECT of a function that writes is not seen: such a write,
 * outside a unit, yields no token (see `docs/postgresql.md`).
 *
 * @internal
 */
export const mayHaveWritten = (sql: string, command: string | null): boolean => {
  if (command === null) return false
  if (!READS.has(command)) return true
  // EXPLAIN ANALYZE runs its statement
  return (command === "SELECT" || command === "EXPLAIN") && WRITE_WORDS.test(sql)
}
