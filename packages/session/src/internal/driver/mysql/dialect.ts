/**
 * MySQL's and MariaDB's statements, as the core needs them: transactions, savepoints, the per-unit settings, KILL,
 * health checks, causality waits and the keyed-unit table.
 *
 * @internal
 */
import type { Dialect, Settings } from "../types.js"
import { cachedTest } from "../shared.js"

/** The server family: the few statements that differ. @internal */
export type Flavor = "mariadb" | "mysql"

/** The statements of a server family. @internal */
export const dialect = (flavor: Flavor): Dialect => ({
  autocommitOff: true,
  failedStatementFailsTransaction: false,
  deferrable: false,
  begin: ({ consistentSnapshot, readOnly }) =>
    consistentSnapshot
      ? "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"
      : readOnly
        ? "START TRANSACTION READ ONLY"
        : "START TRANSACTION",
  commit: "COMMIT",
  rollback: "ROLLBACK",
  savepoint: (name) => `SAVEPOINT ${name}`,
  releaseSavepoint: (name) => `RELEASE SAVEPOINT ${name}`,
  rollbackToSavepoint: (name) => `ROLLBACK TO SAVEPOINT ${name}`,
  statusProbe: "DO 0",
  settingsSql: (cur, want) => {
    const parts: Array<string> = []
    if (want.lockWait !== cur.lockWait) parts.push(`innodb_lock_wait_timeout = ${want.lockWait}`)
    if (want.statementTime !== cur.statementTime) {
      parts.push(`${flavor === "mariadb" ? "max_statement_time" : "max_execution_time"} = ${want.statementTime}`)
    }
    if (want.isolation !== cur.isolation) {
      const name = flavor === "mariadb" ? "tx_isolation" : "transaction_isolation"
      parts.push(`${name} = '${want.isolation.replace(/ /g, "-")}'`)
    }
    if (want.autocommit !== cur.autocommit) parts.push(`autocommit = ${want.autocommit ? 1 : 0}`)
    return parts.length === 0 ? undefined : `SET SESSION ${parts.join(", ")}`
  },
  killQuery: (threadId) => `KILL QUERY ${threadId}`,
  killConnection: (threadId) => `KILL CONNECTION ${threadId}`
})

/** The statement time limit in the server's unit (MariaDB seconds, MySQL milliseconds; 0 = none). @internal */
export const statementTime = (flavor: Flavor, ms: number): number => (flavor === "mariadb" ? ms / 1000 : Math.round(ms))

/** The server's values of the per-unit settings and its `sql_mode`. @internal */
export const baselineSql = (flavor: Flavor): string =>
  flavor === "mariadb"
    ? "SELECT @@innodb_lock_wait_timeout AS lw, @@max_statement_time AS st, @@tx_isolation AS iso, @@session.autocommit AS ac, @@session.sql_mode AS mode"
    : "SELECT @@innodb_lock_wait_timeout AS lw, @@max_execution_time AS st, @@transaction_isolation AS iso, @@session.autocommit AS ac, @@session.sql_mode AS mode"

/** The isolation level as `@@tx_isolation` spells it (`REPEATABLE-READ`) in the `SET TRANSACTION` form. */
const isolationName = (v: unknown): string =>
  String(v ?? "")
    .replace(/-/g, " ")
    .toUpperCase()

/** The baseline from the row of `baselineSql`. @internal */
export const baselineOf = (
  row: Record<string, unknown>
): { readonly settings: Settings; readonly sqlMode?: string } => ({
  settings: {
    lockWait: Number(row.lw),
    statementTime: Number(row.st),
    isolation: isolationName(row.iso),
    autocommit: Number(row.ac) !== 0
  },
  ...(typeof row.mode === "string" ? { sqlMode: row.mode } : {})
})

const quoteString = (s: string) => `'${s.replace(/'/g, "''")}'`

/** `USE` of a database (a reset keeps the current database on MariaDB 10.11). @internal */
export const useSql = (database: string): string => `USE \`${database.replace(/`/g, "``")}\``

/**
 * What every new (or reset) connection is asked: flag session state changes, the handshake's `sql_mode` again, and
 * (causality tokens) report each commit's GTID. `undefined` when there is nothing to ask.
 *
 * @internal
 */
export const sessionSetupSql = (
  flavor: Flavor,
  o: { readonly stateTracking: boolean; readonly sqlMode: string | undefined; readonly trackCommits: boolean }
): string | undefined => {
  const parts: Array<string> = []
  if (o.stateTracking) parts.push("SESSION session_track_state_change = ON")
  if (o.sqlMode !== undefined) parts.push(`SESSION sql_mode = ${quoteString(o.sqlMode)}`)
  if (o.trackCommits) {
    parts.push(
      flavor === "mariadb"
        ? // a reset puts the list back to the global default: ask again every time
          "SESSION session_track_system_variables = CONCAT(@@global.session_track_system_variables, ',last_gtid')"
        : "SESSION session_track_gtids = OWN_GTID"
    )
  }
  return parts.length === 0 ? undefined : `SET ${parts.join(", ")}`
}

/**
 * Statements whose effect on the session the server does not flag (measured on MariaDB 10.11: named locks, table
 * locks, `CREATE TEMPORARY TABLE … SELECT`, `SET TRANSACTION …` for the next transaction; result sets carry no
 * state-change flag, so user variables assigned in a SELECT; and whatever a stored procedure does). A connection
 * that ran one is reset before reuse. Where the server does speak, its status flag decides.
 */
const UNFLAGGED =
  /(?<!@)@(?!@)|\bget_lock\b|\block\s+tables?\b|\block\s+instance\b|\bcall\b|\bhandler\b|\bxa\b|\btemporary\b|\btransaction\s+(?:isolation|read)\b/i

/** Whether a statement may change session state without the server saying so; cached per SQL text. @internal */
export const maybeUnflagged = cachedTest(UNFLAGGED)

/** Health checks and causality waits of a topology (MariaDB GTIDs). @internal */
export const topologySql = {
  serializableOnReplica: true,
  primary: "SELECT @@gtid_binlog_pos AS pos",
  replica:
    "SELECT @@gtid_slave_pos AS pos, (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'SLAVE_RUNNING') AS running",
  node: "SELECT VARIABLE_VALUE AS ready, @@gtid_binlog_pos AS pos FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'WSREP_READY'",
  /** Where a node stands, without waiting. */
  position: "SELECT @@gtid_binlog_pos AS applied",
  /** Waits on a replica for a token (bound as a value), up to a number of seconds (fractions allowed); 0 = applied. */
  replicaWait: "SELECT MASTER_GTID_WAIT(?, ?) AS applied",
  /** Waits on a Galera node for a token, up to whole seconds; 1 = applied, a lock wait timeout error otherwise. */
  nodeWait: "SELECT WSREP_SYNC_WAIT_UPTO_GTID(?, ?) AS applied",
  /** A causal read on a Galera node: it first applies what the cluster has committed. */
  causalReads: "SET SESSION wsrep_sync_wait = 1"
} as const

/** The keyed-unit table. Keys compare byte for byte (VARBINARY): `"K"`, `"k"` and `"k "` are three keys. @internal */
export const keysSql = (table: string) =>
  ({
    create: `CREATE TABLE IF NOT EXISTS ${table} (
  unit_key VARBINARY(255) NOT NULL PRIMARY KEY,
  committed_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE = InnoDB`,
    insert: `INSERT INTO ${table} (unit_key) VALUES (?)`,
    /** A locking read: it waits for a transaction that has inserted the key and not yet ended. */
    find: `SELECT 1 AS found FROM ${table} WHERE unit_key = ? LOCK IN SHARE MODE`,
    /** One batch of keys committed more than `?` seconds ago (small batches: no long lock on the table). */
    prune: `DELETE FROM ${table} WHERE committed_at < NOW(6) - INTERVAL ? SECOND LIMIT 5000`
  }) as const
