/**
 * Supervision of the embedded database: when its process dies, it is started again (same port, same data) with a
 * bounded exponential backoff; every step is logged and `/health` reports the state. The Engine reconnects by
 * itself, so the ledger carries on once the server is back (requests meanwhile get `unavailable`).
 */
import type { MysqlServer } from "@sessionfx/testing"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"

export interface Status {
  /** `external`: DATABASE_URL (or MYSQL_URL), not ours to restart. */
  readonly kind: "embedded" | "external"
  readonly state: "running" | "restarting"
  /** Restarts since the ledger started. */
  readonly restarts: number
  readonly lastRestartAt: string | null
}

export class DatabaseSupervisor extends Context.Tag("ledger/DatabaseSupervisor")<
  DatabaseSupervisor,
  { readonly status: Effect.Effect<Status> }
>() {}

export const external = Layer.succeed(DatabaseSupervisor, {
  status: Effect.succeed<Status>({ kind: "external", state: "running", restarts: 0, lastRestartAt: null })
})

export interface Options {
  /** How often the process is looked at. */
  readonly every?: Duration.DurationInput | undefined
  /** The first restart delay after a failed start; doubles up to `maxBackoff`. */
  readonly backoff?: Duration.DurationInput | undefined
  readonly maxBackoff?: Duration.DurationInput | undefined
}

/** Watches `server` for as long as the scope lasts (the watcher stops before the server does). */
export const make = (server: MysqlServer.MysqlServer.Service, options: Options = {}) =>
  Effect.gen(function* () {
    const status = {
      kind: server.kind,
      state: "running" as Status["state"],
      restarts: 0,
      lastRestartAt: null as string | null
    }
    if (server.kind !== "embedded") return { status: Effect.sync(() => ({ ...status })) }
    const every = options.every ?? "250 millis"
    const retry = Schedule.exponential(options.backoff ?? "200 millis").pipe(
      Schedule.union(Schedule.spaced(options.maxBackoff ?? "5 seconds"))
    )
    const restart = Effect.gen(function* () {
      status.state = "restarting"
      yield* Effect.logError("embedded database is down: restarting it")
      let attempt = 0
      yield* server.start.pipe(
        Effect.tapError((e) =>
          Effect.logWarning(`embedded database restart attempt ${++attempt} failed; backing off`, e.message)
        ),
        Effect.retry(retry)
      )
      status.restarts++
      status.lastRestartAt = new Date().toISOString()
      status.state = "running"
      yield* Effect.logWarning("embedded database restarted").pipe(
        Effect.annotateLogs({ restarts: status.restarts, pid: Option.getOrElse(server.pid, () => 0) })
      )
    })
    yield* Effect.suspend(() => (Option.isNone(server.pid) ? restart : Effect.void)).pipe(
      Effect.repeat(Schedule.spaced(every)),
      Effect.forkScoped
    )
    return { status: Effect.sync(() => ({ ...status })) }
  })
