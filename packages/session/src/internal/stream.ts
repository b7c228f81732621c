/**
 * `sql…stream`: rows as the server sends them, with backpressure, inside a unit of work (on the frame's connection,
 * inside its transaction) and outside one (on a connection borrowed for the stream's life).
 *
 * The statement runs through the driver's row stream (`RawConnection.stream`: one call per row). Rows are buffered up to `HIGH_WATER_MARK`; past it the connection's socket is paused, so the server blocks on its
 * writes and nothing more is read until the consumer pulls. Every pull hands over all buffered rows as one chunk.
 *
 * Inside a unit the stream holds the frame (its lock) from before the statement is sent until the statement has
 * ended on the server. Whoever has to wait for the frame meanwhile (a statement of the unit — also one run by the
 * stream's own consumer —, a savepoint, the unit's end) makes the stream read the rest of its result into memory
 * (`Reader.spill`), so nothing ever waits for a consumer, and nothing deadlocks; only such interleaving costs memory.
 *
 * A consumer that stops early (`Stream.take`, interruption, a failure downstream) stops the statement on the server
 * (KILL QUERY while the socket is held paused, then `Command.cancel`: resent until it lands, the connection
 * destroyed after `killGrace`); the frame is given back only once the statement has ended, so the next statement of
 * the unit finds an idle connection. A killed SELECT is a statement-level event: the transaction goes on.
 *
 * @internal
 */
import type { SqlError } from "@effect/sql/SqlError"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type * as Fiber from "effect/Fiber"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as SessionError from "../SessionError.js"
import { toSqlError } from "./connection.js"
import { Command, type EngineImpl, interruptedError } from "./engine.js"
import type { RowStream } from "./driver/types.js"
import type { Lock } from "./lock.js"
import type { PooledConn } from "./pool.js"

type Transform = (<A extends object>(rows: ReadonlyArray<A>) => ReadonlyArray<A>) | undefined

/** Rows buffered before the socket is paused (plus at most what one read of the socket carried). */
export const HIGH_WATER_MARK = 2048

/** Bytes read from the socket since the consumer's last pull before it is paused, whatever the number of rows. */
export const HIGH_WATER_BYTES = 4 * 1024 * 1024

/** A streamed statement. @internal */
export interface StreamRequest {
  readonly sql: string
  readonly params: ReadonlyArray<unknown>
  readonly transform: Transform
}

/** Where a stream runs: a unit's frame, or a connection of its own in autocommit. @internal */
export interface Target {
  readonly engine: EngineImpl
  readonly pc: PooledConn
  /** Whether the statement may run now (a closed or aborted session says why not). */
  check(): SessionError.SessionError | undefined
  /** What precedes the statement (settings, START TRANSACTION), then `next`; `track` sees each command. */
  prepareThen(
    next: () => void,
    fail: (e: SessionError.SessionError) => void,
    track: (c: Command | undefined) => void
  ): void
  /** The statement failed on the server: learn what that did to the transaction, then `done`. */
  afterFailure(err: SessionError.SessionError, done: () => void): void
  /** The statement ended normally. */
  afterSuccess(command: Command): void
}

const lostError = (pc: PooledConn) =>
  Object.assign(
    new Error(
      `connection ${pc.threadId} was lost while a stream was being read (the server drops a connection whose client has not read for net_write_timeout: a consumer that holds a stream that long loses it)`
    ),
    { code: "PROTOCOL_CONNECTION_LOST", fatal: true }
  )

/**
 * One streamed statement: its rows, its command, and the state shared by the driver's events and the consumer.
 * Every transition is synchronous (driver callbacks, or the consumer's fiber), so no two run at once.
 */
class Reader {
  /** Rows read and not yet pulled. */
  private rows: Array<unknown> = []
  /** The socket is paused because `rows` reached the high-water mark. */
  private paused = false
  /** The consumer is gone: rows are dropped and the statement is stopped. */
  private stopping = false
  /** Nothing of this stream is in flight any more: the statement ended, failed or never started. */
  private finished = false
  private failure: SessionError.SessionError | undefined = undefined
  /** The command a stop must cancel: the settings SET or START TRANSACTION, then the statement itself. */
  private inFlight: Command | undefined = undefined
  /** A pull waiting for rows or the end. */
  private notify: (() => void) | undefined = undefined
  private idleWaiters: Array<() => void> = []
  private detach: (() => void) | undefined = undefined
  /** The statement's rows in flight, once sent. */
  private running: RowStream | undefined = undefined
  /** The socket's `bytesRead` when the consumer last took the buffered rows. */
  private mark = 0
  private highWaterBytes = HIGH_WATER_BYTES
  /** Called once, when nothing of this stream is in flight any more (the connection is free for others). */
  onFinished: (() => void) | undefined = undefined

  constructor(
    readonly target: Target,
    readonly sql: string,
    readonly transform: Transform,
    private highWaterMark: number
  ) {}

  /**
   * Someone else needs the connection (a statement of the same frame, a savepoint, the unit's end): read the rest
   * of the result into memory, without backpressure, so the statement ends and the connection is free, instead of
   * waiting for the consumer — who may be the very fiber that is waiting (a statement inside `Stream.mapEffect`).
   */
  spill(): void {
    if (this.finished || this.stopping) return
    this.highWaterMark = Infinity
    this.highWaterBytes = Infinity
    this.unpause()
  }

  /**
   * Checks the target, binds the values (refused before anything is sent), runs what must precede the statement,
   * and sends the statement. Completes once it is sent; its rows arrive through `pull`. Interrupted, it stops
   * whatever it had sent.
   */
  open(params: ReadonlyArray<unknown>): Effect.Effect<void, SqlError> {
    return Effect.async<void, SqlError>((resume) => {
      const fail = (e: SessionError.SessionError) => {
        this.end(e)
        resume(Effect.fail(toSqlError(e)))
      }
      const bad = this.target.check()
      if (bad !== undefined) return fail(bad)
      const bound = this.target.engine.options.driver.bind(params)
      if (bound instanceof SessionError.BindError) return fail(bound)
      if (bound instanceof Error) return fail(new SessionError.BindError({ index: 0, message: bound.message }))
      this.target.prepareThen(
        () => {
          if (this.stopping) return this.end(undefined)
          this.start(bound)
          resume(Effect.void)
        },
        fail,
        (c) => {
          this.inFlight = c
        }
      )
      return this.stop()
    })
  }

  private start(values: ReadonlyArray<unknown>): void {
    const { engine, pc } = this.target
    const command = new Command(engine.ownerOf(pc), pc, (err) => this.settled(command, err), false)
    this.inFlight = command
    if (pc.closed || pc.broken) return command.callback(lostError(pc), undefined)
    // the connection's own server (a replica or node of a topology) knows whether it flags state changes
    if (engine.ownerOf(pc).options.driver.marksDirty(this.sql)) pc.dirty = true
    if (pc.kills > 0) {
      // a KILL for an earlier statement is still in flight: send this one once it has been answered
      ;(pc.afterKills ??= []).push(() => {
        if (!command.settled && !command.cancelled) this.send(command, values)
        else if (!command.settled) command.callback(interruptedError(), undefined)
      })
      return
    }
    this.send(command, values)
  }

  private send(command: Command, values: ReadonlyArray<unknown>): void {
    const pc = this.target.pc
    if (pc.closed || pc.broken) return command.callback(lostError(pc), undefined)
    const conn = pc.conn
    // a destroyed connection settles the command through `pending` (see `ConnPool.destroy`)
    pc.pending = command.callback
    command.sent = true
    this.mark = this.bytesRead()
    // a row stream learns of a lost connection from the connection, not from the command
    this.detach = conn.onGone((e) => command.callback(e instanceof Error ? e : lostError(pc), undefined))
    this.running = conn.stream(this.sql, values, { row: (row) => this.row(row), end: command.callback })
  }

  private row(row: unknown): void {
    if (this.stopping) return
    this.rows.push(row)
    if (
      !this.paused &&
      (this.rows.length >= this.highWaterMark || this.bytesRead() - this.mark >= this.highWaterBytes)
    ) {
      this.paused = true
      this.target.pc.conn.pause()
    }
    const notify = this.notify
    if (notify !== undefined) {
      this.notify = undefined
      notify()
    }
  }

  /** The statement's command settled (`Command` settles exactly once). */
  private settled(command: Command, err: SessionError.SessionError | undefined): void {
    if (this.detach !== undefined) {
      this.detach()
      this.detach = undefined
    }
    if (this.inFlight === command) this.inFlight = undefined
    this.running = undefined
    this.unpause()
    if (err === undefined) {
      this.target.afterSuccess(command)
      return this.end(undefined)
    }
    // stopped by its consumer, the KILL's error is the expected end (no failure for a consumer that is gone); but
    // whatever ended it, the unit learns what the failure did to its transaction (a deadlock, a lost connection)
    if (!command.sent) return this.end(this.stopping ? undefined : err)
    this.target.afterFailure(err, () => this.end(this.stopping ? undefined : err))
  }

  private end(err: SessionError.SessionError | undefined): void {
    if (this.finished) return
    this.finished = true
    this.inFlight = undefined
    this.failure = err
    const finished = this.onFinished
    this.onFinished = undefined
    if (finished !== undefined) finished()
    const notify = this.notify
    this.notify = undefined
    if (notify !== undefined) notify()
    const waiters = this.idleWaiters
    this.idleWaiters = []
    for (const w of waiters) w()
  }

  /** The buffered rows as one chunk, the end, the failure, or (nothing yet) the next pull. */
  private take(): Effect.Effect<Chunk.Chunk<unknown>, Option.Option<SqlError>> {
    return Effect.suspend(() => {
      if (this.rows.length > 0) {
        const out = this.rows
        this.rows = []
        this.mark = this.bytesRead()
        // rows queued in the driver while paused are parsed now, into the next chunk
        this.unpause()
        return Effect.succeed(
          Chunk.unsafeFromArray<unknown>(
            // the driver's rows are objects
            this.transform !== undefined ? this.transform(out as Array<object>) : out
          )
        )
      }
      if (this.finished) {
        return this.failure === undefined
          ? Effect.fail(Option.none())
          : Effect.fail(Option.some(toSqlError(this.failure)))
      }
      return this.pull()
    })
  }

  /**
   * Waits for rows. The fiber resumes after the driver has parsed the whole socket read that carried the first
   * row, so a chunk holds every row of that read.
   */
  pull(): Effect.Effect<Chunk.Chunk<unknown>, Option.Option<SqlError>> {
    return Effect.async<Chunk.Chunk<unknown>, Option.Option<SqlError>>((resume) => {
      if (this.rows.length > 0 || this.finished) return resume(this.take())
      this.notify = () => resume(this.take())
      return Effect.sync(() => {
        this.notify = undefined
      })
    })
  }

  stream(): Stream.Stream<unknown, SqlError> {
    return Stream.repeatEffectChunkOption(Effect.suspend(() => this.pull()))
  }

  /** Completes when nothing of this stream is in flight. */
  private idle(): Effect.Effect<void> {
    return Effect.async<void>((resume) => {
      if (this.finished) return resume(Effect.void)
      this.idleWaiters.push(() => resume(Effect.void))
    })
  }

  /**
   * The consumer is done: drop what is buffered, stop the statement on the server if it is still running
   * (`Command.cancel`), and complete once nothing of this stream is in flight (a probe after a failure included).
   *
   * A statement that is sending rows is first held where it is: the socket stays paused (the server blocks on its
   * writes) until the server has answered the KILL, so what is left to read is what the buffers already hold, not
   * what the server could produce while the KILL travels; those rows are then skipped without being parsed.
   */
  stop(): Effect.Effect<void> {
    return Effect.suspend(() => {
      this.stopping = true
      this.notify = undefined
      this.rows = []
      if (this.finished) return Effect.void
      const c = this.inFlight
      if (c === undefined || c.settled) return this.idle()
      const { engine, pc } = this.target
      if (this.running === undefined || pc.closed || pc.broken) {
        this.unpause()
        return Effect.zipRight(c.cancel(), this.idle())
      }
      this.skipRows()
      if (!this.paused) {
        this.paused = true
        pc.conn.pause()
      }
      const held = Effect.async<void>((resume) => {
        engine.killQuery(pc, () => {
          // whatever the KILL's fate, the command must be read to its end (or `cancel` destroys the connection)
          this.unpause()
          resume(Effect.void)
        })
      })
      return Effect.zipRight(held, Effect.zipRight(c.cancel(), this.idle()))
    })
  }

  /** Bytes read from the connection's socket so far (0 where the socket does not say: rows alone then count). */
  private bytesRead(): number {
    return this.target.pc.conn.bytesRead()
  }

  private unpause(): void {
    if (!this.paused) return
    this.paused = false
    const pc = this.target.pc
    if (!pc.closed && !pc.broken) pc.conn.resume()
  }

  /** Rows nobody will read are skipped without being parsed (the end of the result still arrives). */
  private skipRows(): void {
    this.running?.skipRest()
  }
}

/** The frame a stream runs in: its lock, and a statement its fiber left running (see `Frame.exec`). @internal */
export interface StreamFrame {
  readonly lock: Lock
  readonly runningFiber: Fiber.RuntimeFiber<unknown, unknown> | undefined
  reclaim(): Effect.Effect<void>
  check(): SessionError.SessionError | undefined
}

/** The target of a stream outside any unit: autocommit with the engine's default settings. */
const directTarget = (engine: EngineImpl, pc: PooledConn): Target => ({
  engine,
  pc,
  check: () => undefined,
  prepareThen: (next, fail, track) => {
    const set = engine.applySettings(pc, engine.defaultWant, next, fail)
    if (set !== undefined) track(set)
  },
  afterFailure: (_err, done) => done(),
  afterSuccess: () => undefined
})

/**
 * A stream inside a unit: it holds the frame's lock from before the statement is sent until the statement has ended
 * on the server (see `Reader.spill` for those who wait), runs inside the unit's transaction, and fails with
 * `SessionClosed` once the unit has ended.
 *
 * @internal
 */
export const frameStream = (
  frame: StreamFrame,
  target: Target,
  { params, sql, transform }: StreamRequest
): Stream.Stream<unknown, SqlError> =>
  Stream.unwrapScoped(
    Effect.uninterruptibleMask((restore) =>
      Effect.withFiberRuntime<Stream.Stream<unknown, SqlError>, SqlError, Scope.Scope>((fiber) => {
        const early = frame.check()
        if (early !== undefined) return Effect.fail(toSqlError(early))
        // a statement this fiber left running when it was interrupted (see `Frame.exec`): stop it first
        const take =
          frame.runningFiber === fiber
            ? Effect.zipRight(frame.reclaim(), frame.lock.acquire(restore))
            : frame.lock.acquire(restore)
        return Effect.flatMap(take, () => {
          const reader = new Reader(target, sql, transform, HIGH_WATER_MARK)
          const lock = frame.lock
          let held = true
          // the frame is free as soon as the statement has ended: the consumer may still be reading buffered rows
          const release = () => {
            if (!held) return
            held = false
            lock.onWait = undefined
            lock.unsafeRelease()
          }
          reader.onFinished = release
          // never make others wait for the consumer (see `Reader.spill`); outside the waiter's own call stack
          lock.onWait = () => queueMicrotask(() => reader.spill())
          if (lock.contended) reader.spill()
          return Effect.zipRight(
            Effect.addFinalizer(() => Effect.ensuring(reader.stop(), Effect.sync(release))),
            Effect.as(restore(reader.open(params)), reader.stream())
          )
        })
      })
    )
  )

/**
 * A stream outside any unit, on `pc` (borrowed by the caller for the stream's life, e.g. `borrowScoped`, whose
 * release runs after this stream's own finalizer).
 *
 * @internal
 */
export const directStream = (
  engine: EngineImpl,
  pc: PooledConn,
  { params, sql, transform }: StreamRequest
): Stream.Stream<unknown, SqlError> =>
  Stream.unwrapScoped(
    Effect.uninterruptibleMask((restore) => {
      const reader = new Reader(directTarget(engine, pc), sql, transform, HIGH_WATER_MARK)
      return Effect.zipRight(
        Effect.addFinalizer(() => reader.stop()),
        Effect.as(restore(reader.open(params)), reader.stream())
      )
    })
  )
