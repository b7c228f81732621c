/**
 * The borrowers waiting for a connection of a pool: a doubly linked FIFO queue (a waiter leaves it in O(1) when it
 * is served, times out or is interrupted).
 *
 * @internal
 */
import type * as Effect from "effect/Effect"
import type * as SessionError from "../SessionError.js"

/**
 * Where the pool puts the connection it hands over. A fiber can be interrupted after the hand-off but before it
 * resumes (and could register a finalizer): the caller's exit handler finds `pc` still set and gives it back
 * (`EngineImpl.borrow`).
 *
 * @internal
 */
export interface Lease<C> {
  pc: C | undefined
  /** The queue entry while it waits (see `ConnPool.withdraw`). */
  waiter: Waiter<C> | undefined
}

/** @internal */
export interface Waiter<C> {
  readonly resume: (effect: Effect.Effect<C, SessionError.PoolTimeout | SessionError.ConnectionError>) => void
  readonly since: number
  prev: Waiter<C> | undefined
  next: Waiter<C> | undefined
  queued: boolean
  cancelled: boolean
  done: boolean
  readonly lease: Lease<C>
}

/** @internal */
export class WaitQueue<C> {
  head: Waiter<C> | undefined = undefined
  tail: Waiter<C> | undefined = undefined
  size = 0

  unlink(w: Waiter<C>): void {
    if (!w.queued) return
    w.queued = false
    if (w.prev) w.prev.next = w.next
    else this.head = w.next
    if (w.next) w.next.prev = w.prev
    else this.tail = w.prev
    w.prev = w.next = undefined
    this.size--
  }

  pushFront(w: Waiter<C>): void {
    w.queued = true
    w.next = this.head
    w.prev = undefined
    if (this.head) this.head.prev = w
    else this.tail = w
    this.head = w
    this.size++
  }

  pushBack(w: Waiter<C>): void {
    w.queued = true
    w.prev = this.tail
    w.next = undefined
    if (this.tail) this.tail.next = w
    else this.head = w
    this.tail = w
    this.size++
  }
}
