/**
 * The `@effect/sql` connection of a statement: a unit's frame or a connection borrowed for one statement, and what
 * its caller gets back.
 *
 * @internal
 */
import type { Connection } from "@effect/sql/SqlConnection"
import { SqlError } from "@effect/sql/SqlError"
import * as Effect from "effect/Effect"
import * as Stream from "effect/Stream"
import * as SessionError from "../SessionError.js"
import type { EngineImpl } from "./engine.js"

type Transform = (<A extends object>(row: ReadonlyArray<A>) => ReadonlyArray<A>) | undefined

/** A statement of the user's, as a unit's frame or autocommit runs it. @internal */
export interface StatementRequest {
  readonly method: "query" | "execute"
  readonly sql: string
  readonly params: ReadonlyArray<unknown>
  readonly rowsAsArray: boolean
  /** The driver's result as it is (`.raw`), else its rows (transformed). */
  readonly raw: boolean
  readonly transform: Transform
}

/** What the caller of a statement gets: the driver's result (`raw`), else its rows, transformed. @internal */
export const shapeRows = (req: StatementRequest, rows: unknown): unknown => {
  if (req.raw) return rows
  const list = Array.isArray(rows) ? rows : []
  return req.transform ? req.transform(list) : list
}

/** @internal */
export const toSqlError = (e: SessionError.SessionError): SqlError =>
  e instanceof SqlError ? e : new SqlError({ cause: e, message: e.message })

/** For `withTransaction`, whose error channel is `SqlError`: a `SessionError` travels as the cause. @internal */
export const sessionErrorsAsSqlError = <E>(e: E): E | SqlError =>
  SessionError.isSessionError(e) ? toSqlError(e as SessionError.SessionError) : e

const rowsOf = (results: unknown): ReadonlyArray<object> => (Array.isArray(results) ? results : [])

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
  executeStream(
    sql: string,
    params: ReadonlyArray<unknown>,
    transformRows: Transform
  ): Stream.Stream<unknown, SqlError> {
    // rows are fetched whole and then streamed: the connection stays consistent and the frame's ordering holds
    return Stream.fromIterableEffect(this.execute(sql, params, transformRows))
  }
}
