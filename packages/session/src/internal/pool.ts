/**
 * The connection pool of one server: individual driver connections (`RawConnection`), a FIFO queue of waiters with per-waiter
 * deadlines, validation after idle, retirement by lifetime, reset on return and eviction of dead connections.
 *
 * It works in callback land on purpose: hand-off from a returning connection to the first waiter happens
 * synchronously, so no late arrival can barge in front of a waiter, and the fast path (an idle connection, nobody
 * waiting) costs one `Effect.async` and no timer.
 */
import * as Effect from "effect/Effect"
import * as SessionError from "../SessionError.js"
import type { Connector, RawConnection, Reply, Settings } from "./driver/types.js"

export type { Settings } from "./driver/types.js"

/** @internal */
export type DestroyReason =
  | "broken"
  | "closedByServer"
  | "validation"
  | "resetFailed"
  | "maxLifetime"
  | "idleTimeout"
  | "interrupted"
  | "shutdown"
  | "stateUnknown"

/** Why a connection came back needing a reset (`sessionfx_pool_dirty_returns_total{reason}`). @internal */
export type DirtyReason = "transaction" | "state"

/** @internal */
export interface PoolConfig {
  readonly size: number
  readonly minIdle: number
  readonly acquireTimeoutMs: number
  readonly idleTimeoutMs: number
  readonly maxLifetimeMs: number
  readonly lifetimeJitter: number
  readonly validateAfterIdleMs: number
  readonly queueLimit: number
  /** Opens a connection to the server. */
  readonly connect: Connector
  readonly describe: string
  readonly onCreated: () => void
  readonly onDestroyed: (reason: DestroyReason) => void
  readonly onTimeout: () => void
  readonly onWait: (millis: number) => void
  /** Runs on every new connection and after every reset, before it is lent: session tracking, baseline settings. */
  readonly prepare: (pc: PooledConn, cb: (err: unknown) => void) => void
  /** A connection came back with a transaction open or its session state changed. */
  readonly onDirtyReturn: (reason: DirtyReason) => void
  /** A connection was closed by the server or the network (not by the pool). */
  readonly onLost?: ((err: unknown) => void) | undefined
  /** Bound on a reset or a validation ping; past it the connection is destroyed. */
  readonly controlTimeoutMs: number
}

/** @internal */
export class PooledConn {
  readonly createdAt = Date.now()
  lastUsedAt = Date.now()
  retireAt: number
  broken = false
  /**
   * Session state may differ from a fresh connection (the server flagged a change, a statement the server does not
   * flag, or an unknown outcome): reset before the next borrower.
   */
  dirty = false
  /** The server's word, from the status flags of the last OK or EOF packet: a transaction is open. */
  inTrans = false
  /** The per-unit settings on this connection (see `Settings`); set by `PoolConfig.prepare`. */
  settings: Settings = { lockWait: 0, statementTime: 0, isolation: "" }
  /**
   * KILL QUERY statements sent for this connection and not answered yet. While any is in flight nothing else is
   * sent on it (a late KILL would stop the next statement) and it is not given back to the pool.
   */
  kills = 0
  /** Commands and a release waiting for `kills` to reach 0. */
  afterKills: Array<() => void> | undefined = undefined
  inUse = false
  closed = false
  /** Settles the command in flight, if any (see `EngineImpl.startCommand`). */
  pending: ((err: unknown, reply: Reply | undefined) => void) | undefined = undefined
  /**
   * The server (an Engine of a topology) this connection belongs to: what is done to the connection (commands,
   * KILL, release) is done by that server. Set when the connection is prepared.
   */
  owner: unknown = undefined
  /** The GTID the server reported with the last commit on this connection (`last_gtid` tracking), if any. */
  lastGtid: string | undefined = undefined
  readonly threadId: number
  constructor(
    readonly conn: RawConnection,
    lifetimeMs: number,
    jitter: number
  ) {
    this.threadId = conn.threadId
    this.retireAt = lifetimeMs > 0 ? this.createdAt + lifetimeMs * (1 - Math.random() * jitter) : Infinity
  }
}

/**
 * Where the pool puts the connection it hands over. A fiber can be interrupted after the hand-off but before it
 * resumes (and could register a finalizer): the caller's exit handler finds `pc` still set and gives it back
 * (`EngineImpl.borrow`).
 *
 * @internal
 */
export interface Lease {
  pc: PooledConn | undefined
  /** The queue entry while it waits (see `ConnPool.withdraw`). */
  waiter: Waiter | undefined
}

/** @internal */
export interface Waiter {
  readonly resume: (effect: Effect.Effect<PooledConn, SessionError.PoolTimeout | SessionError.ConnectionError>) => void
  readonly since: number
  prev: Waiter | undefined
  next: Waiter | undefined
  queued: boolean
  cancelled: boolean
  done: boolean
  readonly lease: Lease
}

/** @internal */
export class ConnPool {
  readonly all = new Set<PooledConn>()
  idle: Array<PooledConn> = []
  head: Waiter | undefined
  tail: Waiter | undefined
  waiting = 0
  pending = 0
  inUse = 0
  resetting = 0
  created = 0
  destroyed = 0
  timeouts = 0
  closing = false
  lastConnectError: unknown = undefined
  private maintenance: ReturnType<typeof setInterval> | undefined
  private drainWaiters: Array<() => void> = []

  constructor(readonly config: PoolConfig) {
    const every = Math.max(
      250,
      Math.min(30_000, Math.floor(Math.min(config.idleTimeoutMs || Infinity, config.maxLifetimeMs || Infinity) / 4))
    )
    this.maintenance = setInterval(() => this.maintain(), every)
    this.maintenance.unref()
  }

  stats(): SessionError.PoolStats {
    return {
      size: this.all.size,
      inUse: this.inUse,
      idle: this.idle.length,
      waiting: this.waiting,
      pending: this.pending,
      created: this.created,
      destroyed: this.destroyed,
      acquireTimeouts: this.timeouts
    }
  }

  /** Opens one connection outside the pool's accounting (startup check, KILL QUERY, health checks). */
  connect(cb: (err: unknown, conn?: RawConnection) => void): void {
    this.config.connect(cb)
  }

  private create(): void {
    this.pending++
    this.connect((err, conn) => {
      this.pending--
      if (err || !conn) {
        this.lastConnectError = err
        if (this.all.size === 0 && this.pending === 0) {
          this.failAllWaiters(
            new SessionError.ConnectionError({
              cause: err,
              message: `cannot connect to ${this.config.describe}: ${describeCause(err)}`
            })
          )
        }
        return
      }
      if (this.closing) {
        conn.destroy()
        this.checkDrained()
        return
      }
      this.lastConnectError = undefined
      const pc = new PooledConn(conn, this.config.maxLifetimeMs, this.config.lifetimeJitter)
      conn.onGone((err) => {
        if (pc.closed) return
        if (!pc.broken) this.config.onLost?.(err)
        pc.broken = true
        if (!pc.inUse) this.destroy(pc, "closedByServer")
      })
      this.pending++
      this.config.prepare(pc, (err) => {
        this.pending--
        if (err || pc.broken || this.closing) {
          conn.destroy()
          if (err) this.lastConnectError = err
          if (this.closing) this.checkDrained()
          else this.serve()
          return
        }
        this.all.add(pc)
        this.created++
        this.config.onCreated()
        this.idle.push(pc)
        this.serve()
      })
    })
  }

  /** Fails every waiting borrower with `error` (a topology took this server out: they go elsewhere). */
  failAllWaiters(error: SessionError.ConnectionError) {
    while (this.head) {
      const w = this.head
      this.unlink(w)
      w.done = true
      w.resume(Effect.fail(error))
    }
  }

  private shuttingDown() {
    return new SessionError.ConnectionError({ message: `the Engine for ${this.config.describe} is shutting down` })
  }

  private unlink(w: Waiter) {
    if (!w.queued) return
    w.queued = false
    if (w.prev) w.prev.next = w.next
    else this.head = w.next
    if (w.next) w.next.prev = w.prev
    else this.tail = w.prev
    w.prev = w.next = undefined
    this.waiting--
  }

  private pushFront(w: Waiter) {
    w.queued = true
    w.next = this.head
    w.prev = undefined
    if (this.head) this.head.prev = w
    else this.tail = w
    this.head = w
    this.waiting++
  }

  private pushBack(w: Waiter) {
    w.queued = true
    w.prev = this.tail
    w.next = undefined
    if (this.tail) this.tail.next = w
    else this.head = w
    this.tail = w
    this.waiting++
  }

  /**
   * Every waiter has the same timeout and the queue is FIFO, so the head always has the earliest deadline: one timer,
   * armed for the head, serves the whole queue (no timer per waiter on the hot path).
   */
  private deadlineTimer: ReturnType<typeof setTimeout> | undefined
  private deadlineAt = Infinity

  private armDeadline() {
    const head = this.head
    if (head === undefined) return
    const at = head.since + this.config.acquireTimeoutMs
    if (this.deadlineTimer !== undefined && this.deadlineAt <= at) return
    if (this.deadlineTimer !== undefined) clearTimeout(this.deadlineTimer)
    this.deadlineAt = at
    this.deadlineTimer = setTimeout(() => this.expire(), Math.max(0, at - Date.now()))
    // waiters are kept alive by the lent connections they wait for; an idle engine must not hold the process
    this.deadlineTimer.unref()
  }

  private expire() {
    this.deadlineTimer = undefined
    this.deadlineAt = Infinity
    const now = Date.now()
    while (this.head !== undefined && this.head.since + this.config.acquireTimeoutMs <= now) {
      const w = this.head
      this.unlink(w)
      w.cancelled = true
      w.done = true
      this.timeouts++
      this.config.onTimeout()
      const stats = this.stats()
      const last = this.lastConnectError ? `; last connection error: ${describeCause(this.lastConnectError)}` : ""
      w.resume(
        Effect.fail(
          new SessionError.PoolTimeout({
            stats,
            message: `no connection to ${this.config.describe} became free within ${this.config.acquireTimeoutMs} ms (size ${stats.size}, in use ${stats.inUse}, waiting ${stats.waiting})${last}; raise pool.size or pool.acquireTimeout, or shorten transactions`
          })
        )
      )
    }
    this.armDeadline()
  }

  private takeIdle(): PooledConn | undefined {
    let pc = this.idle.pop()
    while (pc && (pc.broken || pc.closed || Date.now() >= pc.retireAt)) {
      this.destroy(pc, pc.broken || pc.closed ? "closedByServer" : "maxLifetime")
      pc = this.idle.pop()
    }
    return pc
  }

  private needsValidation(pc: PooledConn) {
    return this.config.validateAfterIdleMs >= 0 && Date.now() - pc.lastUsedAt > this.config.validateAfterIdleMs
  }

  private give(w: Waiter, pc: PooledConn) {
    if (w.cancelled || w.done) {
      this.toIdle(pc)
      return
    }
    w.done = true
    w.lease.pc = pc
    pc.inUse = true
    this.inUse++
    this.config.onWait(Date.now() - w.since)
    w.resume(Effect.succeed(pc))
  }

  /** Hands idle connections to waiters in order, and opens connections for the waiters left. */
  private serve() {
    while (this.head) {
      const pc = this.takeIdle()
      if (!pc) break
      const w = this.head
      this.unlink(w)
      if (this.needsValidation(pc)) {
        this.validate(pc, w)
      } else {
        this.give(w, pc)
      }
    }
    const capacity = this.config.size - this.all.size - this.pending
    let wanted = this.waiting - this.pending
    for (let i = 0; i < capacity && wanted > 0; i++, wanted--) this.create()
  }

  private validate(pc: PooledConn, w: Waiter) {
    pc.inUse = true
    this.inUse++
    let answered = false
    const timer = setTimeout(() => {
      if (answered) return
      answered = true
      pc.inUse = false
      this.inUse--
      this.destroy(pc, "validation", `no answer to a ping within ${this.config.controlTimeoutMs} ms`)
      if (!w.cancelled && !w.done) {
        this.pushFront(w)
        this.armDeadline()
      }
      this.serve()
    }, this.config.controlTimeoutMs)
    timer.unref()
    pc.conn.ping((err) => {
      if (answered) return
      answered = true
      clearTimeout(timer)
      pc.inUse = false
      this.inUse--
      if (err || pc.broken) {
        this.destroy(pc, "validation")
        if (!w.cancelled && !w.done) {
          this.pushFront(w)
          this.armDeadline()
        }
        this.serve()
        return
      }
      pc.lastUsedAt = Date.now()
      this.give(w, pc)
    })
  }

  /**
   * Takes a connection into `lease` (see `Lease`). Waiting is interruptible, and a caller interrupted while it
   * waits must `withdraw` (`EngineImpl.borrow` does).
   */
  acquire(lease: Lease): Effect.Effect<PooledConn, SessionError.PoolTimeout | SessionError.ConnectionError> {
    return Effect.async<PooledConn, SessionError.PoolTimeout | SessionError.ConnectionError>((resume) => {
      if (this.closing) return resume(Effect.fail(this.shuttingDown()))
      const w: Waiter = {
        resume,
        since: Date.now(),
        prev: undefined,
        next: undefined,
        queued: false,
        cancelled: false,
        done: false,
        lease
      }
      if (this.head === undefined) {
        const pc = this.takeIdle()
        if (pc !== undefined) {
          if (!this.needsValidation(pc)) return this.give(w, pc)
          this.idle.push(pc)
        }
      }
      if (this.config.queueLimit > 0 && this.waiting >= this.config.queueLimit) {
        this.timeouts++
        this.config.onTimeout()
        resume(
          Effect.fail(
            new SessionError.PoolTimeout({
              stats: this.stats(),
              message: `${this.waiting} fibers are already waiting for a connection to ${this.config.describe} (queueLimit ${this.config.queueLimit}); shed load or raise pool.size / pool.queueLimit`
            })
          )
        )
        return
      }
      this.pushBack(w)
      this.armDeadline()
      lease.waiter = w
      this.serve()
      // no canceler (it would cost an onInterrupt frame per wait): an interrupted caller withdraws the wait itself,
      // and a connection already handed over stays in `lease` for it to give back (see `EngineImpl.borrow`)
    })
  }

  /** Leaves the queue: the caller of `acquire` was interrupted while it waited. */
  withdraw(lease: Lease): void {
    const w = lease.waiter
    if (w === undefined || w.done) return
    w.cancelled = true
    w.done = true
    this.unlink(w)
  }

  /**
   * Returns a connection. `reset` asks for COM_RESET_CONNECTION before reuse; a broken connection, one past its
   * lifetime or one returned during shutdown is destroyed instead.
   */
  release(pc: PooledConn, reset: boolean, destroyReason?: DestroyReason): void {
    if (!pc.inUse) return
    if (pc.kills > 0 && destroyReason === undefined && !pc.closed) {
      // a KILL QUERY for this connection is still on its way: lending it now could let it stop the next borrower's
      // statement
      ;(pc.afterKills ??= []).push(() => this.release(pc, reset))
      return
    }
    pc.inUse = false
    this.inUse--
    pc.lastUsedAt = Date.now()
    if (destroyReason !== undefined) return this.destroy(pc, destroyReason)
    if (pc.broken || pc.closed) return this.destroy(pc, "broken")
    if (this.closing) return this.destroy(pc, "shutdown")
    if (pc.lastUsedAt >= pc.retireAt) return this.destroy(pc, "maxLifetime")
    // HikariCP's rule: a connection goes back only with no transaction open and its session as the pool left it
    if (pc.inTrans) this.config.onDirtyReturn("transaction")
    else if (pc.dirty) this.config.onDirtyReturn("state")
    if (reset || pc.dirty || pc.inTrans) return this.reset(pc)
    this.toIdle(pc)
  }

  /** COM_RESET_CONNECTION (rolls back, clears session state and prepared statements), then `prepare` again. */
  private reset(pc: PooledConn): void {
    this.resetting++
    let done = false
    const finish = (err: unknown) => {
      if (done) return
      done = true
      clearTimeout(timer)
      this.resetting--
      if (err || pc.broken) return this.destroy(pc, "resetFailed")
      pc.dirty = false
      pc.inTrans = false
      if (this.closing) return this.destroy(pc, "shutdown")
      this.toIdle(pc)
    }
    const timer = setTimeout(() => {
      finish(new Error(`no answer to the reset within ${this.config.controlTimeoutMs} ms`))
    }, this.config.controlTimeoutMs)
    timer.unref()
    pc.conn.reset((err) => {
      if (err) return finish(err)
      this.config.prepare(pc, finish)
    })
  }

  private toIdle(pc: PooledConn) {
    if (pc.broken || pc.closed) return this.destroy(pc, "broken")
    if (this.closing) return this.destroy(pc, "shutdown")
    this.idle.push(pc)
    this.serve()
    this.checkDrained()
  }

  destroy(pc: PooledConn, reason: DestroyReason, why?: string): void {
    if (pc.closed) return
    pc.closed = true
    pc.broken = true
    if (pc.inUse) {
      pc.inUse = false
      this.inUse--
    }
    this.all.delete(pc)
    const i = this.idle.indexOf(pc)
    if (i >= 0) this.idle.splice(i, 1)
    pc.conn.destroy()
    const pending = pc.pending
    if (pending !== undefined) {
      const err = Object.assign(
        new Error(`connection ${pc.threadId} was closed while a command was in flight (${why ?? reason})`),
        { code: "PROTOCOL_CONNECTION_LOST", fatal: true }
      )
      pending(err, undefined)
    }
    // commands held back behind a KILL now find the connection closed and settle
    const held = pc.afterKills
    pc.afterKills = undefined
    if (held !== undefined) for (const f of held) f()
    this.destroyed++
    this.config.onDestroyed(reason)
    if (!this.closing) this.serve()
    this.checkDrained()
  }

  /** Closes idle connections past `idleTimeout` (above `minIdle`) or past their lifetime, then refills `minIdle`. */
  maintain() {
    if (this.closing) return
    const now = Date.now()
    for (const pc of [...this.idle]) {
      if (pc.broken) this.destroy(pc, "closedByServer")
      else if (now >= pc.retireAt) this.destroy(pc, "maxLifetime")
    }
    if (this.config.idleTimeoutMs > 0) {
      // oldest first: the idle stack keeps the most recently used on top
      for (const pc of [...this.idle]) {
        if (this.all.size + this.pending <= this.config.minIdle) break
        if (now - pc.lastUsedAt > this.config.idleTimeoutMs) this.destroy(pc, "idleTimeout")
      }
    }
    this.fill()
  }

  fill() {
    if (this.closing) return
    const missing = Math.min(this.config.minIdle, this.config.size) - this.all.size - this.pending
    for (let i = 0; i < missing; i++) this.create()
  }

  private checkDrained() {
    if (!this.closing || this.drainWaiters.length === 0) return
    if (this.inUse === 0 && this.resetting === 0 && this.pending === 0) {
      const ws = this.drainWaiters
      this.drainWaiters = []
      for (const w of ws) w()
    }
  }

  /** Stops lending; resolves when every lent connection has come back (or `timeoutMs` passes). */
  drain(timeoutMs: number): Effect.Effect<boolean> {
    return Effect.async<boolean>((resume) => {
      this.closing = true
      if (this.maintenance) clearInterval(this.maintenance)
      for (const pc of [...this.idle]) this.destroy(pc, "shutdown")
      this.failAllWaiters(this.shuttingDown())
      const done = () => {
        clearTimeout(timer)
        resume(Effect.succeed(true))
      }
      this.drainWaiters.push(done)
      const timer = setTimeout(() => {
        this.drainWaiters = this.drainWaiters.filter((w) => w !== done)
        resume(Effect.succeed(false))
      }, timeoutMs)
      this.checkDrained()
    })
  }

  /** Destroys everything that is left, in use or not. */
  closeAll(): void {
    this.closing = true
    if (this.deadlineTimer !== undefined) clearTimeout(this.deadlineTimer)
    if (this.maintenance) clearInterval(this.maintenance)
    for (const pc of [...this.all]) this.destroy(pc, "shutdown")
  }
}

/** @internal */
export const describeCause = (cause: unknown): string => {
  if (cause && typeof cause === "object") {
    const c = cause as { code?: unknown; errno?: unknown; message?: unknown; sqlMessage?: unknown }
    const text = String(c.sqlMessage ?? c.message ?? "")
    const code = typeof c.code === "string" ? c.code : undefined
    if (code && text && !text.includes(code)) return `${code}: ${text}`
    return text || code || String(cause)
  }
  return String(cause)
}
