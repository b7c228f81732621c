import * as Effect from "effect/Effect"

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
  private waiters: Array<LockWaiter> = []

  /** Takes the lock now (returns `undefined`) or queues `grant` to be called when it is handed over. */
  enqueue(grant: () => void): LockWaiter | undefined {
    if (!this.locked) {
      this.locked = true
      grant()
      return undefined
    }
    const w: LockWaiter = { grant, granted: false, cancelled: false }
    this.waiters.push(w)
    return w
  }

  /** Withdraws a queued waiter; if it had already been handed the lock, passes the lock on. */
  cancel(w: LockWaiter): void {
    if (w.granted) {
      this.unsafeRelease()
      return
    }
    w.cancelled = true
    const i = this.waiters.indexOf(w)
    if (i >= 0) this.waiters.splice(i, 1)
  }

  readonly take: Effect.Effect<void> = Effect.suspend(() => {
    if (!this.locked) {
      this.locked = true
      return Effect.void
    }
    return Effect.async<void>((resume) => {
      const w = this.enqueue(() => resume(Effect.void))
      if (w !== undefined) return Effect.sync(() => this.cancel(w))
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
    w.grant()
  }

  readonly release: Effect.Effect<void> = Effect.sync(() => this.unsafeRelease())

  /**
   * Takes the lock with interruptible waiting. Call it inside `uninterruptibleMask` with its `restore`: if the
   * fiber is interrupted after the lock was handed to it but before it could resume, the lock is passed on.
   */
  acquire(restore: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>): Effect.Effect<void> {
    return Effect.suspend(() => {
      const token = { held: false }
      const take = Effect.suspend(() => {
        if (!this.locked) {
          this.locked = true
          token.held = true
          return Effect.void
        }
        return Effect.async<void>((resume) => {
          const w = this.enqueue(() => {
            token.held = true
            resume(Effect.void)
          })
          if (w !== undefined) {
            return Effect.sync(() => {
              if (!w.granted) this.cancel(w)
            })
          }
        })
      })
      // the caller is uninterruptible here: a plain match is enough to see the interrupted exit
      return Effect.catchAllCause(restore(take), (cause) => {
        if (token.held) {
          token.held = false
          this.unsafeRelease()
        }
        return Effect.failCause(cause)
      })
    })
  }

  /** Runs `effect` holding the lock; waiting is interruptible, the lock is always given back. */
  withLock<A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> {
    return Effect.uninterruptibleMask((restore) =>
      Effect.zipRight(this.acquire(restore), Effect.ensuring(restore(effect), this.release))
    )
  }
}
