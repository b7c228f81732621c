/**
 * Connections beside the pool, one manager for all of them: the control connection that sends KILL (open from the
 * start, so it works when the server is at `max_connections`) and the probe connection of health checks (never a
 * pooled one: a busy pool must not hide a dead server). Each is opened on demand, bounded by `timeoutMs` per
 * statement, and replaced when it fails or stops answering; a KILL whose control connection fails goes out once more
 * on a fresh connection.
 *
 * @internal
 */
import type { Connector, DriverErrors, RawConnection, Reply } from "./driver/types.js"
import type { PooledConn } from "./pool.js"

/** @internal */
export type Slot = "control" | "probe"

/** @internal */
export class SideConnections {
  private readonly open = new Map<Slot, RawConnection>()
  private readonly opening = new Set<Slot>()
  /** Fresh connections of a KILL in flight (closed on shutdown). */
  private readonly fresh = new Set<RawConnection>()
  private closed = false

  private readonly connect: Connector
  private readonly errors: DriverErrors

  constructor(
    driver: { readonly connect: Connector; readonly errors: DriverErrors },
    private readonly timeoutMs: number
  ) {
    this.connect = driver.connect
    this.errors = driver.errors
  }

  /**
   * `KILL QUERY` (`text`) for a pooled connection. While it is in flight, nothing else is sent on that connection and
   * it is not lent again (`PooledConn.kills`; what waited runs after it): a KILL that lands late must not stop the
   * next statement.
   */
  killQuery(pc: PooledConn, text: string, cb: (ok: boolean) => void): void {
    pc.kills++
    this.kill(text, (ok) => {
      pc.kills--
      if (pc.kills === 0 && pc.afterKills !== undefined) {
        const held = pc.afterKills
        pc.afterKills = undefined
        for (const f of held) f()
      }
      cb(ok)
    })
  }

  /** A KILL on the control connection, else on a fresh one; "no such thread" counts as done. */
  kill(text: string, cb: (ok: boolean) => void): void {
    this.run("control", text, (e) => cb(!e || this.errors.isNoSuchThread(e)), true)
  }

  /** Opens `slot` ahead of need (the control connection at start). */
  warm(slot: Slot): void {
    if (this.closed || this.open.has(slot) || this.opening.has(slot)) return
    this.opening.add(slot)
    this.connect((err, conn) => {
      this.opening.delete(slot)
      if (err || conn === undefined) return
      this.adopt(slot, conn)
    })
  }

  private adopt(slot: Slot, conn: RawConnection): void {
    if (this.closed) return conn.destroy()
    this.open.set(slot, conn)
    conn.onGone(() => this.drop(slot, conn))
  }

  private drop(slot: Slot, conn: RawConnection): void {
    if (this.open.get(slot) === conn) this.open.delete(slot)
    conn.destroy()
  }

  /**
   * Runs `sql` on `slot`'s connection (opened if needed), bounded by `timeoutMs`: past it, or on a fatal error, the
   * connection is dropped. With `retryFresh`, a statement whose connection failed is sent once more on a fresh one.
   */
  run(slot: Slot, sql: string, cb: (err: unknown, reply?: Reply) => void, retryFresh = false): void {
    if (this.closed) return cb(new Error("the engine is shut down"))
    const conn = this.open.get(slot)
    if (conn === undefined) {
      if (retryFresh) {
        this.warm(slot)
        return this.once(sql, cb)
      }
      return this.connect((err, c) => {
        if (err || c === undefined) return cb(err ?? new Error("no connection"))
        if (this.closed) {
          c.destroy()
          return cb(new Error("the engine is shut down"))
        }
        this.adopt(slot, c)
        this.run(slot, sql, cb)
      })
    }
    let settled = false
    const timer = setTimeout(() => {
      if (settled) return
      settled = true
      // a connection that does not answer (a black-holed link) is replaced
      this.drop(slot, conn)
      if (retryFresh) this.once(sql, cb)
      else cb(new Error(`no answer within ${this.timeoutMs} ms`))
    }, this.timeoutMs)
    timer.unref()
    conn.query(sql, false, (err, reply) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      if (err && this.errors.isFatal(err)) {
        this.drop(slot, conn)
        if (retryFresh) return this.once(sql, cb)
      }
      cb(err ?? undefined, reply)
    })
  }

  /** One statement on a connection of its own, closed after it. */
  private once(sql: string, cb: (err: unknown, reply?: Reply) => void): void {
    this.connect((err, conn) => {
      if (err || conn === undefined) return cb(err ?? new Error("no connection"))
      this.fresh.add(conn)
      conn.query(sql, false, (e, reply) => {
        this.fresh.delete(conn)
        conn.destroy()
        cb(e ?? undefined, reply)
      })
    })
  }

  /** Drops a slot's connection (a failed health check). */
  reset(slot: Slot): void {
    const conn = this.open.get(slot)
    if (conn !== undefined) this.drop(slot, conn)
  }

  close(): void {
    this.closed = true
    for (const [slot, conn] of this.open) this.drop(slot, conn)
    for (const conn of this.fresh) conn.destroy()
    this.fresh.clear()
  }
}
