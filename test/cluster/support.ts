import * as SessionError from "@sessionfx/session/SessionError"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Metric from "effect/Metric"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import * as Mysql from "mysql2/promise"

/** A plain mysql2 connection for the scope (the cluster tests use the driver directly; see docs/scale-out.md). */
export const connect = (url: Redacted.Redacted<string>): Effect.Effect<Mysql.Connection, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      const conn = await Mysql.createConnection({ uri: Redacted.value(url), connectTimeout: 10_000 })
      conn.on("error", () => {})
      return conn
    }),
    (conn) => Effect.sync(() => conn.destroy())
  )

/** The driver's error, kept as a typed failure (not a defect), so a test can assert its errno and classification. */
export class DriverError extends Data.TaggedError("DriverError")<{
  readonly errno: number | undefined
  readonly code: string | undefined
  readonly message: string
  readonly cause: unknown
}> {}

export const query = <A = Record<string, unknown>>(
  conn: Mysql.Connection,
  sql: string,
  values: ReadonlyArray<unknown> = []
): Effect.Effect<A, DriverError> =>
  Effect.tryPromise({
    try: async () => (await conn.query(sql, values as Array<unknown>))[0] as A,
    catch: (cause) => {
      const e = cause as { errno?: number; code?: string; sqlMessage?: string; message?: string }
      return new DriverError({
        errno: e.errno,
        code: e.code,
        message: e.sqlMessage ?? e.message ?? String(cause),
        cause
      })
    }
  })

export const rows = <A = Record<string, unknown>>(
  conn: Mysql.Connection,
  sql: string,
  values: ReadonlyArray<unknown> = []
): Effect.Effect<ReadonlyArray<A>, DriverError> => query<ReadonlyArray<A>>(conn, sql, values)

/** The GTID of the statement's commit, from its OK packet (needs `session_track_system_variables='last_gtid'`). */
export const gtidOf = (header: Mysql.ResultSetHeader): string | undefined => {
  const changes = (header as { stateChanges?: { systemVariables?: Record<string, string> } }).stateChanges
  return changes?.systemVariables?.last_gtid
}

export const classify = (error: DriverError): SessionError.SessionError => SessionError.classify(error.cause)

/**
 * Polls `probe` (every `every`, default 100 ms) until `ok` holds and returns that value; past `timeout` (default 10
 * seconds) it dies naming `what` and the last value seen. A polling wait with a deadline, never a bare sleep.
 */
export const waitUntil = <A, E, R>(
  what: string,
  probe: Effect.Effect<A, E, R>,
  ok: (a: A) => boolean,
  options: { readonly timeout?: Duration.DurationInput; readonly every?: Duration.DurationInput } = {}
): Effect.Effect<A, E, R> =>
  Effect.gen(function* () {
    const timeout = Duration.decode(options.timeout ?? "10 seconds")
    const deadline = Date.now() + Duration.toMillis(timeout)
    for (;;) {
      const a = yield* probe
      if (ok(a)) return a
      if (Date.now() > deadline) {
        return yield* Effect.dieMessage(`${what}: not within ${Duration.format(timeout)}; last seen: ${describe(a)}`)
      }
      yield* Effect.sleep(options.every ?? "100 millis")
    }
  })

const describe = (u: unknown): string => {
  try {
    return JSON.stringify(u)
  } catch {
    return String(u)
  }
}

/** The sum of a metric's `count` (a counter's value, a histogram's number of samples) over its series with `tags`. */
export const metricCount = (name: string, tags: Record<string, string>) =>
  Effect.map(Metric.snapshot, (pairs) =>
    pairs
      .filter(
        (p) =>
          p.metricKey.name === name &&
          Object.entries(tags).every(([k, v]) => p.metricKey.tags.some((t) => t.key === k && t.value === v))
      )
      .reduce((sum, p) => sum + Number((p.metricState as { count?: number }).count ?? 0), 0)
  )

/** The names of the metrics that have a series carrying all of `tags`. */
export const metricNamesWith = (tags: Record<string, string>) =>
  Effect.map(
    Metric.snapshot,
    (pairs) =>
      new Set(
        pairs
          .filter((p) =>
            Object.entries(tags).every(([k, v]) => p.metricKey.tags.some((t) => t.key === k && t.value === v))
          )
          .map((p) => p.metricKey.name)
      )
  )
