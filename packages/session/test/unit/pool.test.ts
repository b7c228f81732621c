/**
 * The frame lock and the connection pool, on the fake driver: FIFO hand-off, withdrawal on interruption, deadlines,
 * the queue limit, validation, reset on a dirty return and eviction of dead connections. No server.
 */
import { afterEach, assert, beforeEach, describe, it, vi } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import { Lock } from "../../src/internal/lock.js"
import { ConnPool, type Lease, type PoolConfig, type PooledConn } from "../../src/internal/pool.js"
import { FakeServer } from "./fake.js"

describe("lock", () => {
  it("hands over in FIFO order, and is free when the last holder lets go", () => {
    const lock = new Lock()
    const order: Array<number> = []
    lock.enqueue(() => order.push(0))
    for (let i = 1; i <= 3; i++) lock.enqueue(() => order.push(i))
    assert.deepStrictEqual(order, [0])
    assert.isTrue(lock.contended)
    lock.unsafeRelease()
    lock.unsafeRelease()
    lock.unsafeRelease()
    assert.deepStrictEqual(order, [0, 1, 2, 3])
    lock.unsafeRelease()
    assert.isFalse(lock.locked)
  })

  it("a cancelled waiter is skipped", () => {
    const lock = new Lock()
    const order: Array<number> = []
    lock.enqueue(() => order.push(0))
    const w = lock.enqueue(() => order.push(1))!
    lock.enqueue(() => order.push(2))
    lock.cancel(w)
    lock.unsafeRelease()
    assert.deepStrictEqual(order, [0, 2])
  })

  it.effect("a fiber interrupted while it waits leaves the queue; the next waiter gets the lock", () =>
    Effect.gen(function* () {
      const lock = new Lock()
      lock.locked = true
      const waiting = yield* Effect.fork(Effect.uninterruptibleMask((restore) => lock.acquire(restore)))
      const next = yield* Effect.fork(lock.take)
      yield* Effect.yieldNow()
      yield* Fiber.interrupt(waiting)
      lock.unsafeRelease()
      yield* Fiber.join(next)
      assert.isTrue(lock.locked)
      assert.isFalse(lock.contended)
    })
  )

  it("onWait tells the holder that someone waits", () => {
    const lock = new Lock()
    let told = 0
    lock.onWait = () => told++
    lock.enqueue(() => undefined)
    assert.strictEqual(told, 0)
    lock.enqueue(() => undefined)
    assert.strictEqual(told, 1)
  })
})

const config = (server: FakeServer, more: Partial<PoolConfig> = {}): PoolConfig => ({
  size: 2,
  minIdle: 0,
  acquireTimeoutMs: 1_000,
  idleTimeoutMs: 0,
  maxLifetimeMs: 0,
  lifetimeJitter: 0,
  validateAfterIdleMs: -1,
  queueLimit: 0,
  connect: server.connect,
  describe: "the fake server",
  onCreated: () => undefined,
  onDestroyed: () => undefined,
  onTimeout: () => undefined,
  onWait: () => undefined,
  prepare: (_pc, cb) => cb(null),
  onDirtyReturn: () => undefined,
  controlTimeoutMs: 5_000,
  ...more
})

const lease = (): Lease => ({ pc: undefined, waiter: undefined })

describe("pool", () => {
  let pool: ConnPool | undefined
  afterEach(() => {
    pool?.closeAll()
    pool = undefined
    vi.useRealTimers()
  })

  it.effect("waiters are served first come, first served", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      const p = (pool = new ConnPool(config(server, { size: 1 })))
      const first = yield* p.acquire(lease())
      const order: Array<number> = []
      const waiters = yield* Effect.forEach([1, 2, 3], (i) =>
        Effect.fork(Effect.tap(p.acquire(lease()), (pc) => Effect.sync(() => (order.push(i), p.release(pc, false)))))
      )
      yield* Effect.yieldNow()
      assert.strictEqual(p.stats().waiting, 3)
      p.release(first, false)
      yield* Fiber.joinAll(waiters)
      assert.deepStrictEqual(order, [1, 2, 3])
      assert.strictEqual(server.conns.length, 1)
    })
  )

  it.effect("a withdrawn wait leaves the queue and is never handed a connection", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      const p = (pool = new ConnPool(config(server, { size: 1 })))
      const first = yield* p.acquire(lease())
      const l = lease()
      const waiting = yield* Effect.fork(p.acquire(l))
      yield* Effect.yieldNow()
      yield* Fiber.interrupt(waiting)
      p.withdraw(l)
      assert.strictEqual(p.stats().waiting, 0)
      p.release(first, false)
      assert.isUndefined(l.pc)
      assert.strictEqual(p.stats().idle, 1)
    })
  )

  describe("deadlines", () => {
    beforeEach(() => {
      vi.useFakeTimers()
    })
    it.effect("a waiter past acquireTimeout fails with PoolTimeout that says what to do", () =>
      Effect.gen(function* () {
        const server = new FakeServer()
        const p = (pool = new ConnPool(config(server, { size: 1, acquireTimeoutMs: 500 })))
        yield* p.acquire(lease())
        const waiting = yield* Effect.fork(p.acquire(lease()))
        yield* Effect.yieldNow()
        vi.advanceTimersByTime(499)
        yield* Effect.yieldNow()
        assert.isNull(waiting.unsafePoll())
        vi.advanceTimersByTime(2)
        const exit = yield* Fiber.await(waiting)
        assert.isTrue(Exit.isFailure(exit))
        const error = Exit.isFailure(exit)
          ? (exit.cause as { error?: { _tag: string; message: string } }).error
          : undefined
        assert.strictEqual(error?._tag, "PoolTimeout")
        assert.include(error?.message, "raise pool.size")
        assert.strictEqual(p.stats().acquireTimeouts, 1)
      })
    )

    it.effect(
      "a new connection whose set-up never answers (a server restarting) is dropped after controlTimeout and another is opened for the waiter",
      () =>
        Effect.gen(function* () {
          const server = new FakeServer()
          let setups = 0
          const p = (pool = new ConnPool(
            config(server, {
              size: 2,
              acquireTimeoutMs: 60_000,
              controlTimeoutMs: 5_000,
              // the first set-up hangs; every later one answers
              prepare: (_pc, cb) => (setups++ === 0 ? undefined : cb(null))
            })
          ))
          const waiting = yield* Effect.fork(p.acquire(lease()))
          yield* Effect.yieldNow()
          yield* Effect.promise(() => Promise.resolve())
          assert.deepStrictEqual([p.stats().pending, p.stats().waiting], [1, 1], "one creation pending for the waiter")
          vi.advanceTimersByTime(5_001)
          yield* Effect.promise(() => Promise.resolve())
          const pc = yield* Fiber.join(waiting)
          assert.strictEqual(setups, 2)
          assert.isTrue(server.conns[0]!.destroyed, "the connection whose set-up hung is closed")
          assert.strictEqual(pc.conn, server.conns[1])
          assert.strictEqual(p.stats().pending, 0)
        })
    )
  })

  it.effect("the queue limit sheds at once", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      const p = (pool = new ConnPool(config(server, { size: 1, queueLimit: 1 })))
      yield* p.acquire(lease())
      yield* Effect.fork(p.acquire(lease()))
      yield* Effect.yieldNow()
      const exit = yield* Effect.exit(p.acquire(lease()))
      assert.isTrue(Exit.isFailure(exit))
      assert.include(JSON.stringify(exit), "queueLimit")
    })
  )

  it.effect("a connection returned with a transaction open or its session changed is reset before reuse", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      const dirty: Array<string> = []
      const p = (pool = new ConnPool(config(server, { size: 1, onDirtyReturn: (r) => dirty.push(r) })))
      const pc: PooledConn = yield* p.acquire(lease())
      pc.inTrans = true
      p.release(pc, false)
      const again = yield* p.acquire(lease())
      pc.dirty = true
      p.release(again, false)
      yield* p.acquire(lease())
      assert.deepStrictEqual(dirty, ["transaction", "state"])
      assert.strictEqual(server.sent.filter((s) => s.sql === "(reset)").length, 2)
      assert.isFalse(pc.inTrans)
    })
  )

  it.effect("a connection the server closed while idle is never lent: the next borrower gets a new one", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      const p = (pool = new ConnPool(config(server, { size: 1 })))
      const pc = yield* p.acquire(lease())
      p.release(pc, false)
      pc.broken = true
      const next = yield* p.acquire(lease())
      assert.notStrictEqual(next, pc)
      assert.strictEqual(server.conns.length, 2)
      assert.isTrue(server.conns[0]!.destroyed)
    })
  )

  it.effect("validation after idle: a connection that does not answer its ping is replaced", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      const p = (pool = new ConnPool(config(server, { size: 1, validateAfterIdleMs: 0 })))
      const pc = yield* p.acquire(lease())
      p.release(pc, false)
      server.conns[0]!.destroyed = true
      pc.lastUsedAt -= 10
      const next = yield* p.acquire(lease())
      assert.notStrictEqual(next, pc)
      assert.strictEqual(p.stats().destroyed, 1)
    })
  )

  it.effect("a pool that cannot connect fails its waiters with the reason", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      server.refuseConnections = Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" })
      const p = (pool = new ConnPool(config(server)))
      const exit = yield* Effect.exit(p.acquire(lease()))
      assert.isTrue(Exit.isFailure(exit))
      assert.include(JSON.stringify(exit), "ECONNREFUSED")
    })
  )

  it.effect("drain is not held by a connection being opened that then fails (a black-holed link at shutdown)", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      let opening: ((err: unknown) => void) | undefined
      const p = (pool = new ConnPool(config(server, { minIdle: 1, connect: (cb) => (opening = cb) })))
      p.fill()
      assert.strictEqual(p.stats().pending, 1)
      const drained = yield* Effect.fork(p.drain(5_000))
      yield* Effect.yieldNow()
      assert.isNull(drained.unsafePoll(), "drain waits for the connection being opened")
      opening!(Object.assign(new Error("read ECONNRESET"), { code: "ECONNRESET" }))
      const t0 = Date.now()
      assert.isTrue(yield* Fiber.join(drained))
      assert.isBelow(Date.now() - t0, 1_000, "drained at once, not after its timeout")
      assert.strictEqual(p.stats().pending, 0)
    })
  )

  it.effect("drain waits for lent connections, then everything is closed", () =>
    Effect.gen(function* () {
      const server = new FakeServer()
      const p = (pool = new ConnPool(config(server)))
      const pc = yield* p.acquire(lease())
      const drained = yield* Effect.fork(p.drain(5_000))
      yield* Effect.yieldNow()
      assert.isNull(drained.unsafePoll())
      p.release(pc, false)
      assert.isTrue(yield* Fiber.join(drained))
      assert.isTrue(server.conns[0]!.destroyed)
    })
  )
})
