/**
 * Savepoints: a nested unit is a frame one level down — SAVEPOINT when it opens, RELEASE or ROLLBACK TO when it
 * ends (`Unit.decideSavepoint`).
 *
 * @internal
 */
import { SqlError } from "@effect/sql/SqlError"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import * as SessionError from "../SessionError.js"
import { Frame } from "./frame.js"
import type { Restore } from "./lock.js"
import * as Unit from "./unit.js"
import { type Nested, nestedWant } from "./unitOptions.js"

/** @internal */
export interface OpenSavepoint {
  readonly parent: Frame
  readonly child: Frame
  readonly name: string
  /** `SessionState.epoch` when it was made: a savepoint does not outlive an implicit commit. */
  readonly epoch: number
}

/** Takes the parent frame (siblings wait), then SAVEPOINT. Call inside `uninterruptibleMask`. @internal */
export const openSavepoint = (
  parent: Frame,
  restore: Restore,
  fiber: Fiber.RuntimeFiber<unknown, unknown>,
  nested: Nested
): Effect.Effect<OpenSavepoint, SessionError.SessionError> =>
  Effect.zipRight(
    // a statement this fiber left running when it was interrupted (see `Frame.exec`): stop it first
    parent.runningFiber === fiber
      ? Effect.zipRight(parent.reclaim(), parent.lock.acquire(restore))
      : parent.lock.acquire(restore),
    Effect.suspend(() => {
      const state = parent.state
      const bad = parent.check()
      if (bad !== undefined) {
        parent.lock.unsafeRelease()
        return Effect.fail(bad)
      }
      const name = `sfx_sp_${++state.seq}`
      const child = new Frame(state.engine, state, parent, nestedWant(state.engine, parent.want, nested.checked))
      child.rollbackOnly = nested.options.rollbackOnly === true
      return parent.control(state.dialect.savepoint(name), true).pipe(
        Effect.tapError(() => Effect.sync(() => parent.lock.unsafeRelease())),
        Effect.map(() => ({ parent, child, name, epoch: state.phase.epoch }))
      )
    })
  )

/**
 * RELEASE on success, ROLLBACK TO on failure (or `rollbackOnly`, or a poisoned frame), then lets siblings in. Hooks
 * of a released savepoint go to its parent; those of a rolled-back one are dropped. A savepoint that an implicit
 * commit (DDL) ended no longer exists: on success there is nothing to release; on failure what it did since is the
 * whole open transaction, which is rolled back.
 *
 * @internal
 */
export const closeSavepoint = (
  sp: OpenSavepoint,
  exit: Exit.Exit<unknown, unknown>
): Effect.Effect<void, SessionError.SessionError> =>
  Effect.uninterruptible(
    Effect.zipRight(
      // a statement the fiber left running in the savepoint when it was interrupted: stop it first
      sp.child.running !== undefined ? Effect.zipRight(sp.child.reclaim(), sp.child.lock.take) : sp.child.lock.take,
      Effect.suspend(() => {
        const child = sp.child
        child.closed = true
        const state = sp.parent.state
        const undo = Exit.isFailure(exit) || child.rollbackOnly || child.poisoned !== undefined
        if (!undo && child.hooks !== undefined) (sp.parent.hooks ??= []).push(...child.hooks)
        let end: Effect.Effect<void, SessionError.SessionError>
        switch (Unit.decideSavepoint(state.phase, { undo, epochAtStart: sp.epoch })) {
          case "aborted":
            end = Exit.isSuccess(exit) ? Effect.fail(state.abortError!) : Effect.void
            break
          case "nothing":
            end = Effect.void
            break
          case "rollbackAll":
            end = Effect.tap(sp.parent.control(state.dialect.rollback, false), () =>
              state.apply({ _tag: "RolledBack" })
            )
            break
          case "rollbackTo":
            end = sp.parent.control(state.dialect.rollbackToSavepoint(sp.name), false)
            break
          case "release":
            end = sp.parent.control(state.dialect.releaseSavepoint(sp.name), false)
        }
        if (child.poisoned !== undefined && Exit.isSuccess(exit))
          end = Effect.zipRight(end, Effect.fail(child.poisoned))
        return Effect.ensuring(
          end,
          Effect.sync(() => {
            child.lock.unsafeRelease()
            sp.parent.lock.unsafeRelease()
          })
        )
      })
    )
  )

/** Unwraps a `SqlError` that carries a classified `SessionError`, so `catchTag("Deadlock")` works outside. @internal */
export const unwrapError = <E>(e: E): E | SessionError.SessionError => {
  if (!(e instanceof SqlError)) return e
  // through the wrappers a query builder adds (`@effect/sql-drizzle`: SqlError → DrizzleQueryError → SqlError), so
  // that a violation is the same typed error whichever client sent the statement
  let cause: unknown = e.cause
  for (let depth = 0; depth < 8 && cause instanceof Error; depth++) {
    if (SessionError.isSessionError(cause) && !(cause instanceof SqlError)) return cause as SessionError.SessionError
    cause = (cause as { readonly cause?: unknown }).cause
  }
  return e
}

/** @internal */
export const withTimeout = <A, E, R>(
  body: Effect.Effect<A, E, R>,
  timeoutMs: number | undefined
): Effect.Effect<A, E | SessionError.TransactionTimeout, R> =>
  timeoutMs === undefined
    ? body
    : Effect.timeoutFail(body, {
        duration: timeoutMs,
        onTimeout: () =>
          new SessionError.TransactionTimeout({
            message: `the unit of work ran longer than ${Duration.format(Duration.millis(timeoutMs))} and was rolled back`
          })
      })

/** Runs `effect` in a savepoint of `parent` (a nested unit with its options). @internal */
export const savepoint = <A, E, R>(
  parent: Frame,
  effect: Effect.Effect<A, E, R>,
  fiber: Fiber.RuntimeFiber<unknown, unknown>,
  nested: Nested
): Effect.Effect<A, E | SessionError.SessionError, R> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(openSavepoint(parent, restore, fiber, nested), (sp) => {
      const { checked, options } = nested
      const inner = options.key === undefined ? effect : Effect.zipRight(parent.state.recordKey(options.key), effect)
      const body: Effect.Effect<A, E | SessionError.SessionError, R> = Effect.locally(
        parent.state.provide(inner, sp.child),
        parent.engine.currentRef,
        parent.engine.held(fiber, sp.child)
      )
      return Effect.flatMap(Effect.exit(restore(withTimeout(body, checked.timeoutMs))), (exit) =>
        Effect.zipRight(closeSavepoint(sp, exit), exit)
      )
    })
  )
