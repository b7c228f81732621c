/**
 * A mysql2 connection behind the seam (`RawConnection`): every reply carries the server's status flags and tracked
 * session state, prepared statements are kept per connection (bounded, evicted ones closed on the server), and
 * streamed rows arrive through mysql2's event mode with the socket paused for backpressure.
 *
 * @internal
 */
import * as Mysql from "mysql2"
import type { Connector, RawConnection, Reply, ReplyCallback, RowSink, RowStream } from "../types.js"
import { isUnknownStatement } from "./errors.js"

/** SERVER_STATUS_IN_TRANS */
const IN_TRANS = 0x1
/** SERVER_STATUS_AUTOCOMMIT */
const AUTOCOMMIT = 0x2
/** SERVER_SESSION_STATE_CHANGED */
const STATE_CHANGED = 0x4000

/** Where `trackEofStatus` records the status flags of the last EOF packet on a connection. */
const STATUS = Symbol.for("@sessionfx/session/eofStatus")
const PATCHED = Symbol.for("@sessionfx/session/eofStatusPatched")

/** How many prepared statements a connection keeps, at most (the server's `max_prepared_stmt_count` is shared). */
export const STATEMENTS_PER_CONNECTION = 256

// mysql2's packet and command internals are untyped
type Packet = any
type Issued = any

/**
 * mysql2 hands the status flags of an OK packet to the caller (`serverStatus`) but drops those of the EOF packet that
 * ends a result set. This records them on the connection, from the command's own prototype (Query, Execute): the
 * original parser runs unchanged.
 */
const trackEofStatus = (command: unknown): void => {
  const proto = command !== null && typeof command === "object" ? Object.getPrototypeOf(command) : undefined
  if (proto === undefined || proto === null || proto[PATCHED] === true || typeof proto.row !== "function") return
  const row = proto.row as (packet: Packet, connection: Packet) => unknown
  proto.row = function (this: unknown, packet: Packet, connection: Packet) {
    if (connection !== undefined && packet.isEOF()) connection[STATUS] = packet.eofStatusFlags()
    return row.call(this, packet, connection)
  }
  proto[PATCHED] = true
}

/** What mysql2 parses from an OK packet's session-state information. */
interface StateChanges {
  readonly systemVariables?: Record<string, string> | undefined
  readonly schema?: string | null | undefined
  readonly gtids?: ReadonlyArray<string> | undefined
  readonly trackStateChange?: string | null | undefined
}

interface Header {
  readonly serverStatus?: unknown
  readonly stateChanges?: StateChanges
}

/**
 * mysql2's result header (an OK packet): an instance of its `ResultSetHeader`, never a row — a row may well have a
 * column named `serverStatus` (`SELECT 0 AS serverStatus`), and must not speak for the server.
 */
const isHeader = (x: unknown): x is Header =>
  x !== null &&
  typeof x === "object" &&
  (x as { constructor?: { name?: unknown } }).constructor?.name === "ResultSetHeader"

/** The result header (OK packet) a command ended with: the last one of a multi-result; rows have none (EOF). */
const headerOf = (rows: unknown): Header | undefined => {
  if (isHeader(rows)) return rows
  if (!Array.isArray(rows)) return undefined
  const last = rows[rows.length - 1] as unknown
  return isHeader(last) ? last : undefined
}

/** The commit's GTID in an OK packet: MariaDB `last_gtid`, MySQL `session_track_gtids = OWN_GTID`. */
const gtidOf = (changes: StateChanges | undefined): string | undefined => {
  if (changes === undefined) return undefined
  const last = changes.systemVariables?.last_gtid
  if (typeof last === "string" && last !== "") return last
  const gtids = changes.gtids
  return gtids !== undefined && gtids.length > 0 ? gtids.join(",") : undefined
}

/**
 * Whether the only session state an OK packet reports is the commit's GTID: the server sets
 * SERVER_SESSION_STATE_CHANGED for it too, but it is not a change a reset would undo.
 */
const onlyGtid = (changes: StateChanges): boolean => {
  if (changes.trackStateChange !== null && changes.trackStateChange !== undefined) return false
  if (changes.schema !== null && changes.schema !== undefined) return false
  const vars = changes.systemVariables
  if (vars !== undefined) for (const k in vars) if (k !== "last_gtid") return false
  return true
}

const NO_STATE: Reply = {
  rows: undefined,
  inTransaction: undefined,
  autocommit: undefined,
  stateChanged: false,
  token: undefined
}

/** The reply of a command: its rows, and the status flags of its OK packet (or of the EOF packet that ended it). */
const replyOf = (conn: Mysql.Connection, rows: unknown): Reply => {
  const header = headerOf(rows)
  const status =
    header !== undefined && typeof header.serverStatus === "number"
      ? header.serverStatus
      : ((conn as unknown as Record<symbol, number | undefined>)[STATUS] ?? undefined)
  if (status === undefined) return { ...NO_STATE, rows }
  let stateChanged = false
  let token: string | undefined
  if ((status & STATE_CHANGED) !== 0) {
    const changes = header?.stateChanges
    token = gtidOf(changes)
    stateChanged = token === undefined || !onlyGtid(changes!)
  }
  return {
    rows,
    inTransaction: (status & IN_TRANS) !== 0,
    autocommit: (status & AUTOCOMMIT) !== 0,
    stateChanged,
    token
  }
}

/** What mysql2's `prepare` yields: executing it sends COM_STMT_EXECUTE and nothing else. */
interface PreparedStatement {
  execute(values: ReadonlyArray<unknown>, callback: (err: unknown, rows: unknown) => void): unknown
}

/** Closes a mysql2 connection at once, socket first. */
const hardClose = (conn: Mysql.Connection) => {
  try {
    ;(conn as unknown as { stream?: { destroy?: () => void } }).stream?.destroy?.()
  } catch {
    // already gone
  }
  try {
    conn.destroy()
  } catch {
    // already gone
  }
}

const ignore = () => undefined

/** One mysql2 connection as the core sees it. */
class MysqlConnection implements RawConnection {
  readonly threadId: number
  /**
   * The statements prepared on this connection, by SQL text, least recently used first. Bounded: an evicted one is
   * closed on the server (COM_STMT_CLOSE). Emptied on reset, which deallocates them on the server.
   */
  private readonly statements = new Map<string, PreparedStatement>()
  /**
   * The client character set mysql2 negotiated at connect. mysql2 follows `character_set_client` changes the server
   * reports (`SET NAMES`) and encodes strings accordingly, but not their undoing by a reset: restored after each.
   */
  private readonly charsetNumber: number

  constructor(readonly conn: Mysql.Connection) {
    this.threadId = conn.threadId ?? 0
    this.charsetNumber = (conn as unknown as { config: { charsetNumber: number } }).config.charsetNumber
    // the connect's listener goes; an error nobody listens for must never reach the process (a connection used for
    // one statement, a KILL or the version, has no `onGone` listener of its own)
    conn.removeAllListeners("error")
    conn.on("error", ignore)
  }

  private begin(): void {
    ;(this.conn as unknown as Record<symbol, unknown>)[STATUS] = undefined
  }

  readonly query = (sql: string, rowsAsArray: boolean, cb: ReplyCallback): void => {
    this.begin()
    const conn = this.conn
    const settle = (err: unknown, rows: unknown) => (err ? cb(err, undefined) : cb(null, replyOf(conn, rows)))
    try {
      trackEofStatus(rowsAsArray ? conn.query({ sql, rowsAsArray }, settle) : conn.query(sql, settle))
    } catch (e) {
      // mysql2 throws on arguments it cannot send
      cb(e, undefined)
    }
  }

  readonly execute = (sql: string, values: ReadonlyArray<unknown>, rowsAsArray: boolean, cb: ReplyCallback): void => {
    this.begin()
    const conn = this.conn
    const settle = (err: unknown, rows: unknown) => (err ? cb(err, undefined) : cb(null, replyOf(conn, rows)))
    try {
      if (rowsAsArray) {
        trackEofStatus(conn.execute({ sql, values: values as Array<unknown> as Array<never>, rowsAsArray }, settle))
      } else {
        this.executePrepared(sql, values, settle)
      }
    } catch (e) {
      cb(e, undefined)
    }
  }

  /**
   * A prepared statement through this connection's own statement map: once a text is prepared, executing it again
   * is one COM_STMT_EXECUTE, without what mysql2's `execute` does per call (an options object, a cache key string,
   * a second command through the queue).
   */
  private executePrepared(sql: string, values: ReadonlyArray<unknown>, settle: (err: unknown, rows: unknown) => void) {
    const known = this.statements.get(sql)
    if (known !== undefined) {
      // most recently used last, so that eviction takes the least recently used (only worth its cost near the bound)
      if (this.statements.size > STATEMENTS_PER_CONNECTION / 2) {
        this.statements.delete(sql)
        this.statements.set(sql, known)
      }
      return trackEofStatus(
        known.execute(values, (err, rows) => {
          // the server no longer has it: prepare it again (the server ran nothing)
          if (err && isUnknownStatement(err) && this.statements.get(sql) === known) {
            this.statements.delete(sql)
            return this.executePrepared(sql, values, settle)
          }
          settle(err, rows)
        })
      )
    }
    this.conn.prepare(sql, (err, statement) => {
      if (err) return settle(err, undefined)
      const stmt = statement as unknown as PreparedStatement
      if (this.statements.size >= STATEMENTS_PER_CONNECTION) {
        // COM_STMT_CLOSE, and out of mysql2's own cache too (a closed statement must never be found there again)
        const oldest = this.statements.keys().next().value!
        this.statements.delete(oldest)
        this.conn.unprepare(oldest)
      }
      this.statements.set(sql, stmt)
      trackEofStatus(stmt.execute(values, settle))
    })
  }

  readonly stream = (sql: string, values: ReadonlyArray<unknown>, sink: RowSink): RowStream => {
    this.begin()
    const conn = this.conn
    let issued: Issued
    try {
      // the same prepared statement (mysql2's cache key) as `execute` with values
      issued = conn.execute({ sql, values: values as Array<unknown> as Array<never> })
    } catch (e) {
      sink.end(e, undefined)
      return { skipRest: () => undefined }
    }
    trackEofStatus(issued)
    // a statement without a result set (INSERT, DDL, …) ends with an OK packet, which mysql2 emits as a `result`
    // after `fields` with no fields: it is no row, but its status flags end the command
    let columns: unknown = undefined
    let ok: unknown = undefined
    let reading = false
    issued.on("fields", (f: unknown) => {
      columns = f
    })
    issued.on("result", (row: unknown) => {
      if (columns === undefined) ok = row
      else {
        reading = true
        sink.row(row)
      }
    })
    issued.once("error", (e: unknown) => sink.end(e, undefined))
    issued.once("end", () => sink.end(null, replyOf(conn, ok)))
    return {
      // once the command is in its row state, its next state passes only the end of the result (EOF: status
      // flags, more results) to mysql2's own row state; error packets never reach a state
      skipRest: () => {
        if (!reading || typeof issued.next !== "function") return
        const rowState = issued.next as (packet: Packet, connection: Packet) => unknown
        const skip = function (this: unknown, packet: Packet, connection: Packet): unknown {
          return packet.isEOF() ? rowState.call(this, packet, connection) : skip
        }
        issued.next = skip
      }
    }
  }

  readonly ping = (cb: (err: unknown) => void): void => this.conn.ping((err) => cb(err ?? undefined))

  readonly reset = (cb: (err: unknown) => void): void => {
    this.statements.clear()
    this.conn.reset((err) => {
      if (!err)
        (this.conn as unknown as { config: { charsetNumber: number } }).config.charsetNumber = this.charsetNumber
      cb(err ?? undefined)
    })
  }

  readonly pause = (): void => this.conn.pause()
  readonly resume = (): void => this.conn.resume()
  readonly bytesRead = (): number => {
    const n = (this.conn as unknown as { stream?: { bytesRead?: unknown } }).stream?.bytesRead
    return typeof n === "number" ? n : 0
  }
  readonly destroy = (): void => hardClose(this.conn)
  readonly onGone = (listener: (err: unknown) => void): (() => void) => {
    const conn = this.conn
    const error = (e: unknown) => listener(e)
    const end = () => listener(undefined)
    conn.on("error", error)
    conn.on("end", end)
    return () => {
      conn.removeListener("error", error)
      conn.removeListener("end", end)
    }
  }
}

/** Opens mysql2 connections with `options`. @internal */
export const connector =
  (options: Mysql.ConnectionOptions): Connector =>
  (cb) => {
    let settled = false
    // mysql2's own statement cache (also used by streams and rows as arrays) is bounded the same way, and closes
    // what it evicts: the server's max_prepared_stmt_count is shared by every client
    const conn = Mysql.createConnection({ ...options, maxPreparedStatements: STATEMENTS_PER_CONNECTION })
    const done = (err: unknown) => {
      if (settled) return
      settled = true
      if (err) {
        hardClose(conn)
        cb(err)
      } else cb(null, new MysqlConnection(conn))
    }
    conn.once("error", done)
    conn.connect((err) => done(err))
  }
