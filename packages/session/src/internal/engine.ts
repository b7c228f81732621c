import type * as Reactivity from "@effect/experimental/Reactivity"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import type * as Metric from "effect/Metric"
import * as MetricLabel from "effect/MetricLabel"
import * as Runtime from "effect/Runtime"
import * as SessionError from "../SessionError.js"
import * as metrics from "./metrics.js"
import type { Restore } from "./lock.js"
import { ConnPool, type DestroyReason, type Lease, type PooledConn, type Settings } from "./pool.js"
import { Command, interruptedError } from "./command.js"
import { LongUnits } from "./longUnits.js"
import { SideConnections } from "./side.js"
import { Held, makeHeldRef, mayUse, NO_UNIT, rootOf } from "./holding.js"
import { unitSites } from "./sites.js"
import { mergeTokens, type Route, WRITE } from "./tokens.js"
import type {
  BorrowError,
  CommandSpec,
  CurrentFrame,
  EngineImplOptions,
  MemberHooks,
  Router,
  Want
} from "./engineTypes.js"

export type {
  CommandSpec,
  CurrentFrame,
  EngineImplOptions,
  Isolation,
  MemberHooks,
  Router,
  SessionDefaults,
  Want,
  Watched
} from "./engineTypes.js"

let engineSeq = 0

/** Bound on control statements (SET, BEGIN, SAVEPOINT, RELEASE, ROLLBACK, a reset, a ping). */
const controlTimeout = (killGraceMs: number) => Math.max(5_000, killGraceMs)

/** @internal */
export class EngineImpl {
  readonly id = ++engineSeq
  /** Where a fiber finds its current session (frame) of this engine: one key per engine, so engines never mix. */
  readonly currentTag: Context.Tag<CurrentFrame, CurrentFrame>
  /**
   * The same, as a FiberRef: it survives `Effect.provide` of a whole context (a `SqlResolver` built with
   * `withContext: true` runs its batch with the context it was built with), so a request made inside a unit still
   * runs inside it.
   */
  readonly currentRef: FiberRef.FiberRef<Held<CurrentFrame> | undefined> = makeHeldRef<CurrentFrame>()
  readonly pool: ConnPool
  /** The control connection (KILL) and the probe connection (health checks). */
  readonly side: SideConnections
  /** Stable label arrays: Effect caches a metric's hook by the identity of its extra-tags array. */
  private readonly labelCache = new Map<string, ReadonlyArray<MetricLabel.MetricLabel>>()
  readonly labels: ReadonlyArray<MetricLabel.MetricLabel>
  private gaugeTimer: ReturnType<typeof setInterval>
  private readonly gauges: ReadonlyArray<Metric.Metric.Gauge<number>>
  /** Units of work in progress, watched for `longUnitThreshold`. */
  readonly longUnits: LongUnits
  readonly commitTimeoutMs: number
  readonly controlTimeoutMs: number
  reactivity!: Reactivity.Reactivity["Type"]
  /** The engine's client: follows the fiber's current session of this engine, else autocommit. */
  client!: import("@effect/sql/SqlClient").SqlClient
  /** Replicas or nodes beside this server (this one is the engine's identity: its tags, client, units). */
  topology: Router | undefined = undefined
  /** This server's place in its engine's topology, if it has one. */
  member: MemberHooks | undefined = undefined
  /** Where the engine was built: its logger and services, for messages from callbacks. */
  runtime: Runtime.Runtime<never> | undefined = undefined

  /** The server `pc` belongs to (a replica or node of this engine's topology, or this one). */
  ownerOf(pc: PooledConn): EngineImpl {
    return ownerOf(this, pc)
  }

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
    this.currentTag = Context.GenericTag<CurrentFrame>(`@sessionfx/session/CurrentSession/${this.id}`)
    this.labels =
      options.engineName === undefined
        ? [MetricLabel.make("engine", options.name)]
        : [MetricLabel.make("engine", options.engineName), MetricLabel.make("server", options.name)]
    this.commitTimeoutMs = options.commitTimeoutMs ?? 10_000
    this.controlTimeoutMs = controlTimeout(options.killGraceMs)
    const threshold = options.longUnitThresholdMs ?? 60_000
    this.longUnits = new LongUnits(threshold, (u, openMs, ended) => {
      metrics.longUnits.unsafeUpdate(1, this.unitLabels)
      u.log(
        `sessionfx: a unit of work on ${options.describe} ${ended ? "was" : "has been"} open for ${openMs} ms (longUnitThreshold ${threshold} ms): its writes are invisible to others and its locks held until it ends. ${u.describe()}`
      )
    })
    if (options.longUnitThresholdMs !== undefined && options.longUnitThresholdMs > 0) unitSites.capture = true
    const labels = this.labels
    this.side = new SideConnections(options.driver, this.controlTimeoutMs)
    this.pool = new ConnPool({
      ...options.pool,
      lifetimeJitter: 0.1,
      connect: options.driver.connect,
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
      this.longUnits.checkAll()
    }, 1000)
    this.gaugeTimer.unref()
  }

  /**
   * The fiber's current session (frame) of this engine, if any: the frame in its context, else its FiberRef's; or
   * that frame's detached view when the fiber may not use the unit (see `holding.ts`) — a runtime or memoized layer
   * handed the unit to an independent fiber, or a context captured in one unit was provided in another.
   */
  current(fiber: Fiber.RuntimeFiber<unknown, unknown>): CurrentFrame | undefined {
    const inContext = fiber.currentContext.unsafeMap.get(this.currentTag.key) as CurrentFrame | undefined
    const held = fiber.getFiberRef(this.currentRef)
    if (held === undefined || held === NO_UNIT) return inContext?.detach()
    if (held.access === "spawned" && inContext === undefined) return held.frame.spawn()
    const frame = inContext ?? held.frame
    return frame.unit === held.frame.unit && mayUse(fiber, this.currentRef as FiberRef.FiberRef<Held | undefined>, held)
      ? frame
      : frame.detach()
  }

  /** What a fiber's FiberRef holds for `frame` of its current unit (a savepoint's frame, in the same program). */
  held(fiber: Fiber.RuntimeFiber<unknown, unknown>, frame: CurrentFrame): Held<CurrentFrame> {
    const ref = fiber.getFiberRef(this.currentRef)
    const outer = ref === NO_UNIT ? undefined : ref
    const root =
      outer === undefined ? undefined : rootOf(fiber, this.currentRef as FiberRef.FiberRef<Held | undefined>, outer)
    return new Held(frame, root, outer === undefined || root === undefined ? "detached" : "attached")
  }

  /** Fills the pool and opens the control connection; call once the server's flavor is known. */
  start(): void {
    this.pool.fill()
    this.side.warm("control")
  }

  /** Every new connection, and every connection after a reset: the driver prepares it (see `MysqlServer.prepare`). */
  private prepareConnection(pc: PooledConn, cb: (err: unknown) => void): void {
    pc.owner = this
    pc.lastGtid = undefined
    // the server's word on autocommit is asked again: a reset puts the server's default back
    pc.autocommit = undefined
    this.options.driver.prepare(pc.conn, (err, settings) => {
      if (settings !== undefined) pc.settings = settings
      cb(err)
    })
  }

  /** The server's values of the per-unit settings (known once a connection has been prepared). */
  get baseline(): Settings | undefined {
    return this.options.driver.baseline
  }

  /** The `SET` that gives `pc` the settings `want` asks for, or `undefined` when it already has them. */
  settingsSql(pc: PooledConn, want: Want): { readonly sql: string; readonly settings: Settings } | undefined {
    const base = ownerOf(this, pc).baseline
    if (base === undefined) return undefined
    // as sessionfx set them: a user's own SET (a `reserve` user's SET autocommit = 0) is left alone, and the
    // connection is reset before the next borrower (`Command`: the server's word differs from these)
    const cur = pc.settings
    const lockWait = want.lockWait ?? base.lockWait
    const statementTime = want.statementTime ?? base.statementTime
    const isolation = want.isolation ?? base.isolation
    const autocommit = want.autocommit ?? cur.autocommit
    // every statement asks: the common answer (nothing to change) allocates nothing
    if (
      lockWait === cur.lockWait &&
      statementTime === cur.statementTime &&
      isolation === cur.isolation &&
      autocommit === cur.autocommit
    )
      return undefined
    const settings: Settings = { lockWait, statementTime, isolation, autocommit }
    const sql = this.options.driver.dialect.settingsSql(cur, settings)
    return sql === undefined ? undefined : { sql, settings }
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

  stopTimers() {
    clearInterval(this.gaugeTimer)
  }

  /**
   * Takes a connection. Call it inside `uninterruptibleMask` with its `restore`: waiting is interruptible, and a
   * connection handed over while the fiber is being interrupted goes back to the pool — also when the interruption
   * lands after the hand-off, before the caller could register its finalizer.
   */
  borrow(restore: Restore, route: Route = WRITE): Effect.Effect<PooledConn, BorrowError> {
    return this.topology === undefined ? this.borrowHere(restore) : this.topology.borrow(restore, route)
  }

  /** A connection of this server's own pool that is idle now (none with a topology: it decides where). */
  borrowNow(): PooledConn | undefined {
    return this.topology === undefined ? this.pool.tryAcquire() : undefined
  }

  /** `borrow` from this server's own pool. */
  borrowHere(restore: Restore): Effect.Effect<PooledConn, SessionError.PoolTimeout | SessionError.ConnectionError> {
    return Effect.suspend(() => {
      const idle = this.pool.tryAcquire()
      return idle !== undefined ? Effect.succeed(idle) : this.waitThen(restore, Effect.succeed)
    })
  }

  /**
   * `borrow`, then `then` with the connection, for a caller that found none idle (`borrowNow`): one step less than
   * `flatMap(borrow(…))` on the common path of a busy pool.
   */
  borrowThen<A, E, R>(
    restore: Restore,
    route: Route,
    then: (pc: PooledConn) => Effect.Effect<A, E, R>
  ): Effect.Effect<A, E | BorrowError, R> {
    return this.topology === undefined
      ? this.waitThen(restore, then)
      : Effect.flatMap(this.topology.borrow(restore, route), then)
  }

  /** Waits in this server's FIFO queue (interruptibly, through `restore`), then `then` with the connection. */
  private waitThen<A, E, R>(
    restore: Restore,
    then: (pc: PooledConn) => Effect.Effect<A, E, R>
  ): Effect.Effect<A, E | SessionError.PoolTimeout | SessionError.ConnectionError, R> {
    const lease: Lease = { pc: undefined, waiter: undefined }
    // the caller is uninterruptible here: a plain match is enough to see the interrupted exit
    return Effect.matchCauseEffect(restore(this.pool.acquire(lease)), {
      onFailure: (cause) => {
        this.pool.withdraw(lease)
        const pc = lease.pc
        if (pc !== undefined) {
          lease.pc = undefined
          this.release(pc, false)
        }
        return Effect.failCause(cause)
      },
      onSuccess: then
    })
  }

  release(pc: PooledConn, reset: boolean, reason?: DestroyReason) {
    ownerOf(this, pc).pool.release(pc, reset, reason)
  }

  /** Closes a connection at once (its server rolls back whatever it had open). */
  destroy(pc: PooledConn, reason: DestroyReason, why?: string) {
    ownerOf(this, pc).pool.destroy(pc, reason, why)
  }

  /**
   * Sends `KILL QUERY` for a pooled connection: on the engine's control connection (open from the start, so it works
   * at `max_connections`), else on a fresh one. While it is in flight, nothing else is sent on that connection and it
   * is not lent again (`PooledConn.kills`): a KILL that lands late must not stop the next statement.
   */
  killQuery(pc: PooledConn, cb: (ok: boolean) => void): void {
    const owner = ownerOf(this, pc)
    if (owner !== this) return owner.killQuery(pc, cb)
    this.side.killQuery(pc, this.options.driver.dialect.killQuery(pc.threadId), cb)
  }

  /** `KILL CONNECTION`: ends a connection (and its transaction) the pool has already let go of. */
  killConnection(threadId: number, cb: (ok: boolean) => void): void {
    this.side.kill(this.options.driver.dialect.killConnection(threadId), cb)
  }

  closeKillers() {
    this.side.close()
  }

  /**
   * Starts one command on a pooled connection; `done` is called exactly once when it settles. Returns the command
   * (to stop it: `Command.cancel`), or `undefined` when the connection is already gone (`done` has been called).
   * `spec.values` must have been through `bindValues`.
   */
  startCommand(
    pc: PooledConn,
    spec: CommandSpec,
    done: (err: SessionError.SessionError | undefined, rows: unknown) => void
  ): Command | undefined {
    const owner = ownerOf(this, pc)
    if (owner !== this) return owner.startCommand(pc, spec, done)
    if (pc.closed || pc.broken) {
      done(
        new SessionError.ConnectionLost({
          message: `connection ${pc.threadId} is closed (killed, timed out or the server restarted); the unit can be retried`
        }),
        undefined
      )
      return undefined
    }
    const internal = spec.internal === true
    if (!internal && this.options.driver.marksDirty(spec.sql)) pc.dirty = true
    const command = new Command(this, pc, done, internal)
    if (pc.kills > 0) {
      // a KILL for an earlier statement is still in flight: send this one once it has been answered
      ;(pc.afterKills ??= []).push(() => {
        if (!command.settled && !command.cancelled) this.send(command, spec)
        else if (!command.settled) command.callback(interruptedError(), undefined)
      })
      return command
    }
    this.send(command, spec)
    return command
  }

  private send(command: Command, spec: CommandSpec): void {
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
    const deadlineMs = spec.deadlineMs
    if (deadlineMs !== undefined) {
      command.deadline = setTimeout(() => {
        // a replica or node that stops answering is taken out at once (a black-holed link closes nothing)
        this.member?.takeOut(`a statement got no answer within ${deadlineMs} ms`)
        this.pool.destroy(pc, "stateUnknown", `no answer within ${deadlineMs} ms`)
      }, deadlineMs)
    }
    // values travel only through the binary protocol: a text query carries none
    const values = spec.values
    if (spec.method === "execute" || (values !== undefined && values.length > 0)) {
      pc.conn.execute(spec.sql, values ?? [], spec.rowsAsArray === true, settle)
    } else {
      pc.conn.query(spec.sql, spec.rowsAsArray === true, settle)
    }
  }

  /** One of sessionfx's own statements: bounded by `controlTimeout`, its session state accounted for by the caller. */
  control(sql: string): CommandSpec {
    return { method: "query", sql, deadlineMs: this.controlTimeoutMs, internal: true }
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
    holder.c = this.startCommand(pc, this.control(sql), (err) => done(err, holder.c?.cancelled === true))
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

  /** What a statement outside any unit wants of the per-unit settings: the engine's defaults. */
  get defaultWant(): Want {
    return (this._defaultWant ??= wantOf(this, {
      lockWaitSeconds: this.options.defaults.lockWaitTimeoutSeconds,
      statementTimeMs: this.options.defaults.statementTimeoutMs,
      isolation: this.options.defaults.isolation,
      unit: false
    }))
  }
  private _defaultWant: Want | undefined
}

export { Command, interruptedError } from "./command.js"

/** The server a connection belongs to (`PooledConn.owner`): commands, KILLs and its release go through it. */
const ownerOf = (engine: EngineImpl, pc: PooledConn): EngineImpl => (pc.owner as EngineImpl | undefined) ?? engine

/** The settings a unit asks for, in the server's units. @internal */
export const wantOf = (
  engine: EngineImpl,
  o: {
    readonly lockWaitSeconds: number | undefined
    readonly statementTimeMs: number | undefined
    readonly isolation: string | undefined
    /** For a unit (autocommit off, where the database has the mode), else for statements outside units (on). */
    readonly unit: boolean
  }
): Want => ({
  lockWait: o.lockWaitSeconds,
  statementTime: o.statementTimeMs === undefined ? undefined : engine.options.driver.statementTime(o.statementTimeMs),
  isolation: o.isolation,
  autocommit: o.unit ? (engine.options.driver.dialect.autocommitOff ? false : undefined) : true
})
