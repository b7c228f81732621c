/**
 * `PgServer.replicated`: a primary and streaming replicas, each an embedded server (`pgServer.ts`) on loopback. A
 * replica's data directory is a `pg_basebackup` of the primary (`-R`: a standby that streams from it over its unix
 * socket), so it has the primary's roles, passwords and database; hot standby serves reads.
 *
 * @internal
 */
import * as Clock from "effect/Clock"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import type { PgServerError } from "./pgServerError.js"
import { PgServerNotInstalled, PgServerUnavailable } from "./pgServerError.js"
import { adminUsername, type EmbeddedFill, makeEmbedded, startFailed } from "./pgServer.js"
import * as Pg from "./serverPg.js"
import * as Proc from "./serverProcess.js"
import type * as Types from "./types.js"

// like pgServer.ts: waits and polls run on a real clock, also under @effect/vitest's TestClock
const liveClock = Clock.make()
const live = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> => Effect.withClock(self, liveClock)

/** One statement as the admin, on a fresh connection over TCP (servers stop and start: nothing is kept open). */
const adminQuery = <A = Record<string, unknown>>(
  server: Types.PgServerService,
  sql: string
): Effect.Effect<ReadonlyArray<A>, PgServerUnavailable> =>
  Effect.acquireUseRelease(
    Pg.connect({
      host: server.host,
      port: server.port,
      username: server.admin.username,
      password: Redacted.value(server.admin.password),
      database: server.database,
      connectTimeout: 5
    }),
    (conn) => Pg.query<A>(conn, sql, [Redacted.value(server.admin.password)]),
    Pg.close
  ).pipe(
    Effect.timeoutFail({
      duration: Duration.seconds(30),
      onTimeout: () => ({ code: undefined, message: "no answer within 30 seconds" })
    }),
    Effect.mapError(
      (e) =>
        new PgServerUnavailable({
          target: `postgres://${server.admin.username}:***@${server.host}:${server.port}`,
          code: e.code,
          reason: e.message
        })
    )
  )

/** `pg_basebackup` of the primary (over its unix socket, as the admin) into `dataDir`, configured as its standby. */
const basebackup =
  (primary: Types.PgServerService): EmbeddedFill["fill"] =>
  (o) =>
    Effect.gen(function* () {
      const failed = (reason: string, extra: { exitCode?: number | null; signal?: string | null } = {}) =>
        startFailed("initialize", reason, {
          dataDir: o.dataDir,
          logFile: o.logFile,
          logTail: Proc.readLogTail(o.logFile, 40),
          ...extra
        })
      const binary = o.install.pgBasebackup
      if (binary === undefined) {
        return yield* new PgServerNotInstalled({ missing: "pg_basebackup", searched: [], isRoot: Proc.isRoot() })
      }
      const socketDir = Option.getOrUndefined(primary.socketDir)!
      const args = ["-D", o.dataDir, "-h", socketDir, "-p", String(primary.port), "-U", adminUsername]
      // WAL streamed alongside, a fast checkpoint, standby.signal and primary_conninfo written (-R)
      args.push("-X", "stream", "-c", "fast", "-R", "--no-sync")
      const proc = yield* Proc.spawnLogged(binary, args, o.logFile, o.user).pipe(Effect.mapError((r) => failed(r)))
      const info = yield* Effect.interruptible(Deferred.await(proc.exited)).pipe(
        Effect.timeoutFail({
          duration: o.timeout,
          onTimeout: () => failed(`pg_basebackup did not finish within ${Duration.format(o.timeout)}`)
        }),
        Effect.onInterrupt(() => Proc.hardKill(proc)),
        Effect.tapError(() => Proc.hardKill(proc))
      )
      if (info.code !== 0) {
        return yield* failed(`pg_basebackup failed${info.error ? `: ${info.error}` : ""}`, {
          exitCode: info.code,
          signal: info.signal
        })
      }
    }) as Effect.Effect<void, ReturnType<typeof startFailed>>

const STATUS =
  "SELECT pg_is_in_recovery() AS rec, (SELECT status FROM pg_stat_wal_receiver) AS receiver, " +
  "(pg_get_wal_replay_pause_state() <> 'not paused') AS paused, pg_last_wal_replay_lsn()::text AS replay, " +
  "pg_last_wal_receive_lsn()::text AS receive"

const statusOf = (server: Types.PgServerService): Effect.Effect<Types.PgReplicationStatus, PgServerError> =>
  Effect.map(adminQuery<Record<string, unknown>>(server, STATUS), ([row]) => ({
    inRecovery: row?.rec === true,
    receiver: typeof row?.receiver === "string" ? row.receiver : null,
    replayPaused: row?.paused === true,
    replayLsn: typeof row?.replay === "string" ? row.replay : null,
    receiveLsn: typeof row?.receive === "string" ? row.receive : null
  }))

/** An LSN as a text the server reads back exactly (validated: it is written into the statement). */
const lsnLiteral = (lsn: string): string | undefined =>
  /^[0-9A-Fa-f]{1,8}\/[0-9A-Fa-f]{1,8}$/.test(lsn) ? lsn : undefined

/**
 * The primary's WAL position a replica can reach: the insert position (the tests' servers commit asynchronously), less
 * a page header it may point past (no record ends there).
 */
const PRIMARY_POSITION =
  "SELECT (CASE WHEN o.file_offset = 40 THEN l - 40::numeric WHEN o.file_offset % b = 24 THEN l - 24::numeric ELSE l END)::text AS lsn " +
  "FROM pg_current_wal_insert_lsn() AS l, pg_walfile_name_offset(l) AS o, CAST(current_setting('wal_block_size') AS int) AS b"

/** Polls until `check` holds (every 50 ms), up to `timeout`: whether it did. */
const pollUntil = (check: Effect.Effect<boolean, PgServerError>, timeout: Duration.DurationInput) =>
  live(
    Effect.gen(function* () {
      const deadline = Date.now() + Duration.toMillis(Duration.decode(timeout))
      for (;;) {
        if (yield* check) return true
        if (Date.now() >= deadline) return false
        yield* Effect.sleep(Duration.millis(50))
      }
    })
  )

const makeReplica = (server: Types.PgServerService, primary: Types.PgServerService): Types.PgReplica => {
  const waitForLsn = (lsn: string, timeout: Duration.DurationInput) => {
    const literal = lsnLiteral(lsn)
    if (literal === undefined) return Effect.die(new Error(`waitForLsn: not an LSN: ${JSON.stringify(lsn)}`))
    const applied = Effect.map(
      adminQuery<{ readonly ok: boolean | null }>(
        server,
        `SELECT pg_last_wal_replay_lsn() >= '${literal}'::pg_lsn AS ok`
      ),
      ([row]) => row?.ok === true
    )
    return pollUntil(applied, timeout)
  }
  const replica: Omit<Types.PgReplica, keyof Types.PgServerService> = {
    pauseReplay: Effect.zipRight(
      adminQuery(server, "SELECT pg_wal_replay_pause()"),
      Effect.asVoid(
        pollUntil(
          Effect.map(
            adminQuery<{ readonly s: string }>(server, "SELECT pg_get_wal_replay_pause_state() AS s"),
            ([r]) => r?.s === "paused"
          ),
          "10 seconds"
        )
      )
    ),
    resumeReplay: Effect.asVoid(adminQuery(server, "SELECT pg_wal_replay_resume()")),
    replicationStatus: statusOf(server),
    waitForLsn,
    waitCaughtUp: (timeout) =>
      Effect.flatMap(adminQuery<{ readonly lsn: string }>(primary, PRIMARY_POSITION), ([row]) =>
        waitForLsn(String(row?.lsn), timeout)
      )
  }
  // the server's own members (its `pid` getter too), then the replica's
  return Object.defineProperties({ ...replica }, Object.getOwnPropertyDescriptors(server)) as Types.PgReplica
}

/** @internal */
export const replicated = (
  options: Types.PgReplicatedOptions = {}
): Effect.Effect<Types.PgReplicated, PgServerError, Scope.Scope> =>
  live(
    Effect.gen(function* () {
      const count = options.replicas ?? 2
      if (!Number.isInteger(count) || count < 1 || count > 8) {
        return yield* startFailed("prepare", `replicas must be an integer from 1 to 8, got ${count}`)
      }
      const startTimeout = Duration.decode(options.startTimeout ?? Duration.seconds(60))
      const { replicas: _, ...base } = options
      // commits are synchronous on the primary (with fsync off, cheap): a commit's WAL is flushed, and so sent to
      // the replicas, when it answers, not up to wal_writer_delay (200 ms) later; a unit may still SET LOCAL
      // synchronous_commit = off
      const primary = yield* makeEmbedded({
        ...base,
        serverArgs: ["-c", "synchronous_commit=on", ...(options.serverArgs ?? [])]
      })
      // a replica has the primary's roles: the same passwords
      const password = Redacted.value(primary.password)
      const adminPassword = Redacted.value(primary.admin.password)
      const fill: EmbeddedFill = { password, adminPassword, fill: basebackup(primary) }
      const servers = yield* Effect.all(
        Array.from({ length: count }, () => makeEmbedded(base, fill)),
        { concurrency: "unbounded" }
      )
      const replicas = servers.map((server) => makeReplica(server, primary))
      yield* Effect.forEach(
        replicas,
        (replica) =>
          Effect.flatMap(
            pollUntil(
              Effect.map(
                Effect.orElseSucceed(replica.replicationStatus, () => undefined),
                (s) => s?.inRecovery === true && s.receiver === "streaming"
              ),
              startTimeout
            ),
            (streaming) =>
              streaming
                ? Effect.void
                : startFailed(
                    "bootstrap",
                    `replica on port ${replica.port} did not stream within ${Duration.format(startTimeout)}`,
                    {
                      dataDir: Option.getOrUndefined(replica.dataDir),
                      logFile: Option.getOrUndefined(replica.logFile),
                      logTail: Proc.readLogTail(Option.getOrUndefined(replica.logFile), 40)
                    }
                  )
          ),
        { discard: true }
      )
      return { primary, replicas, servers: [primary, ...replicas] }
    })
  )
