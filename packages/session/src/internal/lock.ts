import * as Effect from "effect/Effect"

interface Waiter {
  readonly resume: (effect: Effect.Effect<void>) => void
  granted: boolean
  cancelled: boolean
}

/**
 * A FIFO mutex that is not bound to a fiber: a savepoint can take it in one place and give it back in another.
 * Uncontended, taking it costs no allocation of a fiber or a timer.
 *
 * @internal
 */
export class Lock {
  locked = false
  private waiters: Array<Waiter> = []

  readonly take: Effect.Effect<void> = Effect.suspend(() => {
    if (!this.locked) {
      this.locked = true
      return Effect.void
    }
    return Effect.async<void>((resume) => {
      const w: Waiter = { resume, granted: false, cancelled: false }
      this.waiters.push(w)
      return Effect.sync(() => {
        if (w.granted) {
          // handed over while the fiber was being interrupted: pass it on
          this.unsafeRelease()
        } else {
          w.cancelled = true
          const i = this.waiters.indexOf(w)
          if (i >= 0) this.waiters.splice(i, 1)
        }
      })
    })
  })

  unsafeRelease(): void {
    let w = this.waiters.shift()
    while (w !== undefined && w.cancelled) w = this.waiters.shift()
    if (w === undefined) {
      this.locked = false
      return
    }
    w.granted = true
    w.resume(Effect.void)
  }

  readonly release: Effect.Effect<void> = Effect.sync(() => this.unsafeRelease())

  /** Runs `effect` holding the lock; waiting is interruptible, the lock is always given back. */
  withLock<A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> {
    return Effect.uninterruptibleMask((restore) =>
      Effect.zipRight(restore(this.take), Effect.ensuring(restore(effect), this.release))
    )
  }
}
