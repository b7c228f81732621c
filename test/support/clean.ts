/**
 * The checks run after every scenario: no open transaction of the app user on the server, no more app connections
 * than the pool may hold, an idle pool, and (after the Engine is closed) no stray sockets in this process.
 */
import { Engine } from "@sessionfx/session"
import * as Effect from "effect/Effect"
import type { Db } from "./db.js"

/** TCP sockets (client or accepted) this process holds now. */
export const tcpSockets = (): number => process.getActiveResourcesInfo().filter((r) => r === "TCPSocketWrap").length

/** Polls `probe` every 50 ms until `ok` holds or `timeoutMs` passes; returns the last value either way. */
export const settle = <A, E, R>(probe: Effect.Effect<A, E, R>, ok: (a: A) => boolean, timeoutMs = 10_000) =>
  Effect.gen(function* () {
    const deadline = Date.now() + timeoutMs
    let last = yield* probe
    while (!ok(last) && Date.now() < deadline) {
      yield* Effect.sleep("50 millis")
      last = yield* probe
    }
    return last
  })

export interface CleanReport {
  readonly openTransactions: number
  readonly appConnections: number
  readonly inUse: number
  readonly waiting: number
  /** App connections above the allowance: counted as leaks. */
  readonly leaks: number
}

/**
 * While the Engine is still open: polls (bounded, 10 s) until the app user has no open transaction, at most
 * `poolSize + 1` connections (the +1: the Engine opens a short-lived extra connection of the same user to send
 * `KILL QUERY` for an interrupted statement, outside the pool's accounting), and the pool has nothing lent or
 * waiting. Fails with the figures when that state is not reached.
 */
export const assertClean = (db: Db, poolSize: number) =>
  Effect.gen(function* () {
    const trx = yield* settle(db.openTransactions, (n) => n === 0)
    const conns = yield* settle(db.appConnections, (n) => n <= poolSize + 1)
    const stats = yield* settle(Engine.stats, (s) => s.inUse === 0 && s.waiting === 0)
    const report: CleanReport = {
      openTransactions: trx,
      appConnections: conns,
      inUse: stats.inUse,
      waiting: stats.waiting,
      leaks: Math.max(0, conns - (poolSize + 1)) + stats.inUse
    }
    if (trx !== 0 || report.leaks !== 0 || stats.waiting !== 0) {
      return yield* Effect.dieMessage(`not clean after the scenario: ${JSON.stringify(report)}`)
    }
    return report
  })

/**
 * After the Engine (and any proxy) is closed: the server holds no app connection and this process holds no more
 * TCP sockets than `baseline` (taken before the Engine was built). Returns the number of stray sockets (0) or fails.
 */
export const assertClosed = (db: Db, baseline: number) =>
  Effect.gen(function* () {
    const conns = yield* settle(db.appConnections, (n) => n === 0)
    const sockets = yield* settle(Effect.sync(tcpSockets), (n) => n <= baseline, 5_000)
    if (conns !== 0 || sockets > baseline) {
      return yield* Effect.dieMessage(
        `after closing the Engine: ${conns} app connection(s) on the server, ${sockets} TCP sockets in the process (baseline ${baseline})`
      )
    }
    return 0
  })
