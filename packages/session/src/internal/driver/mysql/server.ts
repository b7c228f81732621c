/**
 * What the core knows of one MySQL or MariaDB server: its family and version, the server's values of the per-unit
 * settings, whether it flags session state changes, and what every new (or reset) connection is asked before it is
 * lent.
 *
 * @internal
 */
import type * as Mysql from "mysql2"
import { errors } from "./errors.js"
import type {
  Connector,
  Dialect,
  DriverErrors,
  DriverTarget,
  KeysTexts,
  RawConnection,
  ServerDriver,
  Settings,
  TopologyTexts
} from "../types.js"
import {
  baselineOf,
  baselineSql,
  dialect,
  type Flavor,
  keysSql,
  maybeUnflagged,
  sessionSetupSql,
  statementTime,
  topologySql,
  useSql
} from "./dialect.js"
import { connector } from "./connection.js"
import { install as installPacketWriter } from "./packet.js"
import { bigintParameter, bindValues, splitStatements } from "./values.js"

/** Where to connect. @internal */
export type Target = DriverTarget

const connectionOf = (target: Target): Mysql.ConnectionOptions => ({
  host: target.host,
  port: target.port,
  ...(target.socketPath ? { socketPath: target.socketPath } : {}),
  ...(target.database ? { database: target.database } : {}),
  ...(target.user ? { user: target.user } : {}),
  ...(target.password ? { password: target.password } : {}),
  ...(target.ssl !== undefined ? { ssl: target.ssl as string | Mysql.SslOptions } : {}),
  connectTimeout: target.connectTimeoutMs,
  // values are bound through the binary protocol, never formatted into text: one statement per command
  multipleStatements: false,
  supportBigNumbers: true,
  enableKeepAlive: true
})

/** @internal */
export interface ServerOptions {
  readonly target: Target
  /** Ask the server to report each commit's GTID in its OK packet (causality tokens). */
  readonly trackCommits: boolean
  /** The server refused GTID tracking: logged once. */
  readonly onCommitTrackingRefused: (message: string) => void
}

/** One server, as the driver knows it. @internal */
export class MysqlServer implements ServerDriver {
  flavor: Flavor = "mysql"
  version = ""
  dialect: Dialect = dialect("mysql")
  /** The server's values of the per-unit settings, read from the first connection. */
  baseline: Settings | undefined = undefined
  /** Whether the server flags session state changes (`session_track_state_change`). */
  stateTracking = true
  /** The `sql_mode` of a fresh connection, read from the first one (a reset leaves the server's). */
  sqlMode: string | undefined = undefined
  /** The server refused `last_gtid` tracking: its commits yield no tokens. */
  commitTrackingRefused = false
  readonly connect: Connector
  readonly errors: DriverErrors = errors
  readonly topology: TopologyTexts = topologySql
  readonly bind = bindValues
  readonly split = splitStatements

  constructor(readonly options: ServerOptions) {
    this.connect = connector(connectionOf(options.target))
    // statements whose values are all integers: their packet written without mysql2's generic encoder (same bytes)
    installPacketWriter(bigintParameter)
  }

  /** Learns the server family from `SELECT VERSION()`. */
  setVersion(version: string): void {
    this.version = version
    this.flavor = /mariadb/i.test(version) ? "mariadb" : "mysql"
    this.dialect = dialect(this.flavor)
  }

  /** A statement time limit (ms; 0 = none) in the server's unit. */
  statementTime(ms: number): number {
    return statementTime(this.flavor, ms)
  }

  keysSql(table: string): KeysTexts {
    return keysSql(table)
  }

  /** Whether a user statement leaves the connection needing a reset even if the server says nothing. */
  marksDirty(sql: string): boolean {
    return !this.stateTracking || maybeUnflagged(sql)
  }

  /** `SELECT VERSION()` on `conn`. */
  readVersion(conn: RawConnection, cb: (err: unknown, version?: string) => void): void {
    conn.query("SELECT VERSION() AS v", false, (err, reply) => {
      if (err) return cb(err)
      const rows = reply?.rows as ReadonlyArray<{ readonly v?: unknown }> | undefined
      cb(null, String(rows?.[0]?.v ?? ""))
    })
  }

  /**
   * Every new connection, and every connection after a reset: ask the server to flag session state changes (and
   * report commit GTIDs), put back the handshake's sql_mode and database, and learn the server's values of the
   * per-unit settings (once). Calls back with the connection's settings.
   */
  prepare(conn: RawConnection, cb: (err: unknown, settings?: Settings) => void): void {
    const trackCommits = this.options.trackCommits && !this.commitTrackingRefused
    const setup = sessionSetupSql(this.flavor, {
      stateTracking: this.stateTracking,
      sqlMode: this.sqlMode,
      trackCommits
    })
    // the session's autocommit as the server says it now (its default: a reset does not run init_connect again, and
    // a later SET GLOBAL changes it), not as the first connection's baseline said
    const next = (autocommit: boolean | undefined) =>
      this.withSchema(conn, (err, settings) =>
        cb(
          err,
          settings === undefined || autocommit === undefined || autocommit === settings.autocommit
            ? settings
            : { ...settings, autocommit }
        )
      )
    if (setup === undefined) return next(undefined)
    conn.query(setup, false, (err, reply) => {
      if (!err) return next(reply?.autocommit)
      if (errors.isFatal(err)) return cb(err)
      if (trackCommits) {
        // the server (or a proxy) refuses GTID tracking: no causality tokens from it, the rest as usual
        this.commitTrackingRefused = true
        this.options.onCommitTrackingRefused(
          `refused commit GTID tracking (${(err as Error).message}): its commits yield no causality tokens, so read-only units do not wait for them`
        )
        return this.prepare(conn, cb)
      }
      if (!this.stateTracking) return cb(err)
      // a server without session tracking: every connection a user statement touched is reset on return
      this.stateTracking = false
      this.prepare(conn, cb)
    })
  }

  /** A reset keeps the current database (MariaDB 10.11): go back to the one the connection was opened with. */
  private withSchema(conn: RawConnection, cb: (err: unknown, settings?: Settings) => void): void {
    const database = this.options.target.database
    if (this.baseline === undefined || database === undefined) return this.withBaseline(conn, cb)
    conn.query(useSql(database), false, (err) => (err ? cb(err) : this.withBaseline(conn, cb)))
  }

  private withBaseline(conn: RawConnection, cb: (err: unknown, settings?: Settings) => void): void {
    if (this.baseline !== undefined) return cb(null, this.baseline)
    conn.query(baselineSql(this.flavor), false, (err, reply) => {
      if (err) return cb(err)
      const row = (reply?.rows as ReadonlyArray<Record<string, unknown>> | undefined)?.[0] ?? {}
      const base = baselineOf(row)
      this.sqlMode ??= base.sqlMode
      this.baseline ??= base.settings
      cb(null, this.baseline)
    })
  }
}
