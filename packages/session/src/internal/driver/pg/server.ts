/**
 * What the core knows of one PostgreSQL server: its version, the server's values of the per-unit settings, and
 * what every new (or reset) connection is asked before it is lent.
 *
 * @internal
 */
import type * as Pg from "pg"
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
import { cachedTest } from "../shared.js"
import { connector } from "./connection.js"
import { baselineOf, baselineSql, dialect, keysSql, topologySql } from "./dialect.js"
import { errors } from "./errors.js"
import { bindValues } from "./values.js"

/** Where to connect. @internal */
export type Target = DriverTarget

/** `sslmode` as node-postgres takes it: off, on without checking the certificate, or on and checked. */
const sslOf = (ssl: unknown): Pg.ClientConfig["ssl"] => {
  if (ssl === undefined || ssl === false || ssl === "disable" || ssl === "false") return undefined
  if (ssl === "require" || ssl === "prefer" || ssl === "allow") return { rejectUnauthorized: false }
  if (ssl === true || ssl === "true" || ssl === "verify-full" || ssl === "verify-ca") return {}
  return typeof ssl === "object" ? (ssl as Pg.ClientConfig["ssl"]) : {}
}

const configOf = (target: Target): Pg.ClientConfig => {
  const ssl = sslOf(target.ssl)
  return {
    host: target.socketPath ?? target.host,
    port: target.port,
    ...(target.database ? { database: target.database } : {}),
    ...(target.user ? { user: target.user } : {}),
    ...(target.password ? { password: target.password } : {}),
    ...(ssl !== undefined ? { ssl } : {}),
    connectionTimeoutMillis: target.connectTimeoutMs,
    keepAlive: true,
    application_name: "sessionfx"
  }
}

/**
 * Statements whose effect on the session the server does not report (PostgreSQL reports only a few settings, by
 * ParameterStatus): SET / RESET outside `SET LOCAL`, `set_config`, PREPARE, LISTEN, temporary tables, cursors WITH
 * HOLD, session advisory locks (`pg_try_advisory_lock` too), roles. A connection that ran one is reset (DISCARD ALL)
 * before reuse. The verb is read after any leading comments (`/* tag *\/ SET …`, `-- tag` lines), as the server
 * reads it.
 */
const UNFLAGGED =
  /^(?:\s|\/\*[\s\S]*?\*\/|--[^\n]*(?:\n|$))*(?:set\s+(?!local\b)|reset\b|prepare\b|listen\b|discard\b)|\bset_config\b|\btemp(?:orary)?\b|\bwith\s+hold\b|\bpg_(?:try_)?advisory_lock(?:_shared)?\b|\bsession\s+authorization\b|\bset\s+role\b/i

/** Whether a statement may change the session where the server does not say so (`UNFLAGGED`). @internal */
export const maybeUnflagged = cachedTest(UNFLAGGED)

/** One PostgreSQL server, as the driver knows it. @internal */
export class PgServer implements ServerDriver {
  version = ""
  readonly dialect: Dialect = dialect
  /** The server's values of the per-unit settings, read from the first connection. */
  baseline: Settings | undefined = undefined
  readonly connect: Connector
  readonly errors: DriverErrors = errors
  readonly topology: TopologyTexts = topologySql
  readonly bind = bindValues

  /** `trackCommits`: commits yield causality tokens (an engine with replicas; see `commitToken.ts`). */
  constructor(
    readonly target: Target,
    trackCommits = false
  ) {
    this.connect = connector(configOf(target), trackCommits)
  }

  setVersion(version: string): void {
    this.version = version
  }

  /** `statement_timeout` is in milliseconds. */
  statementTime(ms: number): number {
    return Math.round(ms)
  }

  keysSql(table: string): KeysTexts {
    return keysSql(table)
  }

  marksDirty(sql: string): boolean {
    return maybeUnflagged(sql)
  }

  /** One statement per command (the extended protocol refuses several): nothing to split. */
  split(_sql: string): undefined {
    return undefined
  }

  readVersion(conn: RawConnection, cb: (err: unknown, version?: string) => void): void {
    conn.query("SELECT version() AS v", false, (err, reply) => {
      if (err) return cb(err)
      const rows = reply?.rows as ReadonlyArray<{ readonly v?: unknown }> | undefined
      cb(null, String(rows?.[0]?.v ?? ""))
    })
  }

  /** A new or reset connection: the server's values of the per-unit settings, learnt once. */
  prepare(conn: RawConnection, cb: (err: unknown, settings?: Settings) => void): void {
    if (this.baseline !== undefined) return cb(null, this.baseline)
    conn.query(baselineSql, false, (err, reply) => {
      if (err) return cb(err)
      const row = (reply?.rows as ReadonlyArray<Record<string, unknown>> | undefined)?.[0] ?? {}
      this.baseline ??= baselineOf(row)
      cb(null, this.baseline)
    })
  }
}
