/**
 * One command on a pooled connection: it settles exactly once (from the driver's callback, or when the connection
 * is destroyed under it), records what the server said (transaction status, session state, the commit's token),
 * and can be stopped (`cancel`: KILL QUERY until it lands, the connection destroyed after `killGrace`).
 *
 * @internal
 */
import { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import * as SessionError from "../SessionError.js"
import type { DriverErrors, Reply } from "./driver/types.js"
import type { DestroyReason, PooledConn } from "./pool.js"

/** What a command needs of the server its connection belongs to (an `EngineImpl`). @internal */
export interface CommandHost {
  readonly member: { takeOut(reason: string): void } | undefined
  readonly pool: { destroy(pc: PooledConn, reason: DestroyReason, why?: string): void }
  readonly options: { readonly killGraceMs: number; readonly driver: { readonly errors: DriverErrors } }
  killQuery(pc: PooledConn, cb: (ok: boolean) => void): void
}

const messageOf = (err: unknown): string => {
  const e = err as { readonly message?: unknown; readonly code?: unknown }
  return String(e.message ?? e.code ?? err)
}

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
  /** The server's word on its transaction when the command ended (`undefined`: it did not say). */
  inTransaction: boolean | undefined = undefined
  deadline: ReturnType<typeof setTimeout> | undefined = undefined
  private onSettled: (() => void) | undefined = undefined
  /** The driver's callback, also what the pool calls when it destroys the connection (`PooledConn.pending`). */
  readonly callback: (err: unknown, reply: Reply | undefined) => void

  constructor(
    /** The server the connection belongs to: its pool, its KILLs, its place in a topology. */
    readonly engine: CommandHost,
    readonly pc: PooledConn,
    private readonly done: (err: SessionError.SessionError | undefined, rows: unknown) => void,
    readonly internal: boolean
  ) {
    this.callback = (err, reply) => this.settle(err, reply)
  }

  private settle(err: unknown, reply: Reply | undefined): void {
    if (this.settled) return
    this.settled = true
    const pc = this.pc
    if (pc.pending === this.callback) pc.pending = undefined
    if (this.deadline !== undefined) clearTimeout(this.deadline)
    if (err) {
      const errors = this.engine.options.driver.errors
      if (errors.isFatal(err)) {
        // lost under a command, not closed by the pool (a deadline, an interruption): a replica or node of a
        // topology is taken out at once
        if (!pc.closed) this.engine.member?.takeOut(`a connection was lost: ${messageOf(err)}`)
        pc.broken = true
      } else if (errors.isNodeNotReady(err)) {
        // a Galera node out of the primary component
        this.engine.member?.takeOut(`refused a statement: ${messageOf(err)}`)
      }
    } else if (reply !== undefined) {
      this.succeeded = true
      this.inTransaction = reply.inTransaction
      if (reply.inTransaction !== undefined) pc.inTrans = reply.inTransaction
      if (reply.autocommit !== undefined) pc.autocommit = reply.autocommit
      if (reply.token !== undefined) pc.lastGtid = reply.token
      if (reply.stateChanged && !this.internal) pc.dirty = true
      // a user's statement changed autocommit (flagged or not): the next borrower gets a reset connection
      if (reply.autocommit !== undefined && reply.autocommit !== pc.settings.autocommit && !this.internal)
        pc.dirty = true
    }
    this.done(err ? SessionError.classify(err) : undefined, reply?.rows)
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
