/**
 * Ending a unit: `Unit.decide` says how (commit, release, rollback, lost), and this runs it — COMMIT and what its
 * outcome means (`Unit.commitResult`), ROLLBACK, the connection back to its pool, the commit's causality token and
 * the `afterCommit` hooks.
 *
 * @internal
 */
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as SessionError from "../SessionError.js"
import type { Command } from "./engine.js"
import type { UnitState } from "./frame.js"
import * as keys from "./keys.js"
import * as metrics from "./metrics.js"
import type { DestroyReason } from "./pool.js"
import { unwrapError } from "./savepoints.js"
import * as Unit from "./unit.js"

const runHooks = (hooks: ReadonlyArray<Effect.Effect<void>> | undefined) =>
  hooks === undefined || hooks.length === 0
    ? Effect.void
    : Effect.forEach(
        hooks,
        (hook) =>
          Effect.catchAllCause(hook, (cause) =>
            Effect.logWarning("sessionfx: an afterCommit hook failed; the transaction is committed", cause)
          ),
        { discard: true }
      )

/**
 * The types of a unit's end: with `passThrough`, the unit's own value and failure (or the ending's failure); without,
 * `void` or the ending's failure.
 *
 * @internal
 */
export interface Finish {
  <A, E>(state: UnitState, exit: Exit.Exit<A, E>, passThrough: true): Effect.Effect<A, E | SessionError.SessionError>
  <A, E>(state: UnitState, exit: Exit.Exit<A, E>, passThrough: false): Effect.Effect<void, SessionError.SessionError>
  <A, E>(
    state: UnitState,
    exit: Exit.Exit<A, E>,
    passThrough: boolean
  ): Effect.Effect<A | void, E | SessionError.SessionError>
}

/**
 * Ends a session with the exit of its unit of work: COMMIT on success, ROLLBACK otherwise, and gives the connection
 * back (the pool resets it unless the server said it is clean). A failing COMMIT is a typed error. Runs
 * uninterruptibly, except while COMMIT is in flight: interrupted then, the connection is destroyed and the outcome
 * is unknown (and the fiber's exit is the interruption).
 *
 * With `passThrough`, the result is the unit's own outcome (its value, or its failure with classified errors
 * unwrapped) unless ending it failed; without, it is `void` or the ending's failure (the Layer spelling, where the
 * unit's own outcome is already the scope's).
 *
 * @internal
 */
export const finishSession: Finish = <A, E>(
  state: UnitState,
  exit: Exit.Exit<A, E>,
  passThrough: boolean
): Effect.Effect<A | void, E | SessionError.SessionError> =>
  Effect.uninterruptible(Effect.suspend(() => finishNow(state, exit, passThrough)))

/** `finishSession` for a caller that is already uninterruptible. */
/** @internal */
export const finishNow: Finish = <A, E>(
  state: UnitState,
  exit: Exit.Exit<A, E>,
  passThrough: boolean
): Effect.Effect<A | void, E | SessionError.SessionError> => {
  // a statement the owner left running when it was interrupted: stop it before ROLLBACK
  if (state.root.running !== undefined) {
    return Effect.zipRight(
      state.root.reclaim(),
      Effect.suspend(() => finishNow(state, exit, passThrough))
    )
  }
  const lock = state.root.lock
  if (!lock.locked) {
    lock.locked = true
    return endSession(state, exit, passThrough)
  }
  return Effect.zipRight(
    lock.take,
    Effect.suspend(() => endSession(state, exit, passThrough))
  )
}

/** How the unit's own effect ended, for `Unit.decide`. */
const exitKind = (exit: Exit.Exit<unknown, unknown>): Unit.Exit =>
  Exit.isSuccess(exit)
    ? "success"
    : Cause.isInterruptedOnly(exit.cause)
      ? "interrupt"
      : Cause.isFailure(exit.cause)
        ? "failure"
        : "defect"

const endSession = <A, E>(
  state: UnitState,
  exit: Exit.Exit<A, E>,
  passThrough: boolean
): Effect.Effect<A | void, E | SessionError.SessionError> => {
  const { engine, pc, root } = state
  const gone = pc.broken || pc.closed
  const decision = Unit.decide(state.phase, {
    exit: exitKind(exit),
    poisoned: root.poisoned !== undefined,
    rollbackOnly: state.rollbackOnly,
    connectionGone: gone
  })
  const sendRollback = Unit.rollbackNeeded(state.phase, gone)
  const aborted = state.abortError
  state.apply({ _tag: "End", disposition: decision.disposition })
  state.owner = undefined
  root.closed = true
  if (state.watched !== undefined) engine.longUnits.end(state.watched)
  // statements queued behind the close now see a closed session and fail with SessionClosed
  root.lock.unsafeRelease()
  metrics.sessionDuration.unsafeUpdate(Date.now() - state.startedAt, engine.unitLabels)
  const outcome: Effect.Effect<A | void, E | SessionError.SessionError> = passThrough
    ? Exit.mapError(exit, unwrapError)
    : Effect.void
  switch (decision.disposition) {
    case "rollback": {
      const reason = decision.reason!
      // an aborted unit has its abort's cause, an interrupted one its poisoning (see `Unit.decide`)
      const after =
        reason === "aborted" ? Effect.fail(aborted!) : reason === "interrupted" ? Effect.fail(root.poisoned!) : outcome
      return rollbackUnit(state, reason, sendRollback, after)
    }
    case "release":
      return endCommitted(state, outcome)
    case "lost":
      endWith(state, false, "broken")
      return Effect.fail(
        new SessionError.ConnectionLost({
          message:
            "the connection was lost before COMMIT was sent: the server rolled the transaction back; the unit can be retried"
        })
      )
    case "commit":
      return commitUnit(state, outcome)
  }
}

/** A committed unit (or one with nothing to commit): its token read before its connection goes back, then the rest. */
const endCommitted = <A, E>(state: UnitState, outcome: Effect.Effect<A, E>): Effect.Effect<A, E> => {
  const gtid = state.pc.lastGtid
  endWith(state, false)
  return committed(state, gtid, outcome)
}

/** Gives the unit's connection back (or destroys it) and ends the unit. */
const endWith = (state: UnitState, reset: boolean, reason?: DestroyReason): void => {
  state.engine.release(state.pc, reset, reason)
  state.apply({ _tag: "Ended" })
}

/** ROLLBACK (when something is open on a working connection), then `after`. */
const rollbackUnit = <A, E>(
  state: UnitState,
  reason: string,
  send: boolean,
  after: Effect.Effect<A, E>
): Effect.Effect<A, E> => {
  const { engine, pc } = state
  metrics.rollbacks.unsafeUpdate(1, engine.unitLabelsWith("cause", reason))
  if (!send) {
    // nothing open (or the connection is gone, and the server rolls back): the pool decides what the connection
    // needs from what the server last said
    endWith(state, false)
    return after
  }
  return Effect.async<A, E>((resume) => {
    // a ROLLBACK that does not answer is cut short: closing the connection rolls back on the server too
    engine.startCommand(pc, engine.control(state.dialect.rollback), (err) => {
      if (err !== undefined) endWith(state, false, pc.broken ? "broken" : "resetFailed")
      else endWith(state, false)
      resume(after)
    })
  })
}

/** The unit is committed: its causality token flows on in the fiber (before the hooks: they may read what it wrote). */
const committed = <A, E>(
  state: UnitState,
  gtid: string | undefined,
  outcome: Effect.Effect<A, E>
): Effect.Effect<A, E> => {
  const { engine, pc, root } = state
  metrics.commits.unsafeUpdate(1, engine.unitLabels)
  const after = root.hooks === undefined ? outcome : Effect.zipRight(runHooks(root.hooks), outcome)
  return gtid === undefined ? after : Effect.zipRight(engine.observeCommit(pc, gtid), after)
}

/** COMMIT gets what is left of the unit's timeout, else the engine's commitTimeout. */
const commitDeadline = (state: UnitState): number => {
  const timeoutMs =
    state.options.timeout === undefined ? undefined : Duration.toMillis(Duration.decode(state.options.timeout))
  return timeoutMs === undefined || !Number.isFinite(timeoutMs)
    ? state.engine.commitTimeoutMs
    : Math.max(50, state.startedAt + timeoutMs - Date.now())
}

/**
 * COMMIT, and what its outcome means (`Unit.commitResult`): committed; refused (rolled back, a typed failure);
 * no reply (outcome unknown: a keyed unit asks its key). Interrupted while COMMIT is in flight, the connection is
 * destroyed and the outcome is unknown; before it was sent, nothing is committed.
 */
const commitUnit = <A, E>(
  state: UnitState,
  outcome: Effect.Effect<A, E>
): Effect.Effect<A, E | SessionError.SessionError> => {
  const { engine, pc } = state
  let command: Command | undefined
  // what COMMIT's reply means, decided (and the connection given back) as soon as it is read
  let after: Effect.Effect<A, E | SessionError.SessionError> | undefined
  // interrupted while COMMIT was in flight: the connection is destroyed, and its late reply means nothing
  let abandoned = false
  const commit = Effect.async<void>((resume) => {
    const spec = { ...engine.control(state.dialect.commit), deadlineMs: commitDeadline(state) }
    command = engine.startCommand(pc, spec, (e) => {
      if (abandoned) return
      after = settleCommit(
        state,
        e === undefined
          ? DONE
          : e._tag === "ConnectionLost" || pc.broken || engine.options.driver.errors.isCommitAmbiguous(e.cause)
            ? { _tag: "Lost", cause: e }
            : { _tag: "Failed", cause: e },
        outcome
      )
      resume(Effect.void)
    })
  })
  return Effect.matchCauseEffect(Effect.interruptible(commit), {
    onSuccess: () => after!,
    onFailure: (cause) => {
      // an interruption (or a defect of the driver while sending). The reply was read all the same: the unit ended
      // as it says (its hooks run), the fiber's exit is the interruption. Before COMMIT was sent (also when it
      // waited behind a KILL), nothing is committed: the pool rolls the connection back. While it was in flight,
      // stop waiting at once: the outcome is unknown.
      if (after !== undefined) return Effect.zipRight(Effect.exit(after), Effect.failCause(cause))
      if (command === undefined || !command.sent) {
        if (command !== undefined) {
          // held back behind a KILL: it is dropped when the KILL ends, and its late "reply" means nothing
          abandoned = true
          command.cancelled = true
        }
        endWith(state, true)
      } else {
        abandoned = true
        metrics.unknownOutcomes.unsafeUpdate(1, engine.unitLabels)
        engine.destroy(pc, "stateUnknown", "interrupted while COMMIT was in flight")
        state.apply({ _tag: "Ended" })
      }
      return Effect.failCause(cause)
    }
  })
}

const DONE: Unit.CommitOutcome = { _tag: "Done" }

/** What COMMIT's outcome means (`Unit.commitResult`) for the unit and its caller. */
const settleCommit = <A, E>(
  state: UnitState,
  o: Unit.CommitOutcome,
  outcome: Effect.Effect<A, E>
): Effect.Effect<A, E | SessionError.SessionError> => {
  switch (Unit.commitResult(o)) {
    case "committed":
      return endCommitted(state, outcome)
    case "unknown":
      endWith(state, false, "broken")
      metrics.unknownOutcomes.unsafeUpdate(1, state.engine.unitLabels)
      return commitUnknown(state, (o as { cause: SessionError.SessionError }).cause, outcome)
    case "failed":
    case "notSent":
      return commitFailed(state, (o as { cause: SessionError.SessionError }).cause)
  }
}

const commitUnknown = <A, E>(
  state: UnitState,
  e: SessionError.SessionError,
  outcome: Effect.Effect<A, E>
): Effect.Effect<A, E | SessionError.SessionError> =>
  keys.resolveUnknown(
    state,
    e,
    (gtid) => committed(state, gtid, outcome),
    () =>
      new SessionError.CommitOutcomeUnknown({
        cause: e,
        message: `COMMIT got no definite answer (the connection was lost while it was in flight, or a cluster node lost its primary component while replicating it): the transaction may or may not be committed (${e.message}); it is not retried automatically — give the unit a key (Session.transact(unit, { key })) to make it safe to retry and to ask Session.outcome(key)`
      })
  )

const commitFailed = (
  state: UnitState,
  e: SessionError.SessionError
): Effect.Effect<never, SessionError.CommitFailed> => {
  endWith(state, true)
  metrics.rollbacks.unsafeUpdate(1, state.engine.unitLabelsWith("cause", "commitFailed"))
  return Effect.fail(
    new SessionError.CommitFailed({
      cause: e,
      retryable: SessionError.isRetryable(e),
      errno: (e as { errno?: number }).errno,
      code: (e as { code?: string }).code,
      message: `COMMIT failed and the transaction was rolled back: ${e.message}`
    })
  )
}
