/**
 * The lifecycle of a unit of work as one state type and pure functions: `step` takes the state and the outcome of a
 * command (or the unit's end) to the next state, `decide` says how an ending unit ends, and `commitResult` reads
 * COMMIT's outcome. Nothing else changes a unit's state (`SessionState.phase`), and nothing here touches a
 * connection: the session runs the commands these functions ask for and feeds their outcomes back.
 *
 * ```
 *            Began                      StatementDone{inTransaction:false}  (DDL, a literal COMMIT, SET autocommit = 1)
 *   Idle ───────────────▶ Open ────────────────────────────────────────────▶ Idle (epoch + 1)
 *    │ ▲ │                 ▲ │
 *    │ │ │ Opening         │ │ Failed{inTransaction ≠ true} / Lost / OpenFailed / ControlFailed
 *    │ │ ▼                 │ ▼
 *    │ │ Opening ──────────┘ Aborted{cause, serverOpen}
 *    │ │   │  StatementDone{true} / Failed{true}
 *    │ └───┘  StatementDone{false} / Failed{false} / NotSent (nothing was opened)
 *    │                     │
 *    └──── End ────────────┴──── End ──▶ Ending{disposition} ── Ended ──▶ Ended
 * ```
 *
 * `Opening`: on a connection whose server said autocommit is off and no transaction is open, the unit's first
 * statement is sent without START TRANSACTION: the server opens the transaction at that statement (or not, for a
 * statement that touches no transactional table). Until the server has said which, the unit counts the transaction
 * as open (`serverOpen`): its end sends COMMIT or ROLLBACK, never a release with a transaction left behind.
 *
 * Savepoints are the same machine one level down: a savepoint level ends by `decideSavepoint`.
 *
 * @internal
 */

/** What a unit is doing. @internal */
export type Phase =
  /** No transaction of this unit is open on the server (none yet, or the server committed the last on its own). */
  | { readonly _tag: "Idle"; readonly epoch: number }
  /**
   * The unit's first statement is in flight on a connection with autocommit off: the server opens the transaction
   * at it, or not (a statement that touches no transactional table). Counted as open until the server says.
   */
  | { readonly _tag: "Opening"; readonly epoch: number }
  /** A transaction of this unit is open on the server. */
  | { readonly _tag: "Open"; readonly epoch: number }
  /** The unit can only roll back: the server ended its transaction in failure, or opening it failed. */
  | { readonly _tag: "Aborted"; readonly epoch: number; readonly cause: unknown; readonly serverOpen: boolean }
  /** The unit is ending as `disposition` says; nothing else of it may run. */
  | { readonly _tag: "Ending"; readonly epoch: number; readonly disposition: Disposition; readonly cause?: unknown }
  | { readonly _tag: "Ended"; readonly epoch: number }

/** How a command ended, as the unit needs to know it. @internal */
export type Event =
  /** The transaction was opened (START TRANSACTION answered). */
  | { readonly _tag: "Began" }
  /** A statement that opens the transaction on its own (autocommit off) is being sent. */
  | { readonly _tag: "Opening" }
  /** The opening statement was never sent (stopped before it left): nothing was opened. */
  | { readonly _tag: "NotSent" }
  /** A statement ended; the server said whether a transaction is still open (`undefined`: it did not say). */
  | { readonly _tag: "StatementDone"; readonly inTransaction: boolean | undefined }
  /**
   * What opens a statement's way failed: the frame's settings (SET) or START TRANSACTION. `cancelled`: it was
   * stopped by the interruption of the statement it was opening (nothing was opened, only that statement fails);
   * `lost`: the connection is gone.
   */
  | { readonly _tag: "OpenFailed"; readonly cause: unknown; readonly cancelled: boolean; readonly lost: boolean }
  /**
   * A statement failed; `inTransaction`: whether the server says a transaction is open after it (`undefined`: it
   * could not be asked); `rollsBack`: the failure is one that ends a transaction (deadlock, lock wait timeout,
   * serialization failure) — after an opening statement, the server's "none open" cannot tell "nothing was opened"
   * from "opened and rolled back", and the latter aborts the unit as it would after START TRANSACTION.
   */
  | {
      readonly _tag: "Failed"
      readonly cause: unknown
      readonly inTransaction: boolean | undefined
      readonly rollsBack: boolean
    }
  /** The connection was lost: the server rolls back whatever was open. */
  | { readonly _tag: "Lost"; readonly cause: unknown }
  /** One of sessionfx's own statements (SAVEPOINT, RELEASE, ROLLBACK TO) failed: the unit can only roll back. */
  | { readonly _tag: "ControlFailed"; readonly cause: unknown }
  /** The unit's own ROLLBACK of the open transaction ended it (a savepoint outlived by an implicit commit). */
  | { readonly _tag: "RolledBack" }
  /** The unit ends as decided. */
  | { readonly _tag: "End"; readonly disposition: Disposition; readonly cause?: unknown }
  /** Its end is done: the connection has gone back. */
  | { readonly _tag: "Ended" }

/** How a unit ends. @internal */
export type Disposition =
  /** COMMIT is sent. */
  | "commit"
  /** Nothing is open on the server: the connection goes back, the unit is committed (nothing to commit). */
  | "release"
  /** ROLLBACK is sent (or nothing is open and nothing is sent). */
  | "rollback"
  /** The unit succeeded but its connection was lost with its transaction open: the server rolled it back. */
  | "lost"

/** @internal */
export const initial: Phase = { _tag: "Idle", epoch: 0 }

/** Whether statements of the unit may still run (it has not begun to end). @internal */
export const isOpen = (p: Phase): boolean =>
  p._tag === "Idle" || p._tag === "Opening" || p._tag === "Open" || p._tag === "Aborted"

/** Whether a transaction of this unit is open on the server, as far as the server has said. @internal */
export const serverOpen = (p: Phase): boolean =>
  p._tag === "Open" || p._tag === "Opening" || (p._tag === "Aborted" && p.serverOpen)

/** The failure that aborted the unit, if it is aborted. @internal */
export const abortCause = (p: Phase): unknown => (p._tag === "Aborted" ? p.cause : undefined)

const abort = (p: Phase, cause: unknown, open: boolean): Phase =>
  p._tag === "Aborted"
    ? { ...p, serverOpen: p.serverOpen && open }
    : { _tag: "Aborted", epoch: p.epoch, cause, serverOpen: open }

/**
 * The next state. Events that cannot happen in a state (a statement outcome after the unit began to end) leave it
 * as it is: a late answer never reopens a unit.
 *
 * @internal
 */
export const step = (p: Phase, e: Event): Phase => {
  if (p._tag === "Ended") return p
  if (p._tag === "Ending") return e._tag === "Ended" ? { _tag: "Ended", epoch: p.epoch } : p
  if (e._tag === "End") {
    return e.cause === undefined
      ? { _tag: "Ending", epoch: p.epoch, disposition: e.disposition }
      : { _tag: "Ending", epoch: p.epoch, disposition: e.disposition, cause: e.cause }
  }
  if (e._tag === "Ended") return { _tag: "Ended", epoch: p.epoch }
  if (p._tag === "Opening") return fromOpening(p, e)
  switch (e._tag) {
    case "Began":
      return p._tag === "Idle" ? { _tag: "Open", epoch: p.epoch } : p
    case "Opening":
      return p._tag === "Idle" ? { _tag: "Opening", epoch: p.epoch } : p
    case "NotSent":
      return p
    case "StatementDone":
      if (p._tag === "Idle") return e.inTransaction === true ? { _tag: "Open", epoch: p.epoch } : p
      // the server committed the transaction on its own: the unit goes on in a new one, opened by its next statement
      return p._tag === "Open" && e.inTransaction === false ? { _tag: "Idle", epoch: p.epoch + 1 } : p
    case "OpenFailed":
      if (e.cancelled && !e.lost) return p
      return abort(p, e.cause, !e.lost && serverOpen(p))
    case "Failed":
      // outside a transaction, a failed statement is the statement's own failure; a transaction the failure ended
      // (or one the server cannot be asked about: counted as open, so that ROLLBACK is sent) aborts the unit
      if (p._tag === "Idle") return e.inTransaction === true ? { _tag: "Open", epoch: p.epoch } : p
      return serverOpen(p) && e.inTransaction !== true ? abort(p, e.cause, e.inTransaction === undefined) : p
    case "Lost":
      return abort(p, e.cause, false)
    case "ControlFailed":
      return abort(p, e.cause, serverOpen(p))
    case "RolledBack":
      return p._tag === "Open"
        ? { _tag: "Idle", epoch: p.epoch }
        : p._tag === "Aborted"
          ? { ...p, serverOpen: false }
          : p
  }
}

/** `step` from `Opening`: the server's word on the opening statement decides whether a transaction is open. */
const fromOpening = (
  p: Phase & { readonly _tag: "Opening" },
  e: Exclude<Event, { readonly _tag: "End" | "Ended" }>
): Phase => {
  switch (e._tag) {
    case "StatementDone":
      // `undefined`: the server did not say; counted as open
      return e.inTransaction === false ? { _tag: "Idle", epoch: p.epoch } : { _tag: "Open", epoch: p.epoch }
    case "Failed":
      if (e.inTransaction === undefined) return abort(p, e.cause, true)
      if (e.inTransaction) return { _tag: "Open", epoch: p.epoch }
      return e.rollsBack ? abort(p, e.cause, false) : { _tag: "Idle", epoch: p.epoch }
    case "NotSent":
    case "RolledBack":
      return { _tag: "Idle", epoch: p.epoch }
    case "Lost":
      return abort(p, e.cause, false)
    case "OpenFailed":
      return abort(p, e.cause, !e.lost)
    case "ControlFailed":
      return abort(p, e.cause, true)
    case "Began":
    case "Opening":
      return p
  }
}

/** How the unit's own effect ended. @internal */
export type Exit = "success" | "failure" | "defect" | "interrupt"

/** What the unit knows when it ends. @internal */
export interface Ending {
  readonly exit: Exit
  /** A statement was interrupted after the server had run it: its effect is in the transaction. */
  readonly poisoned: boolean
  readonly rollbackOnly: boolean
  /** The connection is already closed or broken. */
  readonly connectionGone: boolean
}

/** The decision, and the reason of a rollback (`sessionfx_rollbacks_total{cause}`). @internal */
export interface Decision {
  readonly disposition: Disposition
  readonly reason: "aborted" | "failure" | "defect" | "interrupt" | "interrupted" | "rollbackOnly" | undefined
}

/**
 * The one place that decides how a unit ends: an aborted unit, a failed one, one with a statement that ran after
 * its fiber was interrupted, or one marked rollback-only rolls back; a unit with nothing open on the server is
 * released; a unit whose connection is gone cannot commit; the rest commits.
 *
 * @internal
 */
export const decide = (p: Phase, end: Ending): Decision => {
  const rollback = (reason: Decision["reason"]): Decision => ({ disposition: "rollback", reason })
  if (p._tag === "Aborted") return rollback("aborted")
  if (end.exit !== "success") return rollback(end.exit)
  if (end.poisoned) return rollback("interrupted")
  if (end.rollbackOnly) return rollback("rollbackOnly")
  if (!serverOpen(p)) return { disposition: "release", reason: undefined }
  if (end.connectionGone) return { disposition: "lost", reason: undefined }
  return { disposition: "commit", reason: undefined }
}

/** What a rollback needs: a ROLLBACK only when something is open on a connection that still works. @internal */
export const rollbackNeeded = (p: Phase, connectionGone: boolean): boolean => serverOpen(p) && !connectionGone

/** How COMMIT ended. @internal */
export type CommitOutcome =
  | { readonly _tag: "Done" }
  | { readonly _tag: "Failed"; readonly cause: unknown }
  | { readonly _tag: "Lost"; readonly cause: unknown }
  | { readonly _tag: "Interrupted"; readonly sent: boolean }

/** What COMMIT's outcome means for the unit. @internal */
export type CommitResult =
  /** Committed: the token, the hooks, the connection back. */
  | "committed"
  /** The server refused and rolled back: a typed failure, the connection reset. */
  | "failed"
  /** The reply never came: committed or not, nobody knows (a keyed unit asks its key). */
  | "unknown"
  /** Not sent: nothing was committed. */
  | "notSent"

/** @internal */
export const commitResult = (o: CommitOutcome): CommitResult => {
  switch (o._tag) {
    case "Done":
      return "committed"
    case "Failed":
      return "failed"
    case "Lost":
      return "unknown"
    case "Interrupted":
      return o.sent ? "unknown" : "notSent"
  }
}

/** How a savepoint level ends. @internal */
export type SavepointEnd =
  /** RELEASE SAVEPOINT. */
  | "release"
  /** ROLLBACK TO SAVEPOINT. */
  | "rollbackTo"
  /** The savepoint no longer exists (an implicit commit ended it) and there is nothing to undo. */
  | "nothing"
  /** The savepoint no longer exists and what it did is the whole open transaction: ROLLBACK. */
  | "rollbackAll"
  /** The unit is aborted: nothing is sent; the level fails if it succeeded. */
  | "aborted"

/**
 * The one place that decides how a savepoint level ends (the same machine one level down).
 *
 * @internal
 */
export const decideSavepoint = (
  p: Phase,
  o: { readonly undo: boolean; readonly epochAtStart: number }
): SavepointEnd => {
  if (p._tag === "Aborted") return "aborted"
  if (p.epoch !== o.epochAtStart) return o.undo && serverOpen(p) ? "rollbackAll" : "nothing"
  return o.undo ? "rollbackTo" : "release"
}
