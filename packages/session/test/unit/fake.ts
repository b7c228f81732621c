/**
 * A scripted fake driver: connections that keep a server's transaction status the way MySQL does (START
 * TRANSACTION opens, COMMIT / ROLLBACK / DDL close, a deadlock rolls back), record every statement, and let a test
 * script what any statement answers — an error, a reply that lies about the transaction, or no reply at all.
 * It runs the core (state machine, lock, pool, engine) without a server.
 */
import * as Effect from "effect/Effect"
import { makeCompiler } from "../../src/internal/driver/mysql/compiler.js"
import { dialect, keysSql, topologySql } from "../../src/internal/driver/mysql/dialect.js"
import * as mysqlErrors from "../../src/internal/driver/mysql/errors.js"
import { bindValues, splitStatements } from "../../src/internal/driver/mysql/values.js"
import type {
  Connector,
  RawConnection,
  Reply,
  ReplyCallback,
  RowSink,
  ServerDriver,
  Settings
} from "../../src/internal/driver/types.js"
import { EngineImpl } from "../../src/internal/engine.js"
import { makeClient } from "../../src/internal/statement.js"
import type { UnitOptions } from "../../src/internal/unitOptions.js"
import * as internalSession from "../../src/internal/units.js"
import { sessionErrorsAsSqlError } from "../../src/internal/connection.js"

/** What a scripted statement answers: `undefined` lets the fake answer as a server would. */
export type Script =
  | { readonly _tag: "error"; readonly errno: number; readonly code: string; readonly message: string }
  /** Answers, but reports this transaction status instead of the true one. */
  | { readonly _tag: "lie"; readonly inTransaction: boolean }
  /** Never answers (until the connection is destroyed or the statement is killed). */
  | { readonly _tag: "hang" }
  /** The connection is lost while the statement runs. */
  | { readonly _tag: "lose" }

export interface Sent {
  readonly thread: number
  readonly sql: string
}

export const deadlock: Script = {
  _tag: "error",
  errno: 1213,
  code: "ER_LOCK_DEADLOCK",
  message: "Deadlock found when trying to get lock; try restarting transaction"
}
export const syntaxError: Script = { _tag: "error", errno: 1064, code: "ER_PARSE_ERROR", message: "syntax error" }

const BASELINE: Settings = { lockWait: 50, statementTime: 0, isolation: "REPEATABLE READ", autocommit: true }

/** The fake server: every connection it opened, what was sent, and the script. */
export class FakeServer {
  readonly sent: Array<Sent> = []
  readonly conns: Array<FakeConnection> = []
  private nextThread = 100
  /** Decides what a statement answers (first match wins); `undefined`: the default answer. */
  script: (sql: string, conn: FakeConnection) => Script | undefined = () => undefined
  /** Connecting fails with this, when set. */
  refuseConnections: unknown = undefined

  /**
   * `autocommitOff`: units run with autocommit off and send no START TRANSACTION of their own (MySQL's dialect, as
   * shipped); without it the dialect says the database has no such mode (as PostgreSQL) and every unit begins
   * with START TRANSACTION.
   */
  constructor(readonly o: { readonly autocommitOff?: boolean } = {}) {}

  readonly connect: Connector = (cb) => {
    if (this.refuseConnections !== undefined) return queueMicrotask(() => cb(this.refuseConnections))
    const conn = new FakeConnection(this, this.nextThread++)
    this.conns.push(conn)
    queueMicrotask(() => cb(null, conn))
  }

  /** The statements sent on pooled connections (not KILLs on the control connection), in order. */
  statements(): ReadonlyArray<string> {
    return this.sent.filter((s) => !/^KILL /.test(s.sql)).map((s) => s.sql)
  }

  byThread(thread: number): FakeConnection | undefined {
    return this.conns.find((c) => c.threadId === thread)
  }

  /** The driver of this server, as the engine sees it. */
  driver(): ServerDriver {
    return fakeDriver(this.connect, { autocommitOff: this.o.autocommitOff === true })
  }
}

/**
 * A MySQL-speaking driver over `connect` (values, statements and error numbers as MySQL has them), with the fake's
 * baseline settings; `autocommitOff` as the dialect says. Shared with `core.bench.ts`.
 */
export const fakeDriver = (connect: Connector, o: { readonly autocommitOff: boolean }): ServerDriver => ({
  connect,
  dialect: { ...dialect("mariadb"), autocommitOff: o.autocommitOff },
  baseline: BASELINE,
  setVersion: () => undefined,
  readVersion: (_conn, cb) => cb(null, "10.11.0-MariaDB-fake"),
  prepare: (_conn, cb) => cb(null, BASELINE),
  marksDirty: () => false,
  statementTime: (ms) => ms / 1000,
  bind: bindValues,
  split: splitStatements,
  errors: mysqlErrors,
  topology: topologySql,
  keysSql
})

export class FakeConnection implements RawConnection {
  inTransaction = false
  /** The session's autocommit: off, a statement that reads or writes a table opens a transaction (as InnoDB). */
  autocommit = true
  destroyed = false
  private pending: ReplyCallback | undefined
  private gone: Array<(err: unknown) => void> = []

  constructor(
    readonly server: FakeServer,
    readonly threadId: number
  ) {}

  private run(sql: string, cb: ReplyCallback): void {
    if (this.destroyed) return queueMicrotask(() => cb(lost(), undefined))
    this.server.sent.push({ thread: this.threadId, sql })
    const kill = /^KILL (QUERY|CONNECTION) (\d+)$/.exec(sql)
    if (kill !== null) {
      this.server.byThread(Number(kill[2]))?.killed(kill[1] === "CONNECTION")
      return queueMicrotask(() => cb(null, reply(undefined, this.inTransaction, this.autocommit)))
    }
    const scripted = this.server.script(sql, this)
    if (scripted?._tag === "hang") {
      this.pending = cb
      // with autocommit off, a statement on a table has opened a transaction by the time it blocks (on a lock)
      if (!this.autocommit && TOUCHES_TABLES.test(sql)) this.inTransaction = true
      return
    }
    if (scripted?._tag === "lose") {
      this.destroyed = true
      this.inTransaction = false
      return queueMicrotask(() => cb(lost(), undefined))
    }
    if (scripted?._tag === "error") {
      // a deadlock rolls the transaction back, as InnoDB does; other errors leave it as it is, and with autocommit
      // off a failed statement on a table has opened one (it holds its locks)
      if (scripted.errno === 1213) this.inTransaction = false
      else if (!this.autocommit && TOUCHES_TABLES.test(sql)) this.inTransaction = true
      const err = Object.assign(new Error(scripted.message), {
        errno: scripted.errno,
        code: scripted.code,
        sqlMessage: scripted.message
      })
      return queueMicrotask(() => cb(err, undefined))
    }
    const setAutocommit = /\bautocommit = ([01])/.exec(sql)
    if (/^START TRANSACTION/.test(sql)) this.inTransaction = true
    else if (/^(COMMIT|ROLLBACK)$/.test(sql) || /^(CREATE|DROP|ALTER) /i.test(sql)) this.inTransaction = false
    else if (setAutocommit !== null) {
      // switching autocommit on commits what is open, as the server does
      if (setAutocommit[1] === "1" && !this.autocommit) this.inTransaction = false
      this.autocommit = setAutocommit[1] === "1"
    } else if (!this.autocommit && TOUCHES_TABLES.test(sql)) this.inTransaction = true
    const status = scripted?._tag === "lie" ? scripted.inTransaction : this.inTransaction
    const rows = /^SELECT/i.test(sql) ? [{ id: 1 }] : { affectedRows: 1 }
    queueMicrotask(() => cb(null, reply(rows, status, this.autocommit)))
  }

  /** A statement is left hanging (a scripted `hang`). */
  get hanging(): boolean {
    return this.pending !== undefined
  }

  /**
   * The server answers the hanging COMMIT now, synchronously (a test can act in the same turn, before the unit's
   * fiber resumes): committed, nothing open.
   */
  commitHanging(): void {
    const cb = this.pending
    this.pending = undefined
    this.inTransaction = false
    cb?.(null, reply(undefined, false, this.autocommit))
  }

  /** A KILL from the control connection: the statement in flight fails ("query interrupted"). */
  killed(connection: boolean): void {
    const cb = this.pending
    this.pending = undefined
    if (connection) {
      this.destroyed = true
      this.inTransaction = false
    }
    if (cb !== undefined) {
      queueMicrotask(() =>
        cb(
          Object.assign(new Error("Query execution was interrupted"), { errno: 1317, code: "ER_QUERY_INTERRUPTED" }),
          undefined
        )
      )
    }
  }

  readonly query = (sql: string, _rowsAsArray: boolean, cb: ReplyCallback): void => this.run(sql, cb)
  readonly execute = (sql: string, _values: ReadonlyArray<unknown>, _rowsAsArray: boolean, cb: ReplyCallback) =>
    this.run(sql, cb)
  readonly stream = (sql: string, _values: ReadonlyArray<unknown>, sink: RowSink) => {
    this.run(sql, (err, r) => {
      if (!err && Array.isArray(r?.rows)) for (const row of r.rows) sink.row(row)
      sink.end(err, r === undefined ? undefined : { ...r, rows: undefined })
    })
    return { skipRest: () => undefined }
  }
  readonly ping = (cb: (err: unknown) => void) => queueMicrotask(() => cb(this.destroyed ? lost() : undefined))
  readonly reset = (cb: (err: unknown) => void) => {
    this.server.sent.push({ thread: this.threadId, sql: "(reset)" })
    this.inTransaction = false
    this.autocommit = true
    queueMicrotask(() => cb(this.destroyed ? lost() : undefined))
  }
  readonly pause = () => undefined
  readonly resume = () => undefined
  readonly bytesRead = () => 0
  readonly destroy = () => {
    this.destroyed = true
    this.inTransaction = false
    this.pending = undefined
  }
  readonly onGone = (listener: (err: unknown) => void) => {
    this.gone.push(listener)
    return () => {
      this.gone = this.gone.filter((l) => l !== listener)
    }
  }
}

/** Statements that read or write a table: with autocommit off, the server opens a transaction at them. */
const TOUCHES_TABLES = /^(SELECT .* FROM|UPDATE|INSERT|DELETE|REPLACE)\b/i

const reply = (rows: unknown, inTransaction: boolean, autocommit: boolean): Reply => ({
  rows,
  inTransaction,
  autocommit,
  stateChanged: false,
  token: undefined
})

const lost = () =>
  Object.assign(new Error("Connection lost: The server closed the connection."), {
    code: "PROTOCOL_CONNECTION_LOST",
    fatal: true
  })

/** Scripts the first statement that matches `match`; every other statement gets the default answer. */
export const once = (server: FakeServer, match: RegExp, script: Script) => {
  let used = false
  server.script = (sql) => {
    if (used || !match.test(sql)) return undefined
    used = true
    return script
  }
}

/** An engine on `driver` (one server, no topology), started, with the engine's own client. */
export const engineOn = (
  driver: ServerDriver,
  o: {
    readonly size?: number
    readonly acquireTimeoutMs?: number
    readonly commitTimeoutMs?: number
    readonly queueLimit?: number
  } = {}
): EngineImpl => {
  const impl = new EngineImpl({
    name: "fake",
    describe: "the fake server",
    driver,
    pool: {
      size: o.size ?? 2,
      minIdle: 0,
      acquireTimeoutMs: o.acquireTimeoutMs ?? 1_000,
      idleTimeoutMs: 0,
      maxLifetimeMs: 0,
      validateAfterIdleMs: -1,
      queueLimit: o.queueLimit ?? 0
    },
    killGraceMs: 500,
    commitTimeoutMs: o.commitTimeoutMs ?? 1_000,
    defaults: { isolation: undefined, lockWaitTimeoutSeconds: undefined, statementTimeoutMs: undefined },
    spanAttributes: [],
    compiler: makeCompiler(),
    transformRows: undefined
  })
  impl.client = makeClient(
    impl,
    (fiber) => impl.current(fiber) as ReturnType<Parameters<typeof makeClient>[1]>,
    ((effect: Effect.Effect<unknown, unknown, unknown>) =>
      Effect.mapError(
        internalSession.transact(impl, effect, {}),
        sessionErrorsAsSqlError
      )) as EngineImpl["client"]["withTransaction"],
    undefined as never
  )
  impl.start()
  return impl
}

/** An engine on the fake server (one server, no topology), released with the scope. */
export const fakeEngine = (server: FakeServer, o: Parameters<typeof engineOn>[1] = {}) =>
  Effect.acquireRelease(
    Effect.sync(() => engineOn(server.driver(), o)),
    (impl) =>
      Effect.sync(() => {
        impl.pool.closeAll()
        impl.closeKillers()
        impl.stopTimers()
      })
  )

/** A unit of work on the fake engine. */
export const transact = <A, E, R>(impl: EngineImpl, effect: Effect.Effect<A, E, R>, options: UnitOptions = {}) =>
  internalSession.transact(impl, effect, options)
