/**
 * What a statement of a unit fails with when the unit cannot run it: closed, shared by independent programs,
 * reached from a fiber started without it, or poisoned by an interrupted statement that took effect.
 *
 * @internal
 */
import * as SessionError from "../SessionError.js"

/** @internal */
export const closedError = () =>
  new SessionError.SessionClosed({
    message:
      "this session has already committed or rolled back; a fiber outlived its unit of work (forkDaemon, a stored reference). Run the code in a unit of work of its own"
  })

/** @internal */
export const sharedError = () =>
  new SessionError.SharedSession({
    message:
      "this unit of work belongs to another program: it was opened by Session.layer (SessionLive) in a ManagedRuntime, a memoized layer or the layer(…) of @effect/vitest, and this fiber was not started by the program it was provided to, so independent requests would share one connection and transaction. Build the runtime from the Engine layer only and open a unit per request: runtime.runPromise(Session.transact(handler)), or handler.pipe(Effect.provide(SessionLive)) for each request"
  })

/** @internal */
export const spawnedError = () =>
  new SessionError.SharedSession({
    message:
      "this statement was made by a fiber started from inside a unit of work without it — from a runtime captured outside the unit, as a time-window data loader (Model.makeDataLoaders, RequestResolver.dataLoader) runs its batch — so it would run outside the unit's transaction. Inside units use Model.makeRepository or SqlResolver without a window; give background work a unit of its own (Session.transact) or fork it with Effect.fork"
  })

/** @internal */
export const poisonError = () =>
  new SessionError.StatementInterrupted({
    message:
      "a statement of this unit was interrupted after it had been sent and the server finished it anyway (Effect.race / Effect.timeout around a statement inside a unit): its effect is in the transaction, so the unit was rolled back instead of committed; the unit can be retried"
  })
