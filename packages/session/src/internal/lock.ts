import * as Effect from "effect/Effect"

/** The `restore` of `Effect.uninterruptibleMask`. @internal */
export type Restore = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>

/** @internal */
export interface LockWaiter {
  readonly grant: () => void
  granted: boolean
  cancelled: boolean
}

/**
 * A FIFO mutex that is not bound to a fiber: a savepoint can take it in one place and give it back in another, and
 * a statement can give it back from the driver's callback. Uncontended, taking it allocates nothing.
 *
 * @internal
 */
export class Lock {
  locked = false
  private waiters: Array<LockWaiter> | undefined = undefined
  /**
   * Called (synchronously, after the waiter is queued) whenever someone has to wait: the holder may then be able to
   * let go sooner (a stream reads the rest of its result, see `stream.ts`).
   */
  onWait: (() => void) | undefined = undefined

  /** Takes the lock now (returns `undefined`) or queues `grant` to be called when it is handed over. */
  enqueue(grant: () => void): LockWaiter | undefined {
    if (!this.locked) {
      this.locked = true
      grant()
      return undefined
    }
    const w: LockWaiter = { grant, granted: false, cancelled: false }
    ;(this.waiters ??= []).push(w)
    if (this.onWait !== undefined) this.onWait()
    return w
  }

  /** Someone is waiting for the lock. */
  get contended(): boolean {
    return this.waiters !== undefined && this.waiters.some((w) => !w.cancelled)
  }

  /** Withdraws a waiter that has not been handed the lock. */
  cancel(w: LockWaiter): void {
    w.cancelled = true
    const i = this.waiters?.indexOf(w) ?? -1
    if (i >= 0) this.waiters!.splice(i, 1)
  }

  unsafeRelease(): void {
    let w = this.waiters?.shift()
    while (w !== undefined && w.cancelled) w = this.waiters!.shift()
    if (w === undefined) {
      this.locked = false
      return
    }
    w.granted = true
    w.grant()
  }

  /** Takes the lock, marking `token.held` the moment it is handed over; a withdrawn wait leaves the queue. */
  private takeInto(token: { held: boolean }): Effect.Effect<void> {
    return Effect.suspend(() => {
      if (!this.locked) {
        this.locked = true
        token.held = true
        return Effect.void
      }
      return Effect.async<void>((resume) => {
        const w = this.enqueue(() => {
          token.held = true
          resume(Effect.void)
        })!
        return Effect.sync(() => {
          if (!w.granted) this.cancel(w)
        })
      })
    })
  }

  /** Takes the lock, for callers that are uninterruptible. */
  readonly take: Effect.Effect<void> = this.takeInto({ held: false })

  /**
   * Takes the lock with interruptible waiting. Call it inside `uninterruptibleMask` with its `restore`: if the
   * fiber is interrupted after the lock was handed to it but before it could resume, the lock is passed on.
   */
  acquire(restore: Restore): Effect.Effect<void> {
    return Effect.suspend(() => {
      const token = { held: false }
      // the caller is uninterruptible here: a plain match is enough to see the interrupted exit
      return Effect.catchAllCause(restore(this.takeInto(token)), (cause) => {
        if (token.held) {
          token.held = false
          this.unsafeRelease()
        }
        return Effect.failCause(cause)
      })
    })
  }
}
