/**
 * The one autocommit path: a statement outside any unit on a connection of the pool, with the engine's default
 * settings, and the one loop over multi-statement text (shared with units).
 *
 * @internal
 */
import * as Effect from "effect/Effect"
import * as SessionError from "../SessionError.js"
import type { ServerDriver } from "./driver/types.js"
import { type Command, type CommandSpec, type EngineImpl, interruptedError } from "./engine.js"
import type { PooledConn } from "./pool.js"

/**
 * The one loop over a text of several statements (`insert …; select LAST_INSERT_ID()`): each part is sent on its
 * own, in order, with its own values (`start` sends one and calls `next` with its rows); `done` gets the rows of a
 * single statement, or the list of every part's. Connections never run multi-statement text.
 *
 * @internal
 */
export const eachStatement = (
  driver: Pick<ServerDriver, "split">,
  spec: CommandSpec,
  start: (part: CommandSpec, next: (rows: unknown) => void) => void,
  done: (rows: unknown) => void
): void => {
  const parts = spec.method === "query" ? driver.split(spec.sql) : undefined
  if (parts === undefined) return start(spec, done)
  const results: Array<unknown> = []
  const all = spec.values ?? []
  let offset = 0
  const step = (k: number): void => {
    if (k === parts.length) return done(results)
    const part = parts[k]!
    const values = all.slice(offset, offset + part.count)
    offset += part.count
    const one: CommandSpec = {
      method: values.length > 0 ? "execute" : "query",
      sql: part.sql,
      values,
      rowsAsArray: spec.rowsAsArray,
      deadlineMs: spec.deadlineMs,
      internal: spec.internal
    }
    start(one, (rows) => {
      results.push(rows)
      step(k + 1)
    })
  }
  step(0)
}

/**
 * Runs one statement on a pooled connection outside any unit (autocommit, `reserve`): the engine's default
 * settings, values bound or refused before anything is sent. Interrupting it stops the statement
 * (`Command.cancel`); a caller that is uninterruptible anyway passes `interruptible: false`. An autocommit write
 * of an engine with replicas or nodes yields a causality token.
 *
 * @internal
 */
export const runAutocommit = (
  engine: EngineImpl,
  pc: PooledConn,
  spec: CommandSpec,
  interruptible = true
): Effect.Effect<unknown, SessionError.SessionError> => {
  const run = runOn(engine.ownerOf(pc), pc, spec, interruptible)
  if (engine.topology === undefined) return run
  return Effect.suspend(() => {
    pc.lastGtid = undefined
    return Effect.tap(run, () => engine.observeCommit(pc, pc.lastGtid))
  })
}

/** `runAutocommit` on the connection's own server. */
const runOn = (
  server: EngineImpl,
  pc: PooledConn,
  spec: CommandSpec,
  interruptible: boolean
): Effect.Effect<unknown, SessionError.SessionError> =>
  Effect.async<unknown, SessionError.SessionError>((resume) => {
    const bound = spec.values === undefined ? undefined : server.options.driver.bind(spec.values)
    if (bound instanceof SessionError.BindError) return resume(Effect.fail(bound))
    if (bound instanceof Error)
      return resume(Effect.fail(new SessionError.BindError({ index: 0, message: bound.message })))
    let command: Command | undefined
    let stopped = false
    const fail = (err: SessionError.SessionError) => resume(Effect.fail(err))
    const main = () =>
      eachStatement(
        server.options.driver,
        { ...spec, values: bound },
        (part, next) => {
          if (stopped) return fail(interruptedError())
          command = server.startCommand(pc, part, (err, rows) => (err ? fail(err) : next(rows)))
        },
        (rows) => resume(Effect.succeed(rows))
      )
    const set = server.applySettings(pc, server.defaultWant, main, fail)
    if (set !== undefined) command = set
    return interruptible
      ? Effect.suspend(() => {
          stopped = true
          return command === undefined ? Effect.void : command.cancel()
        })
      : undefined
  })
