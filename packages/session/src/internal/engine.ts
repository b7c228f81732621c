import type * as Reactivity from "@effect/experimental/Reactivity"
import * as Client from "@effect/sql/SqlClient"
import type { Connection } from "@effect/sql/SqlConnection"
import { SqlError } from "@effect/sql/SqlError"
import * as Statement from "@effect/sql/Statement"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Mailbox from "effect/Mailbox"
import * as Metric from "effect/Metric"
import type { ReadonlyRecord } from "effect/Record"
import * as Stream from "effect/Stream"
import type * as Mysql from "mysql2"
import * as SessionError from "../SessionError.js"
import * as metrics from "./metrics.js"
import { ConnPool, type DestroyReason, hardClose, type PooledConn } from "./pool.js"

/** @internal */
export type Isolation = "READ UNCOMMITTED" | "READ COMMITTED" | "REPEATABLE READ" | "SERIALIZABLE"

/** @internal */
export interface SessionDefaults {
  readonly isolation: Isolation | undefined
  readonly lockWaitTimeoutSeconds: number | undefined
  readonly statementTimeoutMs: number | undefined
}

/** @internal */
export interface FrameLike {
  readonly conn: Connection
}

type Transform = (<A extends object>(row: ReadonlyArray<A>) => ReadonlyArray<A>) | undefined

/** Statements that can change the state a connection carries beyond its transaction. */
const STATEFUL =
  /@|\bget_lock\b|^\s*(?:set|use|lock|unlock|prepare|execute|deallocate|call|handler|declare|create\s+(?:or\s+replace\s+)?temporary)\b/i

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
  readonly currentTag: Context.Tag<FrameLike, FrameLike>
  readonly pool: ConnPool
  flavor: "mariadb" | "mysql" = "mysql"
  version = ""
  readonly metricTags: ReadonlyArray<readonly [string, string]>
  private readonly killers = new Set<Mysql.Connection>()
  private gaugeTimer: ReturnType<typeof setInterval>
  private readonly gauges: ReadonlyArray<Metric.Metric.Gauge<number>>
  reactivity!: Reactivity.Reactivity["Type"]

  constructor(readonly options: EngineImplOptions) {
    this.currentTag = Context.GenericTag<FrameLike>(`@sessionfx/session/CurrentSession/${this.id}`)
    const tag = <T, I, O>(m: Metric.Metric<T, I, O>) => Metric.tagged(m, "engine", options.name)
    const created = tag(metrics.created)
    const timeouts = tag(metrics.acquireTimeouts)
    const wait = tag(metrics.acquireWait)
    const destroyed = new Map<string, Metric.Metric.Counter<number>>()
    this.metricTags = [["engine", options.name]]
    this.pool = new ConnPool({
      ...options.pool,
      lifetimeJitter: 0.1,
      connection: options.connection,
      describe: options.describe,
      onCreated: () => created.unsafeUpdate(1, []),
      onDestroyed: (reason) => {
        let m = destroyed.get(reason)
        if (m === undefined) {
          m = tag(metrics.destroyed).pipe(Metric.tagged("reason", reason))
          destroyed.set(reason, m)
        }
        m.unsafeUpdate(1, [])
      },
      onTimeout: () => timeouts.unsafeUpdate(1, []),
      onWait: (millis) => wait.unsafeUpdate(millis, [])
    })
    this.gauges = [tag(metrics.poolSize), tag(metrics.poolInUse), tag(metrics.poolIdle), tag(metrics.poolWaiting)]
    this.gaugeTimer = setInterval(() => this.refreshGauges(), 1000)
    this.gaugeTimer.unref()
  }

  refreshGauges(): void {
    const gauges = this.gauges
    const s = this.pool.stats()
    gauges[0]!.unsafeUpdate(s.size, [])
    gauges[1]!.unsafeUpdate(s.inUse, [])
    gauges[2]!.unsafeUpdate(s.idle, [])
    gauges[3]!.unsafeUpdate(s.waiting, [])
  }

  stopTimers() {
    clearInterval(this.gaugeTimer)
  }

  /** Takes a connection; waiting is interruptible and a connection handed over during interruption goes back. */
  readonly borrow = (): Effect.Effect<PooledConn, SessionError.PoolTimeout | SessionError.ConnectionError> =>
    this.pool.acquire

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
   * Runs one command on a pooled connection. Interruption while the statement runs on the server sends KILL QUERY
   * and waits for the statement to end; if it does not end within `killGraceMs`, the connection is destroyed.
   */
  run(
    pc: PooledConn,
    method: "query" | "execute",
    sql: string,
    values: ReadonlyArray<unknown> | undefined,
    rowsAsArray: boolean
  ): Effect.Effect<unknown, SessionError.SessionError> {
    return Effect.async<unknown, SessionError.SessionError>((resume) => {
      if (pc.closed || pc.broken) {
        resume(
          Effect.fail(
            new SessionError.ConnectionLost({
              message: `connection ${pc.threadId} is closed; the unit must be retried`
            })
          )
        )
        return
      }
      if (STATEFUL.test(sql)) pc.dirty = true
      let done = false
      let onDone: (() => void) | undefined
      pc.busy = true
      const cb = (err: any, rows: unknown) => {
        done = true
        pc.busy = false
        if (onDone) {
          onDone()
          return
        }
        if (err) {
          if (SessionError.isFatal(err)) pc.broken = true
          resume(Effect.fail(SessionError.classify(err)))
        } else {
          resume(Effect.succeed(rows))
        }
      }
      const options = { sql, values: values as Array<any> | undefined, rowsAsArray }
      if (method === "execute") pc.conn.execute(options, cb)
      else pc.conn.query(options, cb)
      return Effect.async<void>((resumeCancel) => {
        if (done) return resumeCancel(Effect.void)
        pc.dirty = true
        let finished = false
        const finish = () => {
          if (finished) return
          finished = true
          clearTimeout(timer)
          resumeCancel(Effect.void)
        }
        onDone = finish
        const timer = setTimeout(() => {
          pc.broken = true
          hardClose(pc.conn)
          finish()
        }, this.options.killGraceMs)
        this.killQuery(pc.threadId, (ok) => {
          if (!ok && !done) {
            pc.broken = true
            hardClose(pc.conn)
            finish()
          }
        })
      })
    })
  }
}

/** @internal */
export const toSqlError = (e: SessionError.SessionError): SqlError =>
  e instanceof SqlError ? e : new SqlError({ cause: e, message: e.message })

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
    return Stream.flatMap(
      Stream.fromEffect(this.execute(sql, params, transformRows)),
      (rows) => Stream.fromIterable(rows),
      { concurrency: 1 }
    )
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
    Effect.flatMap(Effect.mapError(restore(engine.borrow()), toSqlError), (pc) =>
      Effect.as(
        Effect.addFinalizer(() => Effect.sync(() => engine.release(pc, false))),
        new DirectConnection(engine, pc) as Connection
      )
    )
  )

/**
 * Builds an `@effect/sql` client whose statements run on whatever connection `acquirer` yields, with its own
 * `withTransaction`. It never looks at `@effect/sql`'s global TransactionConnection, so clients of two engines (or
 * of another driver) never borrow each other's transaction.
 *
 * @internal
 */
export const makeClient = (
  engine: EngineImpl,
  acquirer: Connection.Acquirer,
  withTransaction: Client.SqlClient["withTransaction"],
  reactivity: Reactivity.Reactivity["Type"]
): Client.SqlClient => {
  const { compiler, spanAttributes, transformRows } = engine.options
  const build = (transform: Transform, comp: Statement.Compiler): Client.SqlClient => {
    const statement = Statement.make(acquirer, comp, spanAttributes, transform)
    const client: Client.SqlClient = Object.assign(statement, {
      [Client.TypeId]: Client.TypeId,
      safe: undefined as any,
      withTransaction,
      reserve: borrowScoped(engine),
      withoutTransforms: (): Client.SqlClient =>
        transform === undefined ? client : build(undefined, compiler.withoutTransform),
      reactive: <A, E, R>(
        keys: ReadonlyArray<unknown> | ReadonlyRecord<string, ReadonlyArray<unknown>>,
        effect: Effect.Effect<A, E, R>
      ) => reactivity.stream(keys, effect),
      reactiveMailbox: <A, E, R>(
        keys: ReadonlyArray<unknown> | ReadonlyRecord<string, ReadonlyArray<unknown>>,
        effect: Effect.Effect<A, E, R>
      ): Effect.Effect<Mailbox.ReadonlyMailbox<A, E>, never, R | import("effect/Scope").Scope> =>
        reactivity.query(keys, effect)
    }) as any
    ;(client as any).safe = client
    return client
  }
  return build(transformRows, compiler)
}
