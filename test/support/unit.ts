/**
 * Shared helpers of the adversarial unit-of-work suites (atomicity, isolation, keyed, streams): an Engine per test
 * against the suite's private server, checks of the server's state from connections of their own, and readers of
 * a failure's tag through `SqlError.cause`.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { assert } from "@effect/vitest"
import { Engine } from "@sessionfx/session"
import { MysqlServer } from "@sessionfx/testing"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Mysql from "mysql2/promise"
import * as Admin from "./admin.js"

export type Server = Admin.Server

export const sql = SqlClient.SqlClient

/** A private server started with `args` (after the harness defaults). */
export const serverLayer = (args: ReadonlyArray<string> = []) => MysqlServer.layer({ serverArgs: args })

/** The layer options every suite uses: real clock, one server for the suite. */
export const suiteOptions = { timeout: 120_000, excludeTestServices: true } as const

/** An Engine (and its autocommit `SqlClient`) against the suite's server, for the scope of one test. */
export const engineLayer = (options: Partial<Engine.EngineOptions> = {}) =>
  Layer.unwrapEffect(
    Effect.map(MysqlServer.MysqlServer, (server) =>
      Engine.layer({
        connectTimeout: "5 seconds",
        killGrace: "1 second",
        ...options,
        url: options.url ?? server.url,
        pool: { size: 2, acquireTimeout: "10 seconds", ...options.pool }
      } as Engine.EngineOptions)
    )
  )

/** Runs `effect` with an Engine of its own (closed when it ends). */
export const withEngine = <A, E, R>(effect: Effect.Effect<A, E, R>, options: Partial<Engine.EngineOptions> = {}) =>
  Effect.provide(effect, engineLayer(options))

export const theServer = MysqlServer.MysqlServer

/** One statement as the superuser, on a connection of its own. */
export const adminQuery = <A = Record<string, any>>(statement: string, params: ReadonlyArray<unknown> = []) =>
  Effect.flatMap(MysqlServer.MysqlServer, (server) => Effect.orDie(Admin.query<A>(server, statement, params)))

/** Committed rows of `table` matching `where`, as the server sees them (superuser, own connection). */
export const count = (table: string, where = "1 = 1", params: ReadonlyArray<unknown> = []) =>
  Effect.map(adminQuery<{ n: string }>(`SELECT COUNT(*) AS n FROM ${table} WHERE ${where}`, params), (rows) =>
    Number(rows[0]?.n ?? 0)
  )

/** Rows of `table` with `id`, committed. */
export const countId = (table: string, id: number | string) => count(table, "id = ?", [id])

/** Statements the server is running now whose text holds `marker` (not counting this probe). */
export const running = (marker: string) =>
  Effect.map(
    adminQuery<{ n: string }>(
      "SELECT COUNT(*) AS n FROM information_schema.processlist WHERE info LIKE ? AND info NOT LIKE '%processlist%'",
      [`%${marker}%`]
    ),
    (rows) => Number(rows[0]?.n ?? 0)
  )

/** A global status counter (`SHOW GLOBAL STATUS`). */
export const globalStatus = (name: string) =>
  Effect.map(adminQuery<{ Value: string }>(`SHOW GLOBAL STATUS LIKE ?`, [name]), (rows) => Number(rows[0]?.Value ?? 0))

/** A connection as the application user, outside any pool, held for the scope. */
export const appConnection = Effect.flatMap(MysqlServer.MysqlServer, (server) =>
  Effect.acquireRelease(
    Effect.promise(() =>
      Mysql.createConnection({
        uri: Redacted.value(server.url),
        supportBigNumbers: true,
        bigNumberStrings: true,
        connectTimeout: 5_000
      })
    ),
    (conn) => Effect.sync(() => conn.destroy())
  )
)

/**
 * Polls `check` (every `everyMs`, default 10 ms, up to `seconds`) until it holds: for state the test cannot be told
 * about. Polls of `information_schema.innodb_trx` need `trxPoll`: InnoDB refreshes that table's cache only after
 * 100 ms without a read, so faster polling keeps reading the same stale snapshot.
 */
export const eventually = <E, R>(check: Effect.Effect<boolean, E, R>, what: string, seconds = 10, everyMs = 10) =>
  check.pipe(
    Effect.repeat({ schedule: Schedule.spaced(`${everyMs} millis`), until: (ok) => ok }),
    Effect.timeoutFail({
      duration: `${seconds} seconds`,
      onTimeout: () => new Error(`timed out waiting for: ${what}`)
    }),
    Effect.orDie
  )

/** The `_tag` of an error, or `String(e)`. */
export const tagOf = (e: unknown): string =>
  typeof e === "object" && e !== null && typeof (e as any)._tag === "string" ? (e as any)._tag : String(e)

/** The innermost tag: through `SqlError.cause` (how a unit's statements report sessionfx errors). */
export const rootTag = (e: unknown): string => {
  let x: any = e
  while (x && x._tag === "SqlError" && x.cause && typeof x.cause === "object" && typeof x.cause._tag === "string") {
    x = x.cause
  }
  return tagOf(x)
}

/** The innermost tagged error (see `rootTag`). */
export const rootError = (e: unknown): any => {
  let x: any = e
  while (x && x._tag === "SqlError" && x.cause && typeof x.cause === "object" && typeof x.cause._tag === "string") {
    x = x.cause
  }
  return x
}

/** Describes an exit for a failure message. */
export const show = (exit: Exit.Exit<unknown, unknown>): string =>
  Exit.isSuccess(exit) ? `success(${safeJson(exit.value)})` : Cause.pretty(exit.cause).split("\n").slice(0, 4).join(" ")

const safeJson = (u: unknown) => {
  try {
    return JSON.stringify(u, (_k, v) => (typeof v === "bigint" ? `${v}n` : v))
  } catch {
    return String(u)
  }
}

/** The typed failure of `exit`; fails the test (saying what happened instead) when it succeeded or died. */
export const failureOf = <A, E>(exit: Exit.Exit<A, E>, what: string): E => {
  if (Exit.isSuccess(exit)) return assert.fail(`${what}: expected a typed failure, got ${show(exit)}`)
  const f = Cause.failureOption(exit.cause)
  if (Option.isNone(f)) return assert.fail(`${what}: expected a typed failure, got ${show(exit)}`)
  return f.value
}

/** Asserts that `exit` failed with a typed error whose (root) tag is one of `tags`; returns that error. */
export const expectTag = <A, E>(exit: Exit.Exit<A, E>, tags: ReadonlyArray<string>, what: string): any => {
  const e = failureOf(exit, what)
  const tag = rootTag(e)
  assert.include(tags, tag, `${what}: expected ${tags.join(" | ")}, got ${tag}: ${String((e as any)?.message ?? e)}`)
  return rootError(e)
}

/** The sum of a counter's count over the series tagged with `engine` (and `extra` tags when given). */
export const counter = (name: string, engine: string, extra: Record<string, string> = {}) =>
  Effect.map(Metric.snapshot, (pairs) =>
    pairs
      .filter(
        (p) =>
          p.metricKey.name === name &&
          p.metricKey.tags.some((t) => t.key === "engine" && t.value === engine) &&
          Object.entries(extra).every(([k, v]) => p.metricKey.tags.some((t) => t.key === k && t.value === v))
      )
      .reduce((sum, p) => sum + Number((p.metricState as { count?: number }).count ?? 0), 0)
  )

/** The poll interval for `information_schema.innodb_trx` (see `eventually`). */
export const trxPoll = 150

/** Ids unique within a file (each file has a fresh server). */
let next = 0
export const freshId = () => ++next

/** Runs `n` repetitions of a racy scenario, failing with the repetition number in the message. */
export const repeat = <E, R>(n: number, body: (i: number) => Effect.Effect<void, E, R>) =>
  Effect.forEach(
    Array.from({ length: n }, (_, i) => i),
    (i) =>
      Effect.catchAllDefect(body(i), (d) =>
        Effect.dieMessage(`repetition ${i + 1}/${n}: ${String((d as any)?.message ?? d)}`)
      )
  ).pipe(Effect.asVoid)

/**
 * `effect`, or a defect saying `what` hung after `ms`: a hang is reported as a failure of its own, quickly, and the
 * hung fiber is left behind (disconnected) rather than awaited.
 */
export const bounded = <A, E, R>(effect: Effect.Effect<A, E, R>, ms: number, what: string) =>
  Effect.disconnect(effect).pipe(Effect.timeoutFail({ duration: ms, onTimeout: () => new Hung({ what, ms }) }))

/** A scenario that did not end within its bound. */
export class Hung extends Error {
  readonly _tag = "Hung"
  constructor(readonly info: { readonly what: string; readonly ms: number }) {
    super(`${info.what}: no answer within ${info.ms} ms (hung)`)
  }
}
