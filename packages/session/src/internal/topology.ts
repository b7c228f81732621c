/**
 * Scale-out: a primary with read replicas, or several primaries (Galera). Each server is an `EngineImpl` with its
 * own pool and guarantees; the first one is the engine's identity (its session tags, client, units). This module
 * decides which server a unit borrows from, waits for a causality token where a unit must see it, and watches the
 * servers' health.
 *
 * @internal
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as SessionError from "../SessionError.js"
import { askApplied, type CausalWait } from "./causalWait.js"
import type { BorrowError } from "./engineTypes.js"
import type { EngineImpl, MemberHooks, Router } from "./engine.js"
import type { Restore } from "./lock.js"
import * as metrics from "./metrics.js"
import type { PooledConn } from "./pool.js"
import { covers, mergePositions, type Positions, positions, type Route } from "./tokens.js"

export type { Consistency, Route } from "./tokens.js"

/** One server of the topology and what the health checks last learnt about it. @internal */
export class Member implements MemberHooks {
  healthy = true
  reason: string | undefined = undefined
  lagMs: number | undefined = undefined
  /**
   * The server's position as text (MariaDB replica: `gtid_slave_pos`; primary / node: `gtid_binlog_pos`; PostgreSQL:
   * `system_identifier:LSN`, the replay LSN on a replica, the flushed WAL on the primary).
   */
  position: string | undefined = undefined
  /** The same, per domain: a token it already covers needs no wait. */
  applied: Positions | undefined = undefined
  probing = false
  constructor(
    readonly server: EngineImpl,
    readonly role: "primary" | "replica" | "node"
  ) {}

  get name(): string {
    return this.server.options.name
  }

  /** The server has applied `gtid` (its own commit): a unit here after it needs no wait. */
  noteApplied(gtid: string): void {
    const p = positions(gtid)
    if (p !== undefined) this.applied = mergePositions(this.applied, p)
  }

  /**
   * Takes a replica or node out of rotation at once (a lost connection, a statement past its deadline, a WSREP
   * refusal); its health check brings it back. The primary has nowhere else to send its units: it stays.
   */
  takeOut(reason: string): void {
    if (this.role !== "primary") this.setHealthy(false, reason)
  }

  setHealthy(healthy: boolean, reason: string | undefined): void {
    const changed = this.healthy !== healthy
    if (changed) {
      this.server.log(
        healthy ? "Info" : "Warning",
        healthy
          ? `sessionfx: ${this.role} ${this.name} is back in rotation`
          : `sessionfx: ${this.role} ${this.name} taken out of rotation: ${reason}`
      )
    }
    this.healthy = healthy
    this.reason = healthy ? undefined : reason
    metrics.serverHealthy.unsafeUpdate(healthy ? 1 : 0, this.server.labels)
    // the primary has nowhere to send its units: its health is reported, its waiters stay
    if (changed && !healthy && this.role !== "primary" && this.server.pool.waiting > 0) {
      // units waiting for one of its connections go elsewhere now instead of waiting out acquireTimeout
      this.server.pool.failAllWaiters(
        new SessionError.ConnectionError({
          retryable: true,
          message: `${this.role} ${this.name} was taken out of rotation while this unit waited for a connection: ${reason}`
        })
      )
    }
  }
}

/** @internal */
export interface TopologyOptions {
  readonly maxReplicaLagMs: number
  readonly readYourWritesTimeoutMs: number
  readonly healthCheckIntervalMs: number
  readonly loadBalancing: "spread" | "failover"
}

/**
 * The servers of one engine. With replicas: `members[0]` is the primary, the rest replicas. With several `url`s:
 * every member is a node (multi-primary).
 *
 * @internal
 */
export class Topology implements Router {
  readonly members: ReadonlyArray<Member>
  readonly replicas: ReadonlyArray<Member>
  readonly multiPrimary: boolean
  /** The primary's position at each health check (time, per-domain position), newest last. */
  private history: Array<{ readonly at: number; readonly pos: Positions }> = []
  private timer: ReturnType<typeof setInterval> | undefined = undefined
  private closed = false
  private turn = 0

  constructor(
    readonly identity: EngineImpl,
    members: ReadonlyArray<Member>,
    readonly options: TopologyOptions
  ) {
    this.members = members
    this.multiPrimary = members.every((m) => m.role === "node")
    this.replicas = members.filter((m) => m.role === "replica")
    for (const m of members) {
      m.server.member = m
      metrics.serverHealthy.unsafeUpdate(1, m.server.labels)
    }
  }

  get primary(): Member {
    return this.members[0]!
  }

  start(): void {
    this.timer = setInterval(() => this.check(), this.options.healthCheckIntervalMs)
    this.timer.unref()
    this.check()
  }

  close(): void {
    this.closed = true
    if (this.timer !== undefined) clearInterval(this.timer)
    for (const m of this.members) m.server.side.reset("probe")
  }

  /**
   * A connection for a unit (or an autocommit statement) that asks for `route`; called inside `uninterruptibleMask`
   * with its `restore`, like `EngineImpl.borrow`.
   */
  borrow(restore: Restore, route: Route): Effect.Effect<PooledConn, BorrowError> {
    if (this.multiPrimary) return this.borrowNode(restore, route)
    if (!route.readOnly || route.consistency === "primary" || this.replicas.length === 0) {
      return this.primary.server.borrowHere(restore)
    }
    let replica = this.pick(this.replicas)
    if (replica === undefined) return this.fallback(restore, "noHealthyReplica")
    const token = route.consistency === "replica" ? undefined : route.token
    const wanted = token === undefined ? undefined : positions(token)
    let needsWait = token !== undefined && !covers(replica.applied, wanted)
    const bound = this.options.readYourWritesTimeoutMs
    if (needsWait && (replica.lagMs ?? 0) > bound) {
      // the wait would most likely outlast readYourWritesTimeout: a replica close enough behind, else the primary now
      const close = this.pick(this.replicas.filter((r) => covers(r.applied, wanted) || (r.lagMs ?? 0) <= bound))
      if (close === undefined) return this.fallback(restore, "lagging")
      replica = close
      needsWait = !covers(close.applied, wanted)
    }
    const chosen = replica
    return Effect.matchCauseEffect(chosen.server.borrowHere(restore), {
      onFailure: cannotConnect(chosen, () => this.fallback(restore, "replicaError")),
      onSuccess: (pc) =>
        !needsWait
          ? Effect.succeed(pc)
          : this.waitOn(
              restore,
              { member: chosen, server: chosen.server, pc, token: token!, wanted, fn: "replicaWait" },
              (applied) =>
                applied
                  ? Effect.succeed(pc)
                  : applied === false
                    ? this.fallbackHaving(restore, token!, wanted)
                    : this.fallback(restore, "replicaError")
            )
    })
  }

  /**
   * Multi-primary: a healthy node (the least busy, or the first in order). Every unit waits for the fiber's token on
   * a node that may not have it: certification protects the rows a unit writes, not the ones it only reads (a node's
   * own commits are known to it: no wait there).
   */
  private borrowNode(restore: Restore, route: Route): Effect.Effect<PooledConn, BorrowError> {
    const token = route.consistency !== "replica" ? route.token : undefined
    const wanted = token === undefined ? undefined : positions(token)
    const tried = new Set<Member>()
    /** The node waited on timed out: the others are asked whether they have the token already, without waiting. */
    let timedOut: Member | undefined
    const engineName = this.identity.options.engineName ?? this.identity.options.name
    const notApplied = (waited: Member) =>
      new SessionError.ConnectionError({
        retryable: true,
        message: `no node of ${engineName} has applied causality token ${route.token}: node ${waited.name} did not within readYourWritesTimeout (${this.options.readYourWritesTimeoutMs} ms; Galera waits in whole seconds) and the others have not either; the unit was not run. Retry it, or read with consistency: "replica" if stale data will do`
      })
    const attempt = (): Effect.Effect<PooledConn, BorrowError> => {
      const untried = this.members.filter((m) => !tried.has(m))
      // with every node out, try them anyway in order: the health checks may lag behind a recovery
      const node = this.pick(untried) ?? untried[0]
      if (node === undefined) {
        if (timedOut !== undefined) return Effect.fail(notApplied(timedOut))
        return Effect.fail(
          new SessionError.ConnectionError({
            retryable: true,
            message: `no node of ${engineName} could take the unit: ${this.members.map((m) => `${m.name}: ${m.reason ?? "could not be connected to"}`).join("; ")}`
          })
        )
      }
      tried.add(node)
      const needsWait = token !== undefined && !covers(node.applied, wanted)
      return Effect.matchCauseEffect(node.server.borrowHere(restore), {
        onFailure: cannotConnect(node, attempt),
        onSuccess: (pc) =>
          !needsWait
            ? Effect.succeed(pc)
            : this.waitOn(
                restore,
                {
                  member: node,
                  server: node.server,
                  pc,
                  token,
                  wanted,
                  fn: timedOut === undefined ? "nodeWait" : "position"
                },
                (applied) => {
                  if (applied === true) return Effect.succeed(pc)
                  // timed out (or, after a time-out, not there yet): the bound is spent, the others are only asked
                  if (applied === false && timedOut === undefined) timedOut = node
                  return attempt()
                }
              )
      })
    }
    return attempt()
  }

  /** The healthy member to use: the first (failover) or the one with the fewest connections lent (spread). */
  private pick(candidates: ReadonlyArray<Member>): Member | undefined {
    let best: Member | undefined
    let bestLoad = Infinity
    const n = candidates.length
    // spread: start at a rotating position so that equally loaded members take turns
    const start = this.options.loadBalancing === "failover" && this.multiPrimary ? 0 : this.turn++ % Math.max(1, n)
    for (let k = 0; k < n; k++) {
      const m = candidates[(start + k) % n]!
      if (!m.healthy) continue
      if (this.options.loadBalancing === "failover" && this.multiPrimary) return m
      const load = m.server.pool.inUse + m.server.pool.waiting
      if (load < bestLoad) {
        best = m
        bestLoad = load
      }
    }
    return best
  }

  private fallback(
    restore: Restore,
    reason: "noHealthyReplica" | "waitTimeout" | "replicaError" | "lagging"
  ): Effect.Effect<PooledConn, BorrowError> {
    metrics.readFallbacks.unsafeUpdate(1, this.identity.unitLabelsWith("reason", reason))
    return this.primary.server.borrowHere(restore)
  }

  /**
   * The primary, after a replica did not reach `token` within `readYourWritesTimeout` — if the primary has it: a
   * token it never produced (another database's or cluster's, a typo, a primary replaced since) would make every
   * such read wait out the bound and then silently run without what the caller asked to see. Refused instead with
   * `InvalidOption`; nothing was run. (A failed check falls back to the primary as before.)
   */
  private fallbackHaving(
    restore: Restore,
    token: string,
    wanted: Positions | undefined
  ): Effect.Effect<PooledConn, BorrowError> {
    metrics.readFallbacks.unsafeUpdate(1, this.identity.unitLabelsWith("reason", "waitTimeout"))
    const primary = this.primary
    return Effect.flatMap(primary.server.borrowHere(restore), (pc) =>
      this.waitOn(restore, { member: primary, server: primary.server, pc, token, wanted, fn: "position" }, (applied) =>
        applied === true
          ? Effect.succeed(pc)
          : applied === false
            ? Effect.fail(
                new SessionError.InvalidOption({
                  option: "after",
                  message: `after: the causality token ${token} was never produced by ${primary.name}, this engine's primary (its position is ${primary.position ?? "unknown"}): a token from another database or cluster, or a primary replaced since. The unit was not run; read without the token, or with consistency: "replica" if stale data will do`
                })
              )
            : primary.server.borrowHere(restore)
      )
    )
  }

  /**
   * Waits on `w.pc` (of `w.member`) until the server has applied `w.token`, bounded by `readYourWritesTimeout`;
   * then `next(true)`, or `next(false)` on time-out, `next(undefined)` when the wait failed — in both cases the
   * connection has gone back to its pool. Interrupting the wait stops it on the server (KILL QUERY) and returns the
   * connection.
   */
  private waitOn(
    restore: Restore,
    w: Wait,
    next: (applied: boolean | undefined) => Effect.Effect<PooledConn, BorrowError>
  ): Effect.Effect<PooledConn, BorrowError> {
    const server = w.member.server
    const started = Date.now()
    return Effect.matchCauseEffect(restore(askApplied(w, this.options.readYourWritesTimeoutMs)), {
      onFailure: (cause) => {
        server.release(w.pc, false)
        return Effect.failCause(cause)
      },
      onSuccess: (applied) => {
        if (w.fn !== "position") metrics.causalWait.unsafeUpdate(Date.now() - started, this.identity.unitLabels)
        if (applied === true) {
          if (w.wanted !== undefined) w.member.applied = mergePositions(w.member.applied, w.wanted)
          return next(true)
        }
        server.release(w.pc, false)
        return next(applied)
      }
    })
  }

  /** One round of health checks, each server on its own probe connection, bounded by `controlTimeout`. */
  private check(): void {
    if (this.closed) return
    const now = Date.now()
    if (this.multiPrimary) {
      for (const m of this.members) {
        this.probe(m, m.server.options.driver.topology.node, (row) => {
          m.position = row.pos === undefined || row.pos === null ? undefined : String(row.pos)
          m.applied = m.position === undefined ? undefined : positions(m.position)
          const ready = String(row.ready ?? "")
          if (ready === "ON") m.setHealthy(true, undefined)
          else m.setHealthy(false, `not part of the cluster's primary component (wsrep_ready=${ready || "unknown"})`)
        })
      }
      return
    }
    const primary = this.primary
    this.probe(primary, primary.server.options.driver.topology.primary, (row) => {
      primary.position = String(row.pos ?? "")
      const pos = positions(primary.position)
      if (pos !== undefined) {
        this.history.push({ at: now, pos })
        // keep what the lag rule can still need: samples up to twice maxReplicaLag old, at least two
        const horizon = now - 2 * this.options.maxReplicaLagMs - this.options.healthCheckIntervalMs
        while (this.history.length > 2 && this.history[0]!.at < horizon) this.history.shift()
      }
      primary.setHealthy(true, undefined)
    })
    for (const r of this.replicas) {
      this.probe(r, r.server.options.driver.topology.replica, (row) => {
        r.position = String(row.pos ?? "")
        r.applied = positions(r.position)
        r.lagMs = this.lagOf(r.applied, Date.now())
        metrics.replicaLag.unsafeUpdate(r.lagMs ?? 0, r.server.labels)
        if (String(row.running ?? "") !== "ON") {
          // the driver's own words when it has them (PostgreSQL: not in recovery, or no WAL receiver)
          const why = typeof row.reason === "string" && row.reason !== "" ? row.reason : undefined
          r.setHealthy(false, why ?? "replication is not running (Slave_running is OFF: its IO or SQL thread stopped)")
        } else if (r.lagMs !== undefined && r.lagMs > this.options.maxReplicaLagMs) {
          r.setHealthy(false, `${r.lagMs} ms behind the primary (maxReplicaLag ${this.options.maxReplicaLagMs} ms)`)
        } else r.setHealthy(true, undefined)
      })
    }
  }

  /**
   * How far behind the primary a replica is: the age of the oldest primary position (of the health checks) it has
   * not applied yet; 0 when it has applied the latest.
   */
  private lagOf(applied: Positions | undefined, now: number): number | undefined {
    const h = this.history
    if (h.length === 0 || applied === undefined) return undefined
    for (let i = 0; i < h.length; i++) {
      if (!covers(applied, h[i]!.pos)) return now - h[i]!.at
    }
    return 0
  }

  /** Runs a health query on the member's probe connection; an error or no answer takes the member out. */
  private probe(m: Member, sql: string, onRow: (row: Record<string, unknown>) => void): void {
    if (m.probing || this.closed) return
    m.probing = true
    const server = m.server
    let settled = false
    const done = (err: unknown, row?: Record<string, unknown>) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      m.probing = false
      if (this.closed) return
      if (err !== undefined && err !== null) {
        server.side.reset("probe")
        m.setHealthy(false, `health check failed: ${(err as { message?: string }).message ?? String(err)}`)
        return
      }
      onRow(row ?? {})
    }
    const timer = setTimeout(
      () => done(new Error(`no answer to the health check within ${server.controlTimeoutMs} ms`)),
      server.controlTimeoutMs
    )
    timer.unref()
    server.side.run("probe", sql, (err, reply) => {
      const rows = reply?.rows
      done(err, Array.isArray(rows) ? (rows[0] as Record<string, unknown> | undefined) : undefined)
    })
  }

  /** What `Engine.servers` reports. */
  status(): ReadonlyArray<ServerStatus> {
    return this.members.map((m) => ({
      name: m.name,
      role: m.role,
      healthy: m.healthy,
      reason: m.reason,
      lagMs: m.role === "replica" ? m.lagMs : undefined,
      position: m.position,
      stats: m.server.pool.stats()
    }))
  }
}

/** A wait for a causality token on one member's connection. */
interface Wait extends CausalWait {
  readonly member: Member
}

/** A member that cannot be connected to is taken out, and `otherwise` runs instead; any other failure stands. */
const cannotConnect =
  <A, E>(member: Member, otherwise: () => Effect.Effect<A, E>) =>
  (cause: Cause.Cause<SessionError.PoolTimeout | SessionError.ConnectionError>) => {
    const e = Cause.failureOption(cause)
    // an engine shutting down refuses new borrowers: that says nothing about the server
    if (e._tag === "Some" && e.value._tag === "ConnectionError" && !member.server.pool.closing) {
      member.takeOut(`cannot connect: ${e.value.message}`)
      return otherwise()
    }
    return Effect.failCause(cause)
  }

/** @internal */
export interface ServerStatus {
  readonly name: string
  readonly role: "primary" | "replica" | "node"
  readonly healthy: boolean
  readonly reason: string | undefined
  readonly lagMs: number | undefined
  readonly position: string | undefined
  readonly stats: SessionError.PoolStats
}
