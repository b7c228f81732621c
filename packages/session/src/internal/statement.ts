import type * as Reactivity from "@effect/experimental/Reactivity"
import * as Client from "@effect/sql/SqlClient"
import type { Connection } from "@effect/sql/SqlConnection"
import type { SqlError } from "@effect/sql/SqlError"
import * as Statement from "@effect/sql/Statement"
import * as Effect from "effect/Effect"
import * as Effectable from "effect/Effectable"
import type * as Fiber from "effect/Fiber"
import { identity } from "effect/Function"
import type { ReadonlyRecord } from "effect/Record"
import type * as Scope from "effect/Scope"
import type * as Stream from "effect/Stream"
import type * as Tracer from "effect/Tracer"
import type { PooledConn } from "./pool.js"
import { runAutocommit } from "./autocommit.js"
import { BaseConnection, shapeRows, type StatementRequest, toSqlError } from "./connection.js"
import type { EngineImpl } from "./engine.js"
import { directStream } from "./stream.js"

/**
 * What a statement runs on: the frame of the current session, or `undefined` for autocommit on the pool.
 *
 * @internal
 */
export interface StatementTarget {
  /** Inside `@sessionfx/testing`'s SessionTest: `reserve` hands out this connection instead of a pooled one. */
  readonly containsReserve?: boolean | undefined
  exec(fiber: Fiber.RuntimeFiber<unknown, unknown> | undefined, req: StatementRequest): Effect.Effect<unknown, SqlError>
}

/** @internal */
export type Resolve = (fiber: Fiber.RuntimeFiber<unknown, unknown>) => (StatementTarget & Connection) | undefined

/** An autocommit statement on a connection borrowed for that one statement. @internal */
export class DirectConnection extends BaseConnection {
  constructor(
    engine: EngineImpl,
    readonly pc: PooledConn
  ) {
    super(engine)
  }
  runStatement(method: "query" | "execute", sql: string, params: ReadonlyArray<unknown>, rowsAsArray: boolean) {
    return Effect.mapError(
      runAutocommit(this.engine, this.pc, { method, sql, values: params, rowsAsArray }),
      toSqlError
    )
  }

  /** Rows as the server sends them, on this connection (see `stream.ts`). */
  override executeStream(sql: string, params: ReadonlyArray<unknown>, transformRows: Transform) {
    return directStream(this.engine, this.pc, { sql, params, transform: transformRows })
  }
}

/** A connection of the pool for the scope's life, in autocommit. @internal */
export const borrowScoped = (engine: EngineImpl) =>
  Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(Effect.mapError(engine.borrow(restore), toSqlError), (pc) =>
      Effect.as(
        Effect.addFinalizer(() => Effect.sync(() => engine.release(pc, false))),
        new DirectConnection(engine, pc) as Connection
      )
    )
  )

/** Effect's built-in tracer: spans made for it are seen by nobody, so sessionfx skips them. @internal */
export const defaultTracer: Tracer.Tracer = Effect.runSync(Effect.tracer)

/**
 * The SQL text of a template whose arguments are all plain values: compiled once per call site, with `?`
 * placeholders, or `$1 … $n` where the compiler numbers them (PostgreSQL: `numbered`).
 */
const textCache = new WeakMap<TemplateStringsArray, string>()
const numberedCache = new WeakMap<TemplateStringsArray, string>()
const textOf = (strings: TemplateStringsArray, numbered: boolean): string => {
  const cache = numbered ? numberedCache : textCache
  let text = cache.get(strings)
  if (text === undefined) {
    text = numbered ? strings.reduce((sql, part, i) => `${sql}$${i}${part}`) : strings.join("?")
    cache.set(strings, text)
  }
  return text
}

const isPlain = (arg: unknown): boolean => {
  if (arg === null || arg === undefined) return true
  const t = typeof arg
  if (t === "string" || t === "number" || t === "bigint" || t === "boolean") return true
  return arg instanceof Date || arg instanceof Uint8Array
}

/** A `@effect/sql` statement constructor called as a template tag. */
type TemplateTag = (strings: unknown, ...args: Array<unknown>) => unknown

type Transform = (<A extends object>(row: ReadonlyArray<A>) => ReadonlyArray<A>) | undefined

interface Core {
  readonly engine: EngineImpl
  readonly resolve: Resolve
  readonly slow: Statement.Constructor
  readonly transformRows: Transform
  /** A `@effect/sql` statement constructor whose statements run on `origin` when the running fiber has no unit. */
  readonly slowFor: (origin: StatementTarget & Connection) => Statement.Constructor
  /** The compiler numbers its placeholders (`$1`): PostgreSQL. */
  readonly numbered: boolean
}

const verbs = new Map<string, string>()

/** The statement's SQL verb (`SELECT`, `INSERT`, …) for `db.operation.name`, after leading comments; cached. */
const verbOf = (text: string): string => {
  let v = verbs.get(text)
  if (v === undefined) {
    const m = /^(?:\s|\/\*[\s\S]*?\*\/|(?:--|#)[^\n]*\n)*([A-Za-z]+)/.exec(text)
    v = m === null ? "unknown" : m[1]!.toUpperCase()
    if (verbs.size > 10_000) verbs.clear()
    verbs.set(text, v)
  }
  return v
}

/** Effect's current-fiber slot: the fiber whose code is building a statement. */
const currentFiber = (): Fiber.RuntimeFiber<unknown, unknown> | undefined =>
  (globalThis as { "effect/FiberCurrent"?: Fiber.RuntimeFiber<unknown, unknown> })["effect/FiberCurrent"]

/** How a statement is run: what `@effect/sql` calls it, and what its caller gets back. */
interface How {
  readonly method: "query" | "execute"
  readonly rowsAsArray: boolean
  readonly raw: boolean
  readonly transformed: boolean
  readonly operation: string
}

const EXECUTE: How = { method: "execute", rowsAsArray: false, raw: false, transformed: true, operation: "execute" }
const RAW: How = { method: "execute", rowsAsArray: false, raw: true, transformed: false, operation: "executeRaw" }
const WITHOUT_TRANSFORM: How = {
  method: "execute",
  rowsAsArray: false,
  raw: false,
  transformed: false,
  operation: "executeWithoutTransform"
}
const VALUES: How = { method: "execute", rowsAsArray: true, raw: false, transformed: false, operation: "executeValues" }
const UNPREPARED: How = {
  method: "query",
  rowsAsArray: false,
  raw: false,
  transformed: true,
  operation: "executeUnprepared"
}

const runIn = (
  fiber: Fiber.RuntimeFiber<unknown, unknown>,
  s: FastStatement<unknown>,
  how: How
): Effect.Effect<unknown, SqlError> => {
  const core = s.core
  const text = textOf(s.strings, core.numbered)
  const req: StatementRequest = {
    method: how.method,
    sql: text,
    params: s.args,
    rowsAsArray: how.rowsAsArray,
    raw: how.raw,
    transform: how.transformed ? core.transformRows : undefined
  }
  // a statement built inside a unit and run by a fiber outside any unit still belongs to that unit (and fails with
  // SessionClosed once it has ended): it never runs in autocommit by accident
  const target = core.resolve(fiber) ?? s.origin
  const effect: Effect.Effect<unknown, SqlError> =
    target !== undefined ? target.exec(fiber, req) : autocommit(core.engine, req)
  if (fiber.currentTracer === defaultTracer) return effect
  const attributes: Record<string, unknown> = { "db.operation.name": verbOf(text), "sql.method": how.operation }
  if (core.engine.options.queryTextInSpans === true) attributes["db.query.text"] = text
  for (const [k, v] of core.engine.options.spanAttributes) attributes[k] = v
  return Effect.withSpan(effect, "sql.execute", { kind: "client", captureStackTrace: false, attributes })
}

/** One statement in autocommit, on a connection borrowed for it. */
const autocommit = (engine: EngineImpl, req: StatementRequest): Effect.Effect<unknown, SqlError> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(Effect.mapError(engine.borrow(restore), toSqlError), (pc) =>
      Effect.ensuring(
        restore(
          Effect.mapError(
            Effect.map(
              runAutocommit(engine, pc, {
                method: req.method,
                sql: req.sql,
                values: req.params,
                rowsAsArray: req.rowsAsArray
              }),
              (rows) => shapeRows(req, rows)
            ),
            toSqlError
          )
        ),
        Effect.sync(() => engine.release(pc, false))
      )
    )
  )

/**
 * A statement of a template whose arguments are plain values. It is a full `@effect/sql` Statement (usable as a
 * fragment, compiled, streamed), but executing it skips what a plain statement does not need: no Scope per
 * statement, no re-compilation, and a span only when a tracer other than Effect's built-in one is installed.
 */
class FastStatement<A> extends Effectable.Class<ReadonlyArray<A>, SqlError> implements Statement.Statement<A> {
  private _slow: Statement.Statement<A> | undefined
  constructor(
    readonly strings: TemplateStringsArray,
    readonly args: ReadonlyArray<unknown>,
    readonly core: Core,
    readonly origin: (StatementTarget & Connection) | undefined
  ) {
    super()
  }
  get [Statement.FragmentId](): (_: Statement.FragmentId) => Statement.FragmentId {
    return identity
  }
  private slow(): Statement.Statement<A> {
    const make = this.origin === undefined ? this.core.slow : this.core.slowFor(this.origin)
    return (this._slow ??= (make as unknown as TemplateTag)(this.strings, ...this.args) as Statement.Statement<A>)
  }
  get segments() {
    return this.slow().segments
  }
  compile(): readonly [sql: string, params: ReadonlyArray<unknown>] {
    return [textOf(this.strings, this.core.numbered), this.args]
  }
  private go<X>(
    how: How,
    fallback: (s: Statement.Statement<A>) => Effect.Effect<X, SqlError>
  ): Effect.Effect<X, SqlError> {
    return Effect.withFiberRuntime((fiber) =>
      fiber.getFiberRef(Statement.currentTransformer)._tag === "Some"
        ? fallback(this.slow())
        : (runIn(fiber, this as FastStatement<unknown>, how) as Effect.Effect<X, SqlError>)
    )
  }
  commit(): Effect.Effect<ReadonlyArray<A>, SqlError> {
    // only Effect's run loop calls `commit`, on the fiber that runs the statement: no `withFiberRuntime` to ask
    const fiber = currentFiber()
    if (fiber === undefined) return this.go(EXECUTE, (s) => s)
    return fiber.getFiberRef(Statement.currentTransformer)._tag === "Some"
      ? this.slow()
      : (runIn(fiber, this as FastStatement<unknown>, EXECUTE) as Effect.Effect<ReadonlyArray<A>, SqlError>)
  }
  get raw(): Effect.Effect<unknown, SqlError> {
    return this.go(RAW, (s) => s.raw)
  }
  get withoutTransform(): Effect.Effect<ReadonlyArray<A>, SqlError> {
    return this.go(WITHOUT_TRANSFORM, (s) => s.withoutTransform)
  }
  get values(): Effect.Effect<ReadonlyArray<ReadonlyArray<unknown>>, SqlError> {
    return this.go(VALUES, (s) => s.values)
  }
  get unprepared(): Effect.Effect<ReadonlyArray<A>, SqlError> {
    return this.go(UNPREPARED, (s) => s.unprepared)
  }
  get stream(): Stream.Stream<A, SqlError> {
    return this.slow().stream
  }
  toJSON() {
    return { _id: "@effect/sql/Statement", sql: textOf(this.strings, this.core.numbered), params: this.args }
  }
}

/**
 * An `@effect/sql` client whose statements run on whatever `resolve` yields for the running fiber (a session's
 * frame) or, when it yields nothing, in autocommit on a connection borrowed for that one statement. It never
 * consults `@effect/sql`'s global TransactionConnection, so clients of two engines never borrow each other's
 * transaction.
 *
 * @internal
 */
export const makeClient = (
  engine: EngineImpl,
  resolve: Resolve,
  withTransaction: Client.SqlClient["withTransaction"],
  reactivity: Reactivity.Reactivity["Type"]
): Client.SqlClient => {
  const acquirer: Connection.Acquirer = Effect.withFiberRuntime((fiber) => {
    const target = resolve(fiber)
    return target !== undefined ? Effect.succeed(target as Connection) : borrowScoped(engine)
  })
  const acquirerFor = (origin: StatementTarget & Connection): Connection.Acquirer =>
    Effect.withFiberRuntime((fiber) => Effect.succeed((resolve(fiber) ?? origin) as Connection))
  const reserve: Effect.Effect<Connection, SqlError, Scope.Scope> = Effect.withFiberRuntime((fiber) => {
    const target = resolve(fiber)
    return target !== undefined && target.containsReserve === true
      ? Effect.succeed(target as Connection)
      : borrowScoped(engine)
  })
  const parts: ClientParts = { engine, resolve, withTransaction, reactivity, acquirer, acquirerFor, reserve }
  return buildClient(parts, engine.options.transformRows, engine.options.compiler)
}

/** What a client is made of, besides its row transform and compiler (see `makeClient`). */
interface ClientParts {
  readonly engine: EngineImpl
  readonly resolve: Resolve
  readonly withTransaction: Client.SqlClient["withTransaction"]
  readonly reactivity: Reactivity.Reactivity["Type"]
  readonly acquirer: Connection.Acquirer
  readonly acquirerFor: (origin: StatementTarget & Connection) => Connection.Acquirer
  readonly reserve: Effect.Effect<Connection, SqlError, Scope.Scope>
}

const buildClient = (p: ClientParts, transformRows: Transform, compiler: Statement.Compiler): Client.SqlClient => {
  const { acquirer, acquirerFor, engine, reactivity, reserve, resolve, withTransaction } = p
  const slow = Statement.make(acquirer, compiler, engine.options.spanAttributes, transformRows)
  const slowByOrigin = new WeakMap<object, Statement.Constructor>()
  const slowFor = (origin: StatementTarget & Connection): Statement.Constructor => {
    let c = slowByOrigin.get(origin)
    if (c === undefined) {
      c = Statement.make(acquirerFor(origin), compiler, engine.options.spanAttributes, transformRows)
      slowByOrigin.set(origin, c)
    }
    return c
  }
  const core: Core = { engine, resolve, slow, transformRows, slowFor, numbered: compiler.dialect === "pg" }
  const sql = function (strings: unknown, ...args: Array<unknown>): unknown {
    const fiber = currentFiber()
    const origin = fiber === undefined ? undefined : resolve(fiber)
    if (Array.isArray(strings) && "raw" in strings) {
      for (let i = 0; i < args.length; i++) {
        if (!isPlain(args[i])) {
          return ((origin === undefined ? slow : slowFor(origin)) as unknown as TemplateTag)(strings, ...args)
        }
      }
      return new FastStatement(strings as unknown as TemplateStringsArray, args, core, origin)
    }
    return (slow as unknown as TemplateTag)(strings, ...args)
  }
  // `sql.unsafe` belongs to the unit it was built in, as a template does: run by a fiber outside any unit, it fails
  // with SessionClosed once that unit has ended (`slow`'s acquirer alone would run it in autocommit)
  const unsafe: Statement.Constructor["unsafe"] = (text, params) => {
    const fiber = currentFiber()
    const origin = fiber === undefined ? undefined : resolve(fiber)
    return (origin === undefined ? slow : slowFor(origin)).unsafe(text, params)
  }
  const client: Client.SqlClient = Object.assign(sql, slow, {
    unsafe,
    [Client.TypeId]: Client.TypeId,
    safe: undefined as unknown as Client.SqlClient,
    withTransaction,
    reserve,
    withoutTransforms: (): Client.SqlClient =>
      transformRows === undefined ? client : buildClient(p, undefined, compiler.withoutTransform),
    reactive: <A, E, R>(
      keys: ReadonlyArray<unknown> | ReadonlyRecord<string, ReadonlyArray<unknown>>,
      effect: Effect.Effect<A, E, R>
    ) => reactivity.stream(keys, effect),
    reactiveMailbox: <A, E, R>(
      keys: ReadonlyArray<unknown> | ReadonlyRecord<string, ReadonlyArray<unknown>>,
      effect: Effect.Effect<A, E, R>
    ) => reactivity.query(keys, effect)
  }) as unknown as Client.SqlClient
  ;(client as { safe: Client.SqlClient }).safe = client
  return client
}
