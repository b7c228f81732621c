/**
 * PostgreSQL's statements, as the core needs them: transactions, savepoints, the per-unit settings, cancel and
 * terminate, health checks, causality waits and the keyed-unit table.
 *
 * @internal
 */
import type { Dialect, KeysTexts, Settings, TopologyTexts } from "../types.js"
import { INSERTED } from "./commitToken.js"

const quote = (s: string) => `'${s.replace(/'/g, "''")}'`

/** One setting for the session (`is_local` false: it outlives the transaction, as the core's `Settings` do). */
const setConfig = (name: string, value: string) => `set_config(${quote(name)}, ${quote(value)}, false)`

/**
 * The statements of PostgreSQL. There is no autocommit-off mode: a unit sends BEGIN. The status probe is the empty
 * statement: it runs in every transaction state (a failed transaction too) and its ReadyForQuery carries the status.
 *
 * @internal
 */
export const dialect: Dialect = {
  autocommitOff: false,
  failedStatementFailsTransaction: true,
  deferrable: true,
  begin: ({ consistentSnapshot, deferrable, readOnly }) =>
    deferrable
      ? "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE"
      : consistentSnapshot
        ? "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
        : readOnly
          ? "BEGIN READ ONLY"
          : "BEGIN",
  commit: "COMMIT",
  rollback: "ROLLBACK",
  savepoint: (name) => `SAVEPOINT ${name}`,
  releaseSavepoint: (name) => `RELEASE SAVEPOINT ${name}`,
  rollbackToSavepoint: (name) => `ROLLBACK TO SAVEPOINT ${name}`,
  statusProbe: "",
  settingsSql: (cur, want) => {
    const parts: Array<string> = []
    // lock waits in seconds (the core's unit), lock_timeout in milliseconds; 0 = none on both sides
    if (want.lockWait !== cur.lockWait) parts.push(setConfig("lock_timeout", String(Math.round(want.lockWait * 1000))))
    if (want.statementTime !== cur.statementTime) {
      parts.push(setConfig("statement_timeout", String(Math.round(want.statementTime))))
    }
    if (want.isolation !== cur.isolation) {
      parts.push(setConfig("default_transaction_isolation", want.isolation.toLowerCase()))
    }
    return parts.length === 0 ? undefined : `SELECT ${parts.join(", ")}`
  },
  killQuery: (pid) => `SELECT pg_cancel_backend(${Math.trunc(pid)})`,
  // waits (up to 5 s) until the backend has exited: its transaction is over for good when this answers
  killConnection: (pid) => `SELECT pg_terminate_backend(${Math.trunc(pid)}, 5000)`
}

/** The server's values of the per-unit settings, in the core's units (lock waits in seconds). @internal */
export const baselineSql =
  "SELECT current_setting('lock_timeout') AS lw, current_setting('statement_timeout') AS st, current_setting('default_transaction_isolation') AS iso"

const UNITS: Readonly<Record<string, number>> = { us: 0.001, ms: 1, s: 1000, min: 60_000, h: 3_600_000, d: 86_400_000 }

/** `current_setting` of a time setting (`0`, `1500ms`, `5s`, `1min`) in milliseconds. @internal */
export const millisOf = (v: unknown): number => {
  const m = /^\s*(-?\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(String(v ?? "0"))
  if (m === null) return 0
  return Number(m[1]) * (UNITS[m[2]!.toLowerCase()] ?? 1)
}

/** The baseline from the row of `baselineSql`. @internal */
export const baselineOf = (row: Record<string, unknown>): Settings => ({
  lockWait: millisOf(row.lw) / 1000,
  statementTime: millisOf(row.st),
  isolation: String(row.iso ?? "read committed").toUpperCase(),
  autocommit: true
})

/** The cluster's identifier (shared by a primary and its physical replicas), the first part of every position. */
const SYSTEM = "(SELECT system_identifier FROM pg_control_system())::text || ':' || "

/** The WAL receiver is up: a non-superuser sees its row but not its `status` (NULL), which counts as streaming. */
const RECEIVING = "EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE coalesce(status, 'streaming') = 'streaming')"

/**
 * Health checks and causality waits: positions are `system_identifier:LSN` (see `commitToken.ts`); the primary's is
 * its insert position less a page header it may point past, at or after every commit that has answered (an
 * asynchronous one too), the replica's what it has replayed. A replica is
 * healthy while it is a standby whose WAL receiver streams (a paused replay is not a fault: its lag, measured against
 * the primary's positions over time, takes it out past `maxReplicaLag`). There is no server-side wait: the core polls
 * `position` (`replicaWait` undefined). No multi-primary clusters: `node` and `nodeWait` answer nothing.
 *
 * @internal
 */
export const topologySql: TopologyTexts = {
  serializableOnReplica: false,
  primary: `SELECT ${SYSTEM}(${INSERTED})::text AS pos`,
  replica:
    `SELECT ${SYSTEM}pg_last_wal_replay_lsn()::text AS pos, ` +
    `CASE WHEN pg_is_in_recovery() AND ${RECEIVING} THEN 'ON' ELSE 'OFF' END AS running, ` +
    "CASE WHEN NOT pg_is_in_recovery() THEN 'not a standby (pg_is_in_recovery() is false): promoted, or not a replica' " +
    `WHEN NOT ${RECEIVING} THEN 'its WAL receiver is not streaming from the primary (pg_stat_wal_receiver)' END AS reason`,
  node: "SELECT 'OFF' AS ready, NULL AS pos WHERE false",
  position: `SELECT ${SYSTEM}(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text ELSE (${INSERTED})::text END) AS applied`,
  replicaWait: undefined,
  nodeWait: "SELECT 0 AS applied WHERE false",
  causalReads: "SELECT 1"
}

/**
 * The keyed-unit table. Keys compare byte for byte (`bytea` of the key's UTF-8): `"K"`, `"k"` and `"k "` are three
 * keys. A second unit inserting a key that another has inserted and not yet committed waits for it (the unique
 * index), then fails with a duplicate key if it committed.
 *
 * @internal
 */
export const keysSql = (table: string): KeysTexts => ({
  create: `CREATE TABLE IF NOT EXISTS ${table} (
  unit_key bytea NOT NULL PRIMARY KEY,
  committed_at timestamptz NOT NULL DEFAULT clock_timestamp()
)`,
  insert: `INSERT INTO ${table} (unit_key) VALUES (convert_to($1, 'UTF8'))`,
  // an uncommitted row is invisible to a read (FOR SHARE too: it would answer "absent" at once while the unit holding
  // the key still runs); inserting the key waits on its unique index for that unit, then conflicts if it committed.
  // The probe's own row never stays: it runs in a transaction that is rolled back (`findWithin`).
  find: `WITH probe AS (INSERT INTO ${table} (unit_key) VALUES (convert_to($1, 'UTF8')) ON CONFLICT DO NOTHING RETURNING 1)
SELECT 1 AS found WHERE NOT EXISTS (SELECT 1 FROM probe)`,
  findWithin: {
    begin: "BEGIN ISOLATION LEVEL READ COMMITTED",
    bound: "SELECT set_config('lock_timeout', $1, true)",
    end: "ROLLBACK"
  },
  prune: `DELETE FROM ${table} WHERE ctid IN (SELECT ctid FROM ${table} WHERE committed_at < clock_timestamp() - make_interval(secs => $1::float8) LIMIT 5000)`
})
