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
import type { RawConnection } from "./driver/types.js"
import { describeCause, type DestroyReason, type PoolConfig, PooledConn } from "./pooled.js"
import { WaitQueue, type Lease as LeaseOf, type Waiter as WaiterOf } from "./waiters.js"

/** @internal */
export type Lease = LeaseOf<PooledConn>
/** @internal */
export type Waiter = WaiterOf<PooledConn>

export type { Settings } from "./driver/types.js"

export type { DestroyReason, DirtyReason, PoolConfig } from "./pooled.js"
export { describeCause, PooledConn } from "./pooled.js"

/** @internal */
export class ConnPool {
  readonly all = new Set<PooledConn>()
  idle: Array<PooledConn> = []
  /** Borrowers waiting for a connection, first come first served. */
  readonly queue = new WaitQueue<PooledConn>()

  /** How many borrowers wait. */
  get waiting(): number {
    return this.queue.size
  }
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
      waiting: this.queue.size,
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
        // a drain counts this connection as pending: it has ended too
        if (this.closing) return this.checkDrained()
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
      // the set-up is bounded like any control statement: a server that accepted the connection but does not
      // answer (restarting, overloaded) must not hold a creation the waiters count on
      const ms = this.config.controlTimeoutMs
      const bound = setTimeout(() => prepared(new Error(`no answer to a new connection's set-up within ${ms} ms`)), ms)
      let settled = false
      const prepared = (err: unknown) => {
        if (settled) return
        settled = true
        clearTimeout(bound)
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
      }
      this.config.prepare(pc, prepared)
    })
  }

  /** Fails every waiting borrower with `error` (a topology took this server out: they go elsewhere). */
  failAllWaiters(error: SessionError.ConnectionError) {
    while (this.queue.head) {
      const w = this.queue.head
      this.queue.unlink(w)
      w.done = true
      w.resume(Effect.fail(error))
    }
  }

  private shuttingDown() {
    return new SessionError.ConnectionError({ message: `the Engine for ${this.config.describe} is shutting down` })
  }

  /**
   * Every waiter has the same timeout and the queue is FIFO, so the head always has the earliest deadline: one timer,
   * armed for the head, serves the whole queue (no timer per waiter on the hot path).
   */
  private deadlineTimer: ReturnType<typeof setTimeout> | undefined
  private deadlineAt = Infinity

  private armDeadline() {
    const head = this.queue.head
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
    while (this.queue.head !== undefined && this.queue.head.since + this.config.acquireTimeoutMs <= now) {
      const w = this.queue.head
      this.queue.unlink(w)
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

  /**
   * An idle connection that needs no validation, taken at once when nobody waits (`undefined` otherwise: then
   * `acquire`). The common borrow costs no `Effect.async`, no waiter and no lease.
   */
  tryAcquire(): PooledConn | undefined {
    if (this.closing || this.queue.head !== undefined) return undefined
    const pc = this.takeIdle()
    if (pc === undefined) return undefined
    if (this.needsValidation(pc)) {
      this.idle.push(pc)
      return undefined
    }
    pc.inUse = true
    this.inUse++
    this.config.onWait(0)
    return pc
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
    while (this.queue.head) {
      const pc = this.takeIdle()
      if (!pc) break
      const w = this.queue.head
      this.queue.unlink(w)
      if (this.needsValidation(pc)) {
        this.validate(pc, w)
      } else {
        this.give(w, pc)
      }
    }
    const capacity = this.config.size - this.all.size - this.pending
    let wanted = this.queue.size - this.pending
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
        this.queue.pushFront(w)
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
          this.queue.pushFront(w)
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
      if (this.queue.head === undefined) {
        const pc = this.takeIdle()
        if (pc !== undefined) {
          if (!this.needsValidation(pc)) return this.give(w, pc)
          this.idle.push(pc)
        }
      }
      if (this.config.queueLimit > 0 && this.queue.size >= this.config.queueLimit) {
        this.timeouts++
        this.config.onTimeout()
        resume(
          Effect.fail(
            new SessionError.PoolTimeout({
              shed: true,
              stats: this.stats(),
              message: `${this.queue.size} fibers are already waiting for a connection to ${this.config.describe} (queueLimit ${this.config.queueLimit}); shed load or raise pool.size / pool.queueLimit`
            })
          )
        )
        return
      }
      this.queue.pushBack(w)
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
    this.queue.unlink(w)
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
