/**
 * Causality waits: whether a server has applied a token, asked on one of its connections and bounded by
 * `readYourWritesTimeout` — a wait on the server where the database has one (MariaDB's MASTER_GTID_WAIT, Galera's
 * WSREP_SYNC_WAIT_UPTO_GTID), polled where it has not (a PostgreSQL standby), or only the position now.
 *
 * @internal
 */
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"
import type { EngineImpl } from "./engine.js"
import type { PooledConn } from "./pool.js"
import { covers, type Positions, positions } from "./tokens.js"

/** A wait for a causality token on one server's connection. @internal */
export interface CausalWait {
  readonly server: EngineImpl
  readonly pc: PooledConn
  readonly token: string
  readonly wanted: Positions | undefined
  /** position: no wait, only whether the server has applied it already. */
  readonly fn: "replicaWait" | "nodeWait" | "position"
}

/**
 * Asks the server whether it has applied the token, waiting up to `timeoutMs`: `true`, `false` (timed out) or
 * `undefined` (the wait failed). A driver without a server-side wait for replicas (`replicaWait` undefined:
 * PostgreSQL) is asked for its position again and again (`pollApplied`).
 *
 * @internal
 */
export const askApplied = (w: CausalWait, timeoutMs: number): Effect.Effect<boolean | undefined> => {
  const texts = w.server.options.driver.topology
  if (w.fn === "replicaWait" && texts.replicaWait === undefined) return pollApplied(w, timeoutMs)
  return askOnce(w, timeoutMs)
}

/**
 * Polls for the position: at once, then after 1, 2, 4 … ms, never more than 20 ms apart, until it covers the token or
 * `timeoutMs` has passed. Each poll is one short statement: a statement that waits on a PostgreSQL standby holds a
 * snapshot that conflicts with the replay of cleanup records, and so would hold up the very replay it waits for.
 */
const pollApplied = (w: CausalWait, timeoutMs: number): Effect.Effect<boolean | undefined> => {
  const once = askOnce({ ...w, fn: "position" }, timeoutMs)
  const again = Schedule.exponential(Duration.millis(1)).pipe(
    Schedule.union(Schedule.spaced(Duration.millis(20))),
    Schedule.upTo(Duration.millis(timeoutMs)),
    Schedule.intersect(Schedule.recurWhile<boolean | undefined>((applied) => applied === false)),
    Schedule.passthrough
  )
  // the engine's waits are in real time (its deadlines are timers), also under a TestClock
  return Effect.withClock(Effect.repeat(once, again), liveClock)
}

const liveClock = Clock.make()

/** One statement: the wait (bounded on the server by `timeoutMs`) or, for `position`, the position now. */
const askOnce = (w: CausalWait, timeoutMs: number): Effect.Effect<boolean | undefined> => {
  const server = w.server
  const fn = w.fn
  // seconds: MariaDB's MASTER_GTID_WAIT takes fractions, WSREP_SYNC_WAIT_UPTO_GTID whole seconds
  const seconds = fn === "replicaWait" ? timeoutMs / 1000 : Math.max(1, Math.ceil(timeoutMs / 1000))
  const driver = server.options.driver
  const texts = driver.topology
  const sql = fn === "position" ? texts.position : fn === "replicaWait" ? texts.replicaWait! : texts.nodeWait
  const values = fn === "position" ? undefined : driver.bind([w.token, seconds])
  if (values instanceof Error) return Effect.die(values)
  const spec = {
    method: values === undefined ? "query" : "execute",
    sql,
    values,
    deadlineMs: timeoutMs + server.controlTimeoutMs,
    internal: true
  } as const
  return Effect.async<boolean | undefined>((resume) => {
    const command = server.startCommand(w.pc, spec, (err, rows) => {
      // WSREP_SYNC_WAIT_UPTO_GTID times out with an error
      if (err !== undefined)
        return resume(Effect.succeed(driver.errors.isWaitTimeout(err.cause ?? err) ? false : undefined))
      const v = Array.isArray(rows) ? (rows[0] as { applied?: unknown } | undefined)?.applied : undefined
      resume(
        Effect.succeed(
          fn === "position"
            ? covers(positions(String(v ?? "")), w.wanted)
            : fn === "replicaWait"
              ? Number(v) === 0
              : Number(v) === 1
        )
      )
    })
    return Effect.suspend(() => (command === undefined ? Effect.void : command.cancel()))
  })
}
