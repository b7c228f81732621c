import type * as Reactivity from "@effect/experimental/Reactivity"
import type { Connection } from "@effect/sql/SqlConnection"
import { SqlError } from "@effect/sql/SqlError"
import * as Statement from "@effect/sql/Statement"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import type * as Metric from "effect/Metric"
import * as MetricLabel from "effect/MetricLabel"
import * as Stream from "effect/Stream"
import type * as Mysql from "mysql2"
import * as SessionError from "../SessionError.js"
import * as metrics from "./metrics.js"
import type { Restore } from "./lock.js"
import { ConnPool, type DestroyReason, hardClose, type Lease, type PooledConn, type PreparedStatement } from "./pool.js"

/** @internal */
export type Isolation = "READ UNCOMMITTED" | "READ COMMITTED" | "REPEATABLE READ" | "SERIALIZABLE"

/** @internal */
export interface SessionDefaults {
  readonly isolation: Isolation | undefined
  readonly lockWaitTimeoutSeconds: number | undefined
  readonly statementTimeoutMs: number | undefined
}

type Transform = (<A extends object>(row: ReadonlyArray<A>) => ReadonlyArray<A>) | undefined

/** Statements that can change the state a connection carries beyond its transaction. */
const STATEFUL =
  /@|\bget_lock\b|^\s*(?:set|use|lock|unlock|prepare|execute|deallocate|call|handler|declare|create\s+(?:or\s+replace\s+)?temporary)\b/i

const statefulCache = new Map<string, boolean>()

/** Whether a statement may change session state; cached per SQL text (compiled texts are shared strings). */
const isStateful = (sql: string): boolean => {
  let v = statefulCache.get(sql)
  if (v === undefined) {
    v = STATEFUL.test(sql)
    if (statefulCache.size > 10_000) statefulCache.clear()
    statefulCache.set(sql, v)
  }
  return v
}

let engineSeq = 0

/** @internal */
export interface EngineImplOptions {
  readonly name: string
  readonly connection: Mysql.ConnectionOptions
  readonly describe: string
  readonly pool: {
    readonly size: number
    readonly minIdle: number
    readonly acquireTimeoutMs: number
    readonly idleTimeoutMs: number
    readonly maxLifetimeMs: number
    readonly validateAfterIdleMs: number
    readonly queueLimit: number
  }
  readonly killGraceMs: number
  readonly defaults: SessionDefaults
  readonly spanAttributes: ReadonlyArray<readonly [string, unknown]>
  readonly compiler: Statement.Compiler
  readonly transformRows: Transform
}

/** @internal */
export class EngineImpl {
  readonly id = ++engineSeq
  /** Where a fiber finds its current session (frame) of this engine: one key per engine, so engines never mix. */
  readonly currentTag: Context.Tag<BaseConnection, BaseConnection>
  readonly pool: ConnPool
  flavor: "mariadb" | "mysql" = "mysql"
  version = ""
  /** Stable label arrays: Effect caches a metric's hook by the identity of its extra-tags array. */
  private readonly labelCache = new Map<string, ReadonlyArray<MetricLabel.MetricLabel>>()
  readonly labels: ReadonlyArray<MetricLabel.MetricLabel>
  private readonly killers = new Set<Mysql.Connection>()
  private gaugeTimer: ReturnType<typeof setInterval>
  private readonly gauges: ReadonlyArray<Metric.Metric.Gauge<number>>
  reactivity!: Reactivity.Reactivity["Type"]
  /** The engine's client: follows the fiber's current session of this engine, else autocommit. */
  client!: import("@effect/sql/SqlClient").SqlClient

  constructor(readonly options: EngineImplOptions) {
    this.currentTag = Context.GenericTag<BaseConnection>(`@sessionfx/session/CurrentSession/${this.id}`)
    this.labels = [MetricLabel.make("engine", options.name)]
    const labels = this.labels
    this.pool = new ConnPool({
      ...options.pool,
      lifetimeJitter: 0.1,
      connection: options.connection,
      describe: options.describe,
      onCreated: () => metrics.created.unsafeUpdate(1, labels),
      onDestroyed: (reason) => metrics.destroyed.unsafeUpdate(1, this.labelsWith("reason", reason)),
      onTimeout: () => metrics.acquireTimeouts.unsafeUpdate(1, labels),
      onWait: (millis) => metrics.acquireWait.unsafeUpdate(millis, labels)
    })
    this.gauges = [metrics.poolSize, metrics.poolInUse, metrics.poolIdle, metrics.poolWaiting]
    this.gaugeTimer = setInterval(() => this.refreshGauges(), 1000)
    this.gaugeTimer.unref()
  }

  /** The engine's labels plus one more, as a stable array. */
  labelsWith(key: string, value: string): ReadonlyArray<MetricLabel.MetricLabel> {
    const k = `${key}\u0000${value}`
    let l = this.labelCache.get(k)
    if (l === undefined) {
      l = [...this.labels, MetricLabel.make(key, value)]
      this.labelCache.set(k, l)
    }
    return l
  }

  refreshGauges(): void {
    const gauges = this.gauges
    const s = this.pool.stats()
    gauges[0]!.unsafeUpdate(s.size, this.labels)
    gauges[1]!.unsafeUpdate(s.inUse, this.labels)
    gauges[2]!.unsafeUpdate(s.idle, this.labels)
    gauges[3]!.unsafeUpdate(s.waiting, this.labels)
  }

  stopTimers() {
    clearInterval(this.gaugeTimer)
  }

  /**
   * Takes a connection. Call it inside `uninterruptibleMask` with its `restore`: waiting is interruptible, and a
   * connection handed over while the fiber is being interrupted goes back to the pool — also when the interruption
   * lands after the hand-off, before the caller could register its finalizer.
   */
  borrow(restore: Restore): Effect.Effect<PooledConn, SessionError.PoolTimeout | SessionError.ConnectionError> {
    return Effect.suspend(() => {
      const lease: Lease = { pc: undefined, waiter: undefined }
      // the caller is uninterruptible here: a plain match is enough to see the interrupted exit
      return Effect.catchAllCause(restore(this.pool.acquire(lease)), (cause) => {
        this.pool.withdraw(lease)
        const pc = lease.pc
        if (pc !== undefined) {
          lease.pc = undefined
          this.release(pc, false)
        }
        return Effect.failCause(cause)
      })
    })
  }

  release(pc: PooledConn, reset: boolean, reason?: DestroyReason) {
    this.pool.release(pc, reset, reason)
  }

  /** Sends `KILL QUERY` for a connection from a fresh connection of the same user. */
  killQuery(threadId: number, cb: (ok: boolean) => void): void {
    this.pool.connect((err, conn) => {
      if (err || !conn) return cb(false)
      this.killers.add(conn)
      conn.query(`KILL QUERY ${threadId}`, (e) => {
        this.killers.delete(conn)
        hardClose(conn)
        cb(!e)
      })
    })
  }

  closeKillers() {
    for (const c of this.killers) hardClose(c)
    this.killers.clear()
  }

  /**
   * Starts one command on a pooled connection; `done` is called exactly once when it settles. Returns the command
   * (to stop it: `Command.cancel`), or `undefined` when the connection is already gone (`done` has been called).
   * Callers refuse bad bind values first (`badBindValue`): `run` does, and `Frame.exec` before it takes BEGIN.
   */
  startCommand(
    pc: PooledConn,
    method: "query" | "execute",
    sql: string,
    values: ReadonlyArray<unknown> | undefined,
    rowsAsArray: boolean,
    done: (err: SessionError.SessionError | undefined, rows: unknown) => void,
    deadlineMs?: number
  ): Command | undefined {
    if (pc.closed || pc.broken) {
      done(
        new SessionError.ConnectionLost({
          message: `connection ${pc.threadId} is closed (killed, timed out or the server restarted); the unit can be retried`
        }),
        undefined
      )
      return undefined
    }
    if (isStateful(sql)) pc.dirty = true
    const command = new Command(this, pc, done)
    const settle = command.callback
    pc.pending = settle
    if (deadlineMs !== undefined) {
      command.deadline = setTimeout(() => {
        this.pool.destroy(pc, "stateUnknown", `no answer within ${deadlineMs} ms`)
      }, deadlineMs)
    }
    try {
      if (rowsAsArray) {
        const options = { sql, values: values as Array<any> | undefined, rowsAsArray }
        if (method === "execute") pc.conn.execute(options, settle)
        else pc.conn.query(options, settle)
      } else if (method === "execute") executePrepared(pc, sql, values ?? [], settle)
      // the positional forms: mysql2 copies an options object with spreads on every call
      else if (values === undefined || values.length === 0) pc.conn.query(sql, settle)
      else pc.conn.query(sql, values as Array<any>, settle)
    } catch (e) {
      // mysql2 throws on arguments it cannot send (an undefined bind value, a function)
      settle(e, undefined)
    }
    return command
  }

  /**
   * Runs one command on a pooled connection (see `startCommand`). Interrupting it stops the command
   * (`Command.cancel`); a caller that is uninterruptible anyway (control statements: SAVEPOINT, RELEASE, …) passes
   * `interruptible: false` and spares the `onInterrupt` frame `Effect.async` puts around a canceler.
   */
  run(
    pc: PooledConn,
    method: "query" | "execute",
    sql: string,
    values: ReadonlyArray<unknown> | undefined,
    rowsAsArray: boolean,
    interruptible = true
  ): Effect.Effect<unknown, SessionError.SessionError> {
    return Effect.async<unknown, SessionError.SessionError>((resume) => {
      const bad = values === undefined ? undefined : badBindValue(values)
      if (bad !== undefined) return resume(Effect.fail(SessionError.classify(bad)))
      const command = this.startCommand(pc, method, sql, values, rowsAsArray, (err, rows) =>
        resume(err ? Effect.fail(err) : Effect.succeed(rows))
      )
      return interruptible && command !== undefined ? command.cancel() : undefined
    })
  }
}

/**
 * One command in flight on a pooled connection. It settles exactly once: from mysql2's callback, or when the
 * connection is destroyed under it (mysql2 never calls back the commands of a connection it was told to close).
 *
 * @internal
 */
export class Command {
  settled = false
  /** Someone asked to stop it (`cancel`): a caller chaining a follow-up command must not start it. */
  cancelled = false
  deadline: ReturnType<typeof setTimeout> | undefined = undefined
  private onSettled: (() => void) | undefined = undefined
  /** mysql2's callback, also what the pool calls when it destroys the connection (`PooledConn.pending`). */
  readonly callback: (err: unknown, rows: unknown) => void

  constructor(
    readonly engine: EngineImpl,
    readonly pc: PooledConn,
    private readonly done: (err: SessionError.SessionError | undefined, rows: unknown) => void
  ) {
    this.callback = (err, rows) => this.settle(err, rows)
  }

  private settle(err: any, rows: unknown): void {
    if (this.settled) return
    this.settled = true
    const pc = this.pc
    pc.pending = undefined
    if (this.deadline !== undefined) clearTimeout(this.deadline)
    if (err && SessionError.isFatal(err)) pc.broken = true
    this.done(err ? SessionError.classify(err) : undefined, rows)
    if (this.onSettled !== undefined) this.onSettled()
  }

  /**
   * Stops the command and completes when it has ended: KILL QUERY from another connection (resent until it lands),
   * and if the command has not ended after `killGrace`, the connection is destroyed.
   */
  cancel(): Effect.Effect<void> {
    return Effect.async<void>((resumeCancel) => {
      this.cancelled = true
      if (this.settled) return resumeCancel(Effect.void)
      const { engine, pc } = this
      pc.dirty = true
      let finished = false
      const finish = () => {
        if (finished) return
        finished = true
        clearTimeout(timer)
        resumeCancel(Effect.void)
      }
      const before = this.onSettled
      this.onSettled = before === undefined ? finish : () => (before(), finish())
      const timer = setTimeout(() => {
        engine.pool.destroy(
          pc,
          "interrupted",
          `the interrupted statement did not end within ${engine.options.killGraceMs} ms`
        )
      }, engine.options.killGraceMs)
      // KILL QUERY can reach the server before the statement does (then it stops nothing): send it again, with
      // growing pauses, until the statement has ended or the grace period is over
      let attempt = 0
      const kill = () => {
        if (this.settled || finished) return
        engine.killQuery(pc.threadId, (ok) => {
          if (this.settled || finished) return
          if (!ok) return engine.pool.destroy(pc, "interrupted", "KILL QUERY could not be sent")
          const again = setTimeout(kill, Math.min(500, 20 * 2 ** attempt++))
          again.unref()
        })
      }
      kill()
    })
  }
}

/** How many prepared statements a connection keeps by SQL text, at most. */
const STATEMENTS_PER_CONNECTION = 256

/** "Unknown prepared statement handler": a statement the server no longer has. */
const ER_UNKNOWN_STMT_HANDLER = 1243

/** A bind value mysql2 refuses (the binary protocol) or would send as NULL (the text protocol): refused for both. @internal */
export const badBindValue = (values: ReadonlyArray<unknown>): TypeError | undefined => {
  for (let i = 0; i < values.length; i++) {
    const v = values[i]
    if (v === undefined)
      return new TypeError("Bind parameters must not contain undefined. To pass SQL NULL specify JS null")
    if (typeof v === "function") return new TypeError("Bind parameters must not contain function(s)")
  }
  return undefined
}

/**
 * A prepared statement (binary protocol), through the connection's own statement map: once a text is prepared on
 * a connection, executing it again is one COM_STMT_EXECUTE command, without what mysql2's `execute` does on every
 * call (an options object, a Prepare command that looks its cache up by a key string built per call, and a
 * second command through the queue).
 */
const executePrepared = (
  pc: PooledConn,
  sql: string,
  values: ReadonlyArray<unknown>,
  settle: (err: unknown, rows: unknown) => void
): void => {
  const known = pc.statements.get(sql)
  if (known !== undefined) {
    known.execute(values, (err, rows) => {
      // mysql2's own statement cache evicted and closed it: prepare it again (the server ran nothing)
      if (err && (err as { errno?: number }).errno === ER_UNKNOWN_STMT_HANDLER && pc.statements.get(sql) === known) {
        pc.statements.delete(sql)
        return executePrepared(pc, sql, values, settle)
      }
      settle(err, rows)
    })
    return
  }
  pc.conn.prepare(sql, (err, statement) => {
    if (err) return settle(err, undefined)
    const stmt = statement as unknown as PreparedStatement
    if (pc.statements.size >= STATEMENTS_PER_CONNECTION) {
      // the oldest entry leaves this map only; mysql2's cache still owns (and closes) the statement
      pc.statements.delete(pc.statements.keys().next().value!)
    }
    pc.statements.set(sql, stmt)
    stmt.execute(values, settle)
  })
}

/** @internal */
export const toSqlError = (e: SessionError.SessionError): SqlError =>
  e instanceof SqlError ? e : new SqlError({ cause: e, message: e.message })

/** For `withTransaction`, whose error channel is `SqlError`: a `SessionError` travels as the cause. @internal */
export const sessionErrorsAsSqlError = <E>(e: E): E | SqlError =>
  SessionError.isSessionError(e) ? toSqlError(e as SessionError.SessionError) : e

const rowsOf = (results: unknown): ReadonlyArray<any> => (Array.isArray(results) ? results : [])

/**
 * The `@effect/sql` connection of a frame: a pooled connection plus the rule that decides whether a statement may
 * run (session open, frame open, one statement at a time).
 *
 * @internal
 */
export abstract class BaseConnection implements Connection {
  constructor(readonly engine: EngineImpl) {}

  abstract runStatement(
    method: "query" | "execute",
    sql: string,
    params: ReadonlyArray<unknown>,
    rowsAsArray: boolean
  ): Effect.Effect<unknown, SqlError>

  execute(sql: string, params: ReadonlyArray<unknown>, transformRows: Transform) {
    const eff = Effect.map(this.runStatement("execute", sql, params, false), rowsOf)
    return transformRows ? Effect.map(eff, transformRows) : eff
  }
  executeRaw(sql: string, params: ReadonlyArray<unknown>) {
    return this.runStatement("execute", sql, params, false)
  }
  executeValues(sql: string, params: ReadonlyArray<unknown>) {
    return Effect.map(this.runStatement("execute", sql, params, true), rowsOf) as Effect.Effect<
      ReadonlyArray<ReadonlyArray<unknown>>,
      SqlError
    >
  }
  executeUnprepared(sql: string, params: ReadonlyArray<unknown>, transformRows: Transform) {
    const eff = Effect.map(this.runStatement("query", sql, params, false), rowsOf)
    return transformRows ? Effect.map(eff, transformRows) : eff
  }
  executeStream(sql: string, params: ReadonlyArray<unknown>, transformRows: Transform): Stream.Stream<any, SqlError> {
    // rows are fetched whole and then streamed: the connection stays consistent and the frame's ordering holds
    return Stream.fromIterableEffect(this.execute(sql, params, transformRows))
  }
}

/** An autocommit statement on a connection borrowed for that one statement. @internal */
export class DirectConnection extends BaseConnection {
  constructor(
    engine: EngineImpl,
    readonly pc: PooledConn
  ) {
    super(engine)
  }
  runStatement(method: "query" | "execute", sql: string, params: ReadonlyArray<unknown>, rowsAsArray: boolean) {
    return Effect.mapError(this.engine.run(this.pc, method, sql, params, rowsAsArray), toSqlError)
  }
}

/** @internal */
export const borrowScoped = (engine: EngineImpl) =>
  Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(Effect.mapError(engine.borrow(restore), toSqlError), (pc) =>
      Effect.as(
        Effect.addFinalizer(() => Effect.sync(() => engine.release(pc, false))),
        new DirectConnection(engine, pc) as Connection
      )
    )
  )
