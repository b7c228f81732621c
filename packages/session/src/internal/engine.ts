import type * as Reactivity from "@effect/experimental/Reactivity"
import type { Connection } from "@effect/sql/SqlConnection"
import { SqlError } from "@effect/sql/SqlError"
import * as Statement from "@effect/sql/Statement"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import type * as Metric from "effect/Metric"
import * as MetricLabel from "effect/MetricLabel"
import * as Runtime from "effect/Runtime"
import * as Stream from "effect/Stream"
import type * as Mysql from "mysql2"
import * as SessionError from "../SessionError.js"
import * as metrics from "./metrics.js"
import type { Restore } from "./lock.js"
import {
  ConnPool,
  type DestroyReason,
  hardClose,
  type Lease,
  type PooledConn,
  type PreparedStatement,
  type Settings
} from "./pool.js"
import { directStream } from "./stream.js"
import { bindValues, splitStatements } from "./values.js"
import { unitSites } from "./sites.js"
import { type Member, type Route, type Topology, WRITE } from "./topology.js"

/** @internal */
export type Isolation = "READ UNCOMMITTED" | "READ COMMITTED" | "REPEATABLE READ" | "SERIALIZABLE"

/** @internal */
export interface SessionDefaults {
  readonly isolation: Isolation | undefined
  readonly lockWaitTimeoutSeconds: number | undefined
  readonly statementTimeoutMs: number | undefined
}

type Transform = (<A extends object>(row: ReadonlyArray<A>) => ReadonlyArray<A>) | undefined

/**
 * Statements whose effect on the session the server does not flag (measured on MariaDB 10.11: named locks, table
 * locks, `CREATE TEMPORARY TABLE … SELECT`, `SET TRANSACTION …` for the next transaction; result sets carry no
 * state-change flag, so user variables assigned in a SELECT; and whatever a stored procedure does). A connection that ran one is reset before reuse. Where the server does speak (SET, temporary
 * tables, USE, PREPARE, …), its status flag decides, whatever the text looks like.
 */
const UNFLAGGED =
  /(?<!@)@(?!@)|\bget_lock\b|\block\s+tables?\b|\block\s+instance\b|\bcall\b|\bhandler\b|\bxa\b|\btemporary\b|\btransaction\s+(?:isolation|read)\b/i

const unflaggedCache = new Map<string, boolean>()

/** Whether a statement may change session state without the server saying so; cached per SQL text. @internal */
export const maybeUnflagged = (sql: string): boolean => {
  let v = unflaggedCache.get(sql)
  if (v === undefined) {
    v = UNFLAGGED.test(sql)
    if (unflaggedCache.size > 10_000) unflaggedCache.clear()
    unflaggedCache.set(sql, v)
  }
  return v
}

/** SERVER_STATUS_IN_TRANS */
const IN_TRANS = 0x1
/** SERVER_SESSION_STATE_CHANGED */
const STATE_CHANGED = 0x4000

/** Where `trackEofStatus` records the status flags of the last EOF packet on a connection. @internal */
export const STATUS = Symbol.for("@sessionfx/session/eofStatus")
const PATCHED = Symbol.for("@sessionfx/session/eofStatusPatched")

/**
 * mysql2 hands the status flags of an OK packet to the caller (`serverStatus`) but drops those of the EOF packet that
 * ends a result set. This records them on the connection, from the command's own prototype (Query, Execute): the
 * original parser runs unchanged.
 *
 * @internal
 */
export const trackEofStatus = (command: unknown): void => {
  const proto = command !== null && typeof command === "object" ? Object.getPrototypeOf(command) : undefined
  if (proto === undefined || proto === null || proto[PATCHED] === true || typeof proto.row !== "function") return
  const row = proto.row as (packet: any, connection: any) => unknown
  proto.row = function (this: unknown, packet: any, connection: any) {
    if (connection !== undefined && packet.isEOF()) connection[STATUS] = packet.eofStatusFlags()
    return row.call(this, packet, connection)
  }
  proto[PATCHED] = true
}

/** The status flags that ended a command: its OK packet, the last OK packet of a multi-result, or the EOF packet. */
const statusOf = (conn: Mysql.Connection, rows: unknown): number | undefined => {
  if (rows !== null && typeof rows === "object") {
    if (Array.isArray(rows)) {
      const last = rows[rows.length - 1] as { serverStatus?: unknown } | undefined
      if (last !== undefined && last !== null && typeof last.serverStatus === "number") return last.serverStatus
    } else if (typeof (rows as { serverStatus?: unknown }).serverStatus === "number") {
      return (rows as { serverStatus: number }).serverStatus
    }
  }
  return (conn as any)[STATUS]
}

/** The result header (OK packet) a command ended with: the last one of a multi-result. */
const headerOf = (rows: unknown): { readonly stateChanges?: StateChanges } | undefined => {
  if (rows === null || typeof rows !== "object") return undefined
  if (Array.isArray(rows)) {
    const last = rows[rows.length - 1] as unknown
    return last !== null && typeof last === "object" && !Array.isArray(last) ? (last as any) : undefined
  }
  return rows as any
}

/** What mysql2 parses from an OK packet's session-state information. */
interface StateChanges {
  readonly systemVariables?: Record<string, string> | undefined
  readonly schema?: string | null | undefined
  readonly gtids?: ReadonlyArray<string> | undefined
  readonly trackStateChange?: string | null | undefined
}

/** The commit's GTID in an OK packet: MariaDB `last_gtid`, MySQL `session_track_gtids = OWN_GTID`. @internal */
export const gtidOf = (changes: StateChanges | undefined): string | undefined => {
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

/** What a statement wants of the per-unit settings; `undefined` fields mean the server's value. @internal */
export interface Want {
  readonly lockWait?: number | undefined
  readonly statementTime?: number | undefined
  readonly isolation?: string | undefined
}

let engineSeq = 0

/** @internal */
export interface EngineImplOptions {
  /** The server's label (metrics, messages, `ServerStatus.name`). */
  readonly name: string
  /** The engine's label when this server is one of a topology's (metrics: `engine` and `server` labels). */
  readonly engineName?: string | undefined
  /** Its place in the topology (default `primary`). */
  readonly role?: "primary" | "replica" | "node" | undefined
  /** Ask the server to report each commit's GTID in its OK packet (causality tokens). */
  readonly trackCommits?: boolean | undefined
  readonly connection: Mysql.ConnectionOptions
  readonly describe: string
  readonly pool: {
    readonly size: number
    readonly minIdle: number
    readonly acquireTimeoutMs: number
    readonly idleTimeoutMs: number
    readonly maxLifetimeMs: number
    readonly validateAfterIdleMs: number
    readonly queueLimit: number
  }
  readonly killGraceMs: number
  readonly defaults: SessionDefaults
  readonly spanAttributes: ReadonlyArray<readonly [string, unknown]>
  readonly compiler: Statement.Compiler
  readonly transformRows: Transform
  /** Bound on COMMIT when the unit has no `timeout` of its own (default 10 s): past it, `CommitOutcomeUnknown`. */
  readonly commitTimeoutMs?: number | undefined
  /** A unit open longer than this is logged once with where it was opened (default 60 s; 0 = never). */
  readonly longUnitThresholdMs?: number | undefined
  /** Record the SQL text on statement spans (`db.query.text`). */
  readonly queryTextInSpans?: boolean | undefined
}

/** The isolation level as `@@tx_isolation` spells it (`REPEATABLE-READ`) in the `SET TRANSACTION` form. */
const isolationName = (v: unknown): string =>
  String(v ?? "")
    .replace(/-/g, " ")
    .toUpperCase()

/** Bound on control statements (SET, BEGIN, SAVEPOINT, RELEASE, ROLLBACK, a reset, a ping). */
const controlTimeout = (killGraceMs: number) => Math.max(5_000, killGraceMs)

/** A unit of work the engine watches for running too long (see `EngineImpl.watchUnits`). @internal */
export interface Watched {
  readonly startedAt: number
  warned: boolean
  readonly describe: () => string
  readonly log: (message: string) => void
}

/** @internal */
export class EngineImpl {
  readonly id = ++engineSeq
  /** Where a fiber finds its current session (frame) of this engine: one key per engine, so engines never mix. */
  readonly currentTag: Context.Tag<BaseConnection, BaseConnection>
  /**
   * The same, as a FiberRef: it survives `Effect.provide` of a whole context (a `SqlResolver` built with
   * `withContext: true` runs its batch with the context it was built with), so a request made inside a unit still
   * runs inside it.
   */
  readonly currentRef: FiberRef.FiberRef<BaseConnection | undefined> = FiberRef.unsafeMake<BaseConnection | undefined>(
    undefined
  )
  readonly pool: ConnPool
  flavor: "mariadb" | "mysql" = "mysql"
  version = ""
  /** The server's values of the per-unit settings, read from the first connection. */
  baseline: Settings | undefined = undefined
  /** Whether the server flags session state changes (`session_track_state_change`). */
  stateTracking = true
  /** The `sql_mode` of a fresh connection of this engine, read from the first one. */
  sqlMode: string | undefined = undefined
  /** Stable label arrays: Effect caches a metric's hook by the identity of its extra-tags array. */
  private readonly labelCache = new Map<string, ReadonlyArray<MetricLabel.MetricLabel>>()
  readonly labels: ReadonlyArray<MetricLabel.MetricLabel>
  private readonly killers = new Set<Mysql.Connection>()
  /** A connection kept open for KILL QUERY: it works when the server is at `max_connections`. */
  private control: Mysql.Connection | undefined = undefined
  private controlOpening = false
  private closed = false
  private gaugeTimer: ReturnType<typeof setInterval>
  private readonly gauges: ReadonlyArray<Metric.Metric.Gauge<number>>
  /** Units of work in progress, watched for `longUnitThreshold`. */
  readonly units = new Set<Watched>()
  readonly commitTimeoutMs: number
  readonly controlTimeoutMs: number
  readonly longUnitThresholdMs: number
  reactivity!: Reactivity.Reactivity["Type"]
  /** The engine's client: follows the fiber's current session of this engine, else autocommit. */
  client!: import("@effect/sql/SqlClient").SqlClient
  /** Replicas or nodes beside this server (this one is the engine's identity: its tags, client, units). */
  topology: Topology | undefined = undefined
  /** The server refused `last_gtid` tracking: its commits yield no tokens. */
  commitTrackingRefused = false
  /** This server's place in its engine's topology, if it has one. */
  member: Member | undefined = undefined
  /** Where the engine was built: its logger and services, for messages from callbacks. */
  runtime: Runtime.Runtime<never> | undefined = undefined

  /** Logs from callback land, with the logger of the program that built the engine. */
  log(level: "Info" | "Warning", message: string): void {
    const effect = level === "Info" ? Effect.logInfo(message) : Effect.logWarning(message)
    if (this.runtime === undefined) Effect.runFork(effect)
    else Runtime.runFork(this.runtime)(effect)
  }

  /** A commit on `pc` yielded `gtid`: its server has applied it, and the fiber's token takes it in. */
  observeCommit(pc: PooledConn, gtid: string | undefined): Effect.Effect<void> {
    if (gtid === undefined) return Effect.void
    ownerOf(this, pc).member?.noteApplied(gtid)
    return this.observe(gtid)
  }

  /** Merges the causality token of a commit into the fiber's. */
  observe(gtid: string | undefined): Effect.Effect<void> {
    return gtid === undefined ? Effect.void : FiberRef.update(this.tokenRef, (t) => mergeTokens(t, gtid))
  }
  /**
   * The causality token of the fiber: the GTIDs of the commits it made (or was handed) through this engine,
   * merged. Forked fibers inherit it; a joined fiber's is merged back.
   */
  readonly tokenRef: FiberRef.FiberRef<string | undefined> = FiberRef.unsafeMake<string | undefined>(undefined, {
    fork: (a) => a,
    join: (parent, child) => mergeTokens(parent, child)
  })

  constructor(readonly options: EngineImplOptions) {
    this.currentTag = Context.GenericTag<BaseConnection>(`@sessionfx/session/CurrentSession/${this.id}`)
    this.labels =
      options.engineName === undefined
        ? [MetricLabel.make("engine", options.name)]
        : [MetricLabel.make("engine", options.engineName), MetricLabel.make("server", options.name)]
    this.commitTimeoutMs = options.commitTimeoutMs ?? 10_000
    this.controlTimeoutMs = controlTimeout(options.killGraceMs)
    this.longUnitThresholdMs = options.longUnitThresholdMs ?? 60_000
    if (options.longUnitThresholdMs !== undefined && options.longUnitThresholdMs > 0) unitSites.capture = true
    const labels = this.labels
    this.pool = new ConnPool({
      ...options.pool,
      lifetimeJitter: 0.1,
      // values are bound through the binary protocol, never formatted into text: one statement per command
      connection: { ...options.connection, multipleStatements: false },
      describe: options.describe,
      controlTimeoutMs: this.controlTimeoutMs,
      onCreated: () => metrics.created.unsafeUpdate(1, labels),
      onDestroyed: (reason) => metrics.destroyed.unsafeUpdate(1, this.labelsWith("reason", reason)),
      onTimeout: () => metrics.acquireTimeouts.unsafeUpdate(1, labels),
      onWait: (millis) => metrics.acquireWait.unsafeUpdate(millis, labels),
      onDirtyReturn: (reason) => metrics.dirtyReturns.unsafeUpdate(1, this.labelsWith("reason", reason)),
      prepare: (pc, cb) => this.prepareConnection(pc, cb),
      // a replica or node whose connection the server or the network closed is taken out at once; its health
      // check brings it back
      onLost: (err) =>
        this.member?.takeOut(
          `a connection was lost${err instanceof Error ? `: ${err.message}` : " (closed by the server or the network)"}`
        )
    })
    this.gauges = [metrics.poolSize, metrics.poolInUse, metrics.poolIdle, metrics.poolWaiting]
    this.gaugeTimer = setInterval(() => {
      this.refreshGauges()
      this.watchUnits()
    }, 1000)
    this.gaugeTimer.unref()
  }

  /** The fiber's current session (frame) of this engine, if any. */
  current(fiber: Fiber.RuntimeFiber<any, any>): BaseConnection | undefined {
    return fiber.currentContext.unsafeMap.get(this.currentTag.key) ?? fiber.getFiberRef(this.currentRef)
  }

  /** Fills the pool and opens the control connection; call once the server's flavor is known. */
  start(): void {
    this.pool.fill()
    this.openControl()
  }

  /**
   * Every new connection, and every connection after a reset: ask the server to flag session state changes, and
   * learn the server's values of the per-unit settings (once per engine).
   */
  private prepareConnection(pc: PooledConn, cb: (err: unknown) => void): void {
    const conn = pc.conn
    pc.owner = this
    pc.lastGtid = undefined
    const withBaseline = () => {
      if (this.baseline !== undefined) {
        pc.settings = this.baseline
        return cb(null)
      }
      const sql =
        this.flavor === "mariadb"
          ? "SELECT @@innodb_lock_wait_timeout AS lw, @@max_statement_time AS st, @@tx_isolation AS iso, @@session.sql_mode AS mode"
          : "SELECT @@innodb_lock_wait_timeout AS lw, @@max_execution_time AS st, @@transaction_isolation AS iso, @@session.sql_mode AS mode"
      conn.query(sql, (err, rows: any) => {
        if (err) return cb(err)
        const r = rows?.[0] ?? {}
        this.sqlMode ??= typeof r.mode === "string" ? r.mode : undefined
        this.baseline ??= {
          lockWait: Number(r.lw),
          statementTime: Number(r.st),
          isolation: isolationName(r.iso)
        }
        pc.settings = this.baseline
        cb(null)
      })
    }
    // a reset keeps the current database (MariaDB 10.11): go back to the one the connection was opened with
    const database = this.options.connection.database
    const withSchema = () =>
      this.baseline === undefined || database === undefined
        ? withBaseline()
        : void conn.query(`USE \`${database.replace(/`/g, "``")}\``, (err) => (err ? cb(err) : withBaseline()))
    // a reset leaves the server's sql_mode, not the one the handshake set (IGNORE_SPACE): put it back
    const extra =
      (this.sqlMode === undefined ? "" : `, SESSION sql_mode = '${this.sqlMode.replace(/'/g, "''")}'`) +
      (this.options.trackCommits !== true || this.commitTrackingRefused
        ? ""
        : this.flavor === "mariadb"
          ? // a reset puts the list back to the global default: ask again every time
            ", SESSION session_track_system_variables = CONCAT(@@global.session_track_system_variables, ',last_gtid')"
          : ", SESSION session_track_gtids = OWN_GTID")
    if (!this.stateTracking) {
      if (extra === "") return withSchema()
      conn.query(`SET ${extra.slice(2)}`, (err) => (err ? cb(err) : withSchema()))
      return
    }
    conn.query(`SET SESSION session_track_state_change = ON${extra}`, (err) => {
      if (err) {
        if (SessionError.isFatal(err)) return cb(err)
        if (this.options.trackCommits === true && !this.commitTrackingRefused) {
          // the server (or a proxy) refuses GTID tracking: no causality tokens from it, the rest as usual
          this.commitTrackingRefused = true
          this.log(
            "Warning",
            `sessionfx: ${this.options.describe} refused commit GTID tracking (${(err as Error).message}): its commits yield no causality tokens, so read-only units do not wait for them`
          )
          return this.prepareConnection(pc, cb)
        }
        // a server without session tracking: every connection a user statement touched is reset on return
        this.stateTracking = false
      }
      withSchema()
    })
  }

  /** The `SET` that gives `pc` the settings `want` asks for, or `undefined` when it already has them. */
  settingsSql(pc: PooledConn, want: Want): { readonly sql: string; readonly settings: Settings } | undefined {
    const owner = ownerOf(this, pc)
    if (owner !== this) return owner.settingsSql(pc, want)
    const base = this.baseline
    if (base === undefined) return undefined
    const cur = pc.settings
    const lockWait = want.lockWait ?? base.lockWait
    const statementTime = want.statementTime ?? base.statementTime
    const isolation = want.isolation ?? base.isolation
    if (lockWait === cur.lockWait && statementTime === cur.statementTime && isolation === cur.isolation)
      return undefined
    const parts: Array<string> = []
    if (lockWait !== cur.lockWait) parts.push(`innodb_lock_wait_timeout = ${lockWait}`)
    if (statementTime !== cur.statementTime) {
      parts.push(
        this.flavor === "mariadb" ? `max_statement_time = ${statementTime}` : `max_execution_time = ${statementTime}`
      )
    }
    if (isolation !== cur.isolation) {
      const name = this.flavor === "mariadb" ? "tx_isolation" : "transaction_isolation"
      parts.push(`${name} = '${isolation.replace(/ /g, "-")}'`)
    }
    return { sql: `SET SESSION ${parts.join(", ")}`, settings: { lockWait, statementTime, isolation } }
  }

  /** The engine's label alone, for what belongs to units rather than to a server (commits, rollbacks, routing). */
  get unitLabels(): ReadonlyArray<MetricLabel.MetricLabel> {
    return (this._unitLabels ??= this.options.engineName === undefined ? this.labels : this.labels.slice(0, 1))
  }
  private _unitLabels: ReadonlyArray<MetricLabel.MetricLabel> | undefined

  /** `unitLabels` plus one more, as a stable array. */
  unitLabelsWith(key: string, value: string): ReadonlyArray<MetricLabel.MetricLabel> {
    if (this.options.engineName === undefined) return this.labelsWith(key, value)
    return this.labelsWith(key, value, true)
  }

  /** The engine's labels plus one more, as a stable array. */
  labelsWith(key: string, value: string, unit = false): ReadonlyArray<MetricLabel.MetricLabel> {
    const k = `${unit ? "u" : "s"}\u0000${key}\u0000${value}`
    let l = this.labelCache.get(k)
    if (l === undefined) {
      l = [...(unit ? this.unitLabels : this.labels), MetricLabel.make(key, value)]
      this.labelCache.set(k, l)
    }
    return l
  }

  refreshGauges(): void {
    const gauges = this.gauges
    const s = this.pool.stats()
    gauges[0]!.unsafeUpdate(s.size, this.labels)
    gauges[1]!.unsafeUpdate(s.inUse, this.labels)
    gauges[2]!.unsafeUpdate(s.idle, this.labels)
    gauges[3]!.unsafeUpdate(s.waiting, this.labels)
  }

  /** Logs (once) and counts every unit open longer than `longUnitThreshold`. */
  watchUnits(): void {
    const threshold = this.longUnitThresholdMs
    if (threshold <= 0 || this.units.size === 0) return
    const now = Date.now()
    for (const u of this.units) this.checkUnit(u, now, false)
  }

  /** Reports `u` once if it has been open longer than `longUnitThreshold` (also when it ends before a check). */
  checkUnit(u: Watched, now: number, ended: boolean): void {
    const threshold = this.longUnitThresholdMs
    if (u.warned || threshold <= 0 || now - u.startedAt < threshold) return
    u.warned = true
    metrics.longUnits.unsafeUpdate(1, this.unitLabels)
    u.log(
      `sessionfx: a unit of work on ${this.options.describe} ${ended ? "was" : "has been"} open for ${now - u.startedAt} ms (longUnitThreshold ${threshold} ms): its writes are invisible to others and its locks held until it ends. ${u.describe()}`
    )
  }

  stopTimers() {
    clearInterval(this.gaugeTimer)
  }

  /**
   * Takes a connection. Call it inside `uninterruptibleMask` with its `restore`: waiting is interruptible, and a
   * connection handed over while the fiber is being interrupted goes back to the pool — also when the interruption
   * lands after the hand-off, before the caller could register its finalizer.
   */
  borrow(
    restore: Restore,
    route: Route = WRITE
  ): Effect.Effect<PooledConn, SessionError.PoolTimeout | SessionError.ConnectionError> {
    return this.topology === undefined ? this.borrowHere(restore) : this.topology.borrow(restore, route)
  }

  /** `borrow` from this server's own pool. */
  borrowHere(restore: Restore): Effect.Effect<PooledConn, SessionError.PoolTimeout | SessionError.ConnectionError> {
    return Effect.suspend(() => {
      const lease: Lease = { pc: undefined, waiter: undefined }
      // the caller is uninterruptible here: a plain match is enough to see the interrupted exit
      return Effect.catchAllCause(restore(this.pool.acquire(lease)), (cause) => {
        this.pool.withdraw(lease)
        const pc = lease.pc
        if (pc !== undefined) {
          lease.pc = undefined
          this.release(pc, false)
        }
        return Effect.failCause(cause)
      })
    })
  }

  release(pc: PooledConn, reset: boolean, reason?: DestroyReason) {
    ownerOf(this, pc).pool.release(pc, reset, reason)
  }

  /** Closes a connection at once (its server rolls back whatever it had open). */
  destroy(pc: PooledConn, reason: DestroyReason, why?: string) {
    ownerOf(this, pc).pool.destroy(pc, reason, why)
  }

  private openControl(): void {
    if (this.closed || this.control !== undefined || this.controlOpening) return
    this.controlOpening = true
    this.pool.connect((err, conn) => {
      this.controlOpening = false
      if (err || !conn) return
      if (this.closed) return hardClose(conn)
      this.control = conn
      const gone = () => {
        if (this.control === conn) this.control = undefined
        hardClose(conn)
      }
      conn.removeAllListeners("error")
      conn.on("error", gone)
      conn.on("end", gone)
    })
  }

  /**
   * Sends `KILL QUERY` for a pooled connection: on the engine's control connection (open from the start, so it works
   * at `max_connections`), else on a fresh one. While it is in flight, nothing else is sent on that connection and it
   * is not lent again (`PooledConn.kills`): a KILL that lands late must not stop the next statement.
   */
  killQuery(pc: PooledConn, cb: (ok: boolean) => void): void {
    const owner = ownerOf(this, pc)
    if (owner !== this) return owner.killQuery(pc, cb)
    pc.kills++
    this.kill(`KILL QUERY ${pc.threadId}`, (ok) => {
      pc.kills--
      if (pc.kills === 0 && pc.afterKills !== undefined) {
        const held = pc.afterKills
        pc.afterKills = undefined
        for (const f of held) f()
      }
      cb(ok)
    })
  }

  /** `KILL CONNECTION`: ends a connection (and its transaction) the pool has already let go of. */
  killConnection(threadId: number, cb: (ok: boolean) => void): void {
    this.kill(`KILL CONNECTION ${threadId}`, cb)
  }

  /** A KILL on the control connection, else on a fresh one; "no such thread" counts as done. */
  private kill(text: string, cb: (ok: boolean) => void): void {
    const answer = (e: unknown) => cb(!e || (e as { errno?: number }).errno === ER_NO_SUCH_THREAD)
    const fresh = () =>
      this.pool.connect((err, conn) => {
        if (err || !conn) return cb(false)
        this.killers.add(conn)
        conn.query(text, (e) => {
          this.killers.delete(conn)
          hardClose(conn)
          answer(e)
        })
      })
    const control = this.control
    if (control === undefined) {
      this.openControl()
      return fresh()
    }
    let settled = false
    const dropControl = () => {
      if (this.control === control) this.control = undefined
      hardClose(control)
      this.openControl()
    }
    // a control connection that does not answer (a black-holed link) is replaced: KILL goes out on a fresh one
    const timer = setTimeout(() => {
      if (settled) return
      settled = true
      dropControl()
      fresh()
    }, this.controlTimeoutMs)
    timer.unref()
    control.query(text, (e) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      if (e && SessionError.isFatal(e)) {
        dropControl()
        return fresh()
      }
      answer(e)
    })
  }

  closeKillers() {
    this.closed = true
    for (const c of this.killers) hardClose(c)
    this.killers.clear()
    if (this.control !== undefined) hardClose(this.control)
    this.control = undefined
  }

  /**
   * Starts one command on a pooled connection; `done` is called exactly once when it settles. Returns the command
   * (to stop it: `Command.cancel`), or `undefined` when the connection is already gone (`done` has been called).
   * `values` must have been through `bindValues`. `internal` marks sessionfx's own control statements, whose session
   * state changes are accounted for (`PooledConn.settings`) rather than making the connection dirty.
   */
  startCommand(
    pc: PooledConn,
    method: "query" | "execute",
    sql: string,
    values: ReadonlyArray<unknown> | undefined,
    rowsAsArray: boolean,
    done: (err: SessionError.SessionError | undefined, rows: unknown) => void,
    deadlineMs?: number,
    internal = false
  ): Command | undefined {
    const owner = ownerOf(this, pc)
    if (owner !== this) return owner.startCommand(pc, method, sql, values, rowsAsArray, done, deadlineMs, internal)
    if (pc.closed || pc.broken) {
      done(
        new SessionError.ConnectionLost({
          message: `connection ${pc.threadId} is closed (killed, timed out or the server restarted); the unit can be retried`
        }),
        undefined
      )
      return undefined
    }
    if (!internal && (!this.stateTracking || maybeUnflagged(sql))) pc.dirty = true
    const command = new Command(this, pc, done, internal)
    if (pc.kills > 0) {
      // a KILL for an earlier statement is still in flight: send this one once it has been answered
      ;(pc.afterKills ??= []).push(() => {
        if (!command.settled && !command.cancelled) this.send(command, method, sql, values, rowsAsArray, deadlineMs)
        else if (!command.settled) command.callback(interruptedError(), undefined)
      })
      return command
    }
    this.send(command, method, sql, values, rowsAsArray, deadlineMs)
    return command
  }

  private send(
    command: Command,
    method: "query" | "execute",
    sql: string,
    values: ReadonlyArray<unknown> | undefined,
    rowsAsArray: boolean,
    deadlineMs: number | undefined
  ): void {
    const pc = command.pc
    if (pc.closed || pc.broken) {
      return command.callback(
        Object.assign(new Error(`connection ${pc.threadId} is closed`), {
          code: "PROTOCOL_CONNECTION_LOST",
          fatal: true
        }),
        undefined
      )
    }
    const settle = command.callback
    pc.pending = settle
    command.sent = true
    ;(pc.conn as any)[STATUS] = undefined
    if (deadlineMs !== undefined) {
      command.deadline = setTimeout(() => {
        // a replica or node that stops answering is taken out at once (a black-holed link closes nothing)
        this.member?.takeOut(`a statement got no answer within ${deadlineMs} ms`)
        this.pool.destroy(pc, "stateUnknown", `no answer within ${deadlineMs} ms`)
      }, deadlineMs)
    }
    try {
      let issued: unknown
      // values travel only through the binary protocol: a text query carries none (see `BaseConnection`)
      if (rowsAsArray) {
        issued =
          method === "execute" || (values !== undefined && values.length > 0)
            ? pc.conn.execute({ sql, values: values as Array<any> | undefined, rowsAsArray }, settle)
            : pc.conn.query({ sql, rowsAsArray }, settle)
      } else if (method === "execute" || (values !== undefined && values.length > 0)) {
        issued = executePrepared(pc, sql, values ?? [], settle)
      } else {
        issued = pc.conn.query(sql, settle)
      }
      trackEofStatus(issued)
    } catch (e) {
      // mysql2 throws on arguments it cannot send
      settle(e, undefined)
    }
  }

  /**
   * One of sessionfx's own statements (SET, BEGIN, SAVEPOINT, …): bounded by `controlTimeout`, its session state
   * accounted for by the caller. `done` learns whether it was cancelled while it ran.
   */
  controlStatement(
    pc: PooledConn,
    sql: string,
    done: (err: SessionError.SessionError | undefined, cancelled: boolean) => void
  ): Command | undefined {
    const holder: { c: Command | undefined } = { c: undefined }
    holder.c = this.startCommand(
      pc,
      "query",
      sql,
      undefined,
      false,
      (err) => done(err, holder.c?.cancelled === true),
      this.controlTimeoutMs,
      true
    )
    return holder.c
  }

  /**
   * Gives `pc` the settings `want` asks for — a SET only when it does not have them — then `next`. Returns the SET
   * in flight, or `undefined` when none was needed (`next` has run).
   */
  applySettings(
    pc: PooledConn,
    want: Want,
    next: () => void,
    fail: (e: SessionError.SessionError, cancelled: boolean) => void
  ): Command | undefined {
    const owner = ownerOf(this, pc)
    if (owner !== this) return owner.applySettings(pc, want, next, fail)
    const set = this.settingsSql(pc, want)
    if (set === undefined) {
      next()
      return undefined
    }
    return this.controlStatement(pc, set.sql, (err, cancelled) => {
      // a SET stopped by an interruption did not apply (KILL QUERY stops the statement): only the caller fails
      if (err !== undefined) return fail(err, cancelled)
      pc.settings = set.settings
      if (cancelled) return fail(interruptedError(), true)
      next()
    })
  }

  /**
   * Runs one statement on a pooled connection outside any unit (autocommit, `reserve`): the engine's default
   * settings, values bound or refused before anything is sent. Interrupting it stops the statement
   * (`Command.cancel`); a caller that is uninterruptible anyway passes `interruptible: false`.
   */
  run(
    pc: PooledConn,
    method: "query" | "execute",
    sql: string,
    values: ReadonlyArray<unknown> | undefined,
    rowsAsArray: boolean,
    interruptible = true
  ): Effect.Effect<unknown, SessionError.SessionError> {
    const owner = ownerOf(this, pc)
    const run = owner.runHere(pc, method, sql, values, rowsAsArray, interruptible)
    if (this.topology === undefined) return run
    // an autocommit write yields a causality token (engines with replicas or nodes track them)
    return Effect.suspend(() => {
      pc.lastGtid = undefined
      return Effect.tap(run, () => this.observeCommit(pc, pc.lastGtid))
    })
  }

  /** `run` on this server, the connection's owner. */
  private runHere(
    pc: PooledConn,
    method: "query" | "execute",
    sql: string,
    values: ReadonlyArray<unknown> | undefined,
    rowsAsArray: boolean,
    interruptible: boolean
  ): Effect.Effect<unknown, SessionError.SessionError> {
    return Effect.async<unknown, SessionError.SessionError>((resume) => {
      const bound = values === undefined ? undefined : bindValues(values)
      if (bound instanceof SessionError.BindError) return resume(Effect.fail(bound))
      let command: Command | undefined
      let stopped = false
      const parts = method === "query" ? splitStatements(sql) : undefined
      const main = () => {
        if (parts === undefined) {
          command = this.startCommand(pc, method, sql, bound, rowsAsArray, (err, rows) =>
            resume(err ? Effect.fail(err) : Effect.succeed(rows))
          )
          return
        }
        // a multi-statement text: each statement on its own, in order, with its own values
        const results: Array<unknown> = []
        let offset = 0
        const step = (k: number): void => {
          if (k === parts.length) return resume(Effect.succeed(results))
          if (stopped) return resume(Effect.fail(interruptedError()))
          const part = parts[k]!
          const values = (bound ?? []).slice(offset, offset + part.count)
          offset += part.count
          command = this.startCommand(
            pc,
            values.length > 0 ? "execute" : "query",
            part.sql,
            values,
            rowsAsArray,
            (err, rows) => {
              if (err) return resume(Effect.fail(err))
              results.push(rows)
              step(k + 1)
            }
          )
        }
        step(0)
      }
      const set = this.applySettings(pc, this.defaultWant, main, (err) => resume(Effect.fail(err)))
      if (set !== undefined) command = set
      return interruptible
        ? Effect.suspend(() => {
            stopped = true
            return command === undefined ? Effect.void : command.cancel()
          })
        : undefined
    })
  }

  /** What a statement outside any unit wants of the per-unit settings: the engine's defaults. */
  get defaultWant(): Want {
    return (this._defaultWant ??= wantOf(this, {
      lockWaitSeconds: this.options.defaults.lockWaitTimeoutSeconds,
      statementTimeMs: this.options.defaults.statementTimeoutMs,
      isolation: this.options.defaults.isolation
    }))
  }
  private _defaultWant: Want | undefined
}

/** The server a connection belongs to (`PooledConn.owner`): commands, KILLs and its release go through it. */
const ownerOf = (engine: EngineImpl, pc: PooledConn): EngineImpl => (pc.owner as EngineImpl | undefined) ?? engine

/** Merges two causality tokens: per replication domain, the later position. @internal */
export const mergeTokens = (a: string | undefined, b: string | undefined): string | undefined => {
  if (a === undefined || a === b) return b
  if (b === undefined) return a
  const byDomain = new Map<string, { readonly text: string; readonly seq: bigint }>()
  for (const text of `${a},${b}`.split(",")) {
    const m = /^(\d+)-\d+-(\d+)$/.exec(text.trim())
    if (m === null) return b // not a MariaDB GTID list (MySQL GTID sets): the later token
    const cur = byDomain.get(m[1]!)
    const seq = BigInt(m[2]!)
    if (cur === undefined || seq > cur.seq) byDomain.set(m[1]!, { text: text.trim(), seq })
  }
  return [...byDomain.values()].map((g) => g.text).join(",")
}

/** The settings a unit asks for, in the server's units. @internal */
export const wantOf = (
  engine: EngineImpl,
  o: {
    readonly lockWaitSeconds: number | undefined
    readonly statementTimeMs: number | undefined
    readonly isolation: string | undefined
  }
): Want => ({
  lockWait: o.lockWaitSeconds,
  statementTime:
    o.statementTimeMs === undefined
      ? undefined
      : engine.flavor === "mariadb"
        ? o.statementTimeMs / 1000
        : Math.round(o.statementTimeMs),
  isolation: o.isolation
})

/** "Unknown thread id": KILL for a connection that is already gone. */
const ER_NO_SUCH_THREAD = 1094

/** @internal */
export const interruptedError = () =>
  new SqlError({ message: "the statement was stopped before it ran: the fiber that issued it was interrupted" })

/**
 * One command on a pooled connection. It settles exactly once: from mysql2's callback, or when the connection is
 * destroyed under it (mysql2 never calls back the commands of a connection it was told to close). On settling it
 * records what the server reported: whether a transaction is open, whether session state changed.
 *
 * @internal
 */
export class Command {
  settled = false
  /** Written to the connection (a command held back behind a KILL is not, yet). */
  sent = false
  /** Someone asked to stop it (`cancel`): a caller chaining a follow-up command must not start it. */
  cancelled = false
  /** It settled without an error: whatever it did is done. */
  succeeded = false
  /** The status flags the server reported when it ended, if any. */
  status: number | undefined = undefined
  deadline: ReturnType<typeof setTimeout> | undefined = undefined
  private onSettled: (() => void) | undefined = undefined
  /** mysql2's callback, also what the pool calls when it destroys the connection (`PooledConn.pending`). */
  readonly callback: (err: unknown, rows: unknown) => void

  /** The server the connection belongs to: its pool, its KILLs, its place in a topology. */
  readonly engine: EngineImpl
  constructor(
    engine: EngineImpl,
    readonly pc: PooledConn,
    private readonly done: (err: SessionError.SessionError | undefined, rows: unknown) => void,
    readonly internal: boolean
  ) {
    this.engine = ownerOf(engine, pc)
    this.callback = (err, rows) => this.settle(err, rows)
  }

  private settle(err: any, rows: unknown): void {
    if (this.settled) return
    this.settled = true
    const pc = this.pc
    if (pc.pending === this.callback) pc.pending = undefined
    if (this.deadline !== undefined) clearTimeout(this.deadline)
    if (err) {
      if (SessionError.isFatal(err)) {
        // lost under a command, not closed by the pool (a deadline, an interruption): a replica or node of a
        // topology is taken out at once
        if (!pc.closed) this.engine.member?.takeOut(`a connection was lost: ${String(err.message ?? err.code ?? err)}`)
        pc.broken = true
      } else if (err.errno === 1047 && /wsrep/i.test(String(err.message))) {
        // a Galera node out of the primary component
        this.engine.member?.takeOut(`refused a statement: ${err.message}`)
      }
    } else {
      this.succeeded = true
      const status = statusOf(pc.conn, rows)
      this.status = status
      if (status !== undefined) {
        pc.inTrans = (status & IN_TRANS) !== 0
        if ((status & STATE_CHANGED) !== 0) {
          const changes = headerOf(rows)?.stateChanges
          const gtid = gtidOf(changes)
          if (gtid !== undefined) pc.lastGtid = gtid
          if (!this.internal && (gtid === undefined || !onlyGtid(changes!))) pc.dirty = true
        }
      }
    }
    this.done(err ? SessionError.classify(err) : undefined, rows)
    if (this.onSettled !== undefined) this.onSettled()
  }

  /**
   * Stops the command and completes when it has ended: KILL QUERY (resent until it lands), and if the command has
   * not ended after `killGrace`, the connection is destroyed. A command not yet sent is simply dropped.
   */
  cancel(): Effect.Effect<void> {
    return Effect.async<void>((resumeCancel) => {
      this.cancelled = true
      if (this.settled) return resumeCancel(Effect.void)
      if (!this.sent) {
        this.callback(interruptedError(), undefined)
        return resumeCancel(Effect.void)
      }
      const { engine, pc } = this
      let finished = false
      let killFailed = false
      const finish = () => {
        if (finished) return
        finished = true
        clearTimeout(timer)
        resumeCancel(
          killFailed
            ? Effect.logWarning(
                `sessionfx: KILL QUERY for connection ${pc.threadId} could not be sent; the connection was closed, but the server may finish the statement on its own`
              )
            : Effect.void
        )
      }
      const before = this.onSettled
      this.onSettled = before === undefined ? finish : () => (before(), finish())
      const timer = setTimeout(() => {
        engine.pool.destroy(
          pc,
          "interrupted",
          `the interrupted statement did not end within ${engine.options.killGraceMs} ms`
        )
      }, engine.options.killGraceMs)
      // KILL QUERY can reach the server before the statement does (then it stops nothing): send it again, with
      // growing pauses, until the statement has ended or the grace period is over
      let attempt = 0
      const kill = () => {
        if (this.settled || finished) return
        engine.killQuery(pc, (ok) => {
          if (this.settled || finished) return
          if (!ok) {
            killFailed = true
            return engine.pool.destroy(pc, "interrupted", "KILL QUERY could not be sent")
          }
          const again = setTimeout(kill, Math.min(500, 20 * 2 ** attempt++))
          again.unref()
        })
      }
      kill()
    })
  }
}

/** How many prepared statements a connection keeps by SQL text, at most. */
const STATEMENTS_PER_CONNECTION = 256

/** "Unknown prepared statement handler": a statement the server no longer has. */
const ER_UNKNOWN_STMT_HANDLER = 1243

/**
 * A prepared statement (binary protocol), through the connection's own statement map: once a text is prepared on
 * a connection, executing it again is one COM_STMT_EXECUTE command, without what mysql2's `execute` does on every
 * call (an options object, a Prepare command that looks its cache up by a key string built per call, and a
 * second command through the queue).
 */
const executePrepared = (
  pc: PooledConn,
  sql: string,
  values: ReadonlyArray<unknown>,
  settle: (err: unknown, rows: unknown) => void
): unknown => {
  const known = pc.statements.get(sql)
  if (known !== undefined) {
    return known.execute(values, (err, rows) => {
      // mysql2's own statement cache evicted and closed it: prepare it again (the server ran nothing)
      if (err && (err as { errno?: number }).errno === ER_UNKNOWN_STMT_HANDLER && pc.statements.get(sql) === known) {
        pc.statements.delete(sql)
        return executePrepared(pc, sql, values, settle)
      }
      settle(err, rows)
    })
  }
  pc.conn.prepare(sql, (err, statement) => {
    if (err) return settle(err, undefined)
    const stmt = statement as unknown as PreparedStatement
    if (pc.statements.size >= STATEMENTS_PER_CONNECTION) {
      // the oldest entry leaves this map only; mysql2's cache still owns (and closes) the statement
      pc.statements.delete(pc.statements.keys().next().value!)
    }
    pc.statements.set(sql, stmt)
    trackEofStatus(stmt.execute(values, settle))
  })
  return undefined
}

/** @internal */
export const toSqlError = (e: SessionError.SessionError): SqlError =>
  e instanceof SqlError ? e : new SqlError({ cause: e, message: e.message })

/** For `withTransaction`, whose error channel is `SqlError`: a `SessionError` travels as the cause. @internal */
export const sessionErrorsAsSqlError = <E>(e: E): E | SqlError =>
  SessionError.isSessionError(e) ? toSqlError(e as SessionError.SessionError) : e

const rowsOf = (results: unknown): ReadonlyArray<any> => (Array.isArray(results) ? results : [])

/**
 * The `@effect/sql` connection of a frame: a pooled connection plus the rule that decides whether a statement may
 * run (session open, frame open, one statement at a time).
 *
 * @internal
 */
export abstract class BaseConnection implements Connection {
  constructor(readonly engine: EngineImpl) {}

  abstract runStatement(
    method: "query" | "execute",
    sql: string,
    params: ReadonlyArray<unknown>,
    rowsAsArray: boolean
  ): Effect.Effect<unknown, SqlError>

  execute(sql: string, params: ReadonlyArray<unknown>, transformRows: Transform) {
    const eff = Effect.map(this.runStatement("execute", sql, params, false), rowsOf)
    return transformRows ? Effect.map(eff, transformRows) : eff
  }
  executeRaw(sql: string, params: ReadonlyArray<unknown>) {
    return this.runStatement("execute", sql, params, false)
  }
  executeValues(sql: string, params: ReadonlyArray<unknown>) {
    return Effect.map(this.runStatement("execute", sql, params, true), rowsOf) as Effect.Effect<
      ReadonlyArray<ReadonlyArray<unknown>>,
      SqlError
    >
  }
  executeUnprepared(sql: string, params: ReadonlyArray<unknown>, transformRows: Transform) {
    const eff = Effect.map(this.runStatement("query", sql, params, false), rowsOf)
    return transformRows ? Effect.map(eff, transformRows) : eff
  }
  executeStream(sql: string, params: ReadonlyArray<unknown>, transformRows: Transform): Stream.Stream<any, SqlError> {
    // rows are fetched whole and then streamed: the connection stays consistent and the frame's ordering holds
    return Stream.fromIterableEffect(this.execute(sql, params, transformRows))
  }
}

/** An autocommit statement on a connection borrowed for that one statement. @internal */
export class DirectConnection extends BaseConnection {
  constructor(
    engine: EngineImpl,
    readonly pc: PooledConn
  ) {
    super(engine)
  }
  runStatement(method: "query" | "execute", sql: string, params: ReadonlyArray<unknown>, rowsAsArray: boolean) {
    return Effect.mapError(this.engine.run(this.pc, method, sql, params, rowsAsArray), toSqlError)
  }

  /** Rows as the server sends them, on this connection (see `stream.ts`). */
  override executeStream(sql: string, params: ReadonlyArray<unknown>, transformRows: Transform) {
    return directStream(this.engine, this.pc, sql, params, transformRows)
  }
}

/** @internal */
export const borrowScoped = (engine: EngineImpl) =>
  Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(Effect.mapError(engine.borrow(restore), toSqlError), (pc) =>
      Effect.as(
        Effect.addFinalizer(() => Effect.sync(() => engine.release(pc, false))),
        new DirectConnection(engine, pc) as Connection
      )
    )
  )
