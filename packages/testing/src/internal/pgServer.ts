import * as ChildProcess from "node:child_process"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as Clock from "effect/Clock"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import type { PgServerError } from "./pgServerError.js"
import {
  PgServerInvalidUrl,
  PgServerNotInstalled,
  PgServerStartFailed,
  PgServerUnavailable,
  PgServerUnsupported
} from "./pgServerError.js"
import { hardKillTree } from "./processTree.js"
import * as Pg from "./serverPg.js"
import * as Proc from "./serverProcess.js"
import { describeTarget, envUrl as readEnvUrl, formatUrl, parseTarget } from "./serverUrl.js"
import type { ConnectionTarget, UrlDialect } from "./serverUrl.js"
import type { PgExternalOptions, PgServerOptions, PgServerService } from "./types.js"

// the layer is often built under @effect/vitest's TestClock: every timeout and poll interval here runs on a real clock
const liveClock = Clock.make()
const live = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> => Effect.withClock(self, liveClock)

/** @internal */
export const adminUsername = "sfx_admin"
const loopback = "127.0.0.1"
const scheme = "postgres"
const pgDialect: UrlDialect = { schemes: ["postgres", "postgresql"], defaultPort: 5432 }

/** @internal */
export const tempPrefix = "sessionfx-pg-"

const randomPassword = (): string => Crypto.randomBytes(18).toString("base64url")

type StartFailedFields = ConstructorParameters<typeof PgServerStartFailed>[0]

/** @internal */
export const startFailed = (
  phase: StartFailedFields["phase"],
  reason: string,
  extra: Partial<StartFailedFields> = {}
) =>
  new PgServerStartFailed({
    phase,
    reason,
    exitCode: null,
    signal: null,
    dataDir: undefined,
    logFile: undefined,
    logTail: [],
    ...extra
  })

const unsupported = (operation: string) =>
  Effect.fail(
    new PgServerUnsupported({
      operation,
      reason: "the server is external (PG_URL); only an embedded server can be stopped, started or restarted"
    })
  )

// -----------------------------------------------------------------------------
// installation
// -----------------------------------------------------------------------------

/** @internal */
export interface Installation {
  readonly postgres: string
  readonly initdb: string
  /** `pg_basebackup` of the same directory, when installed (replicas need it). */
  readonly pgBasebackup: string | undefined
}

/** Debian's `/usr/lib/postgresql/<version>/bin`, newest first. */
const debianBinDirs = (): ReadonlyArray<string> => {
  try {
    return Fs.readdirSync("/usr/lib/postgresql")
      .filter((version) => /^\d+$/.test(version))
      .sort((a, b) => Number(b) - Number(a))
      .map((version) => Path.join("/usr/lib/postgresql", version, "bin"))
  } catch {
    return []
  }
}

const defaultSearchPath = (): ReadonlyArray<string> =>
  Proc.dedupe([...Proc.defaultSearchPath(), ...debianBinDirs(), "/usr/local/pgsql/bin"])

const realpath = (file: string): string => {
  try {
    return Fs.realpathSync(file)
  } catch {
    return file
  }
}

/** The first directory with both `postgres` and `initdb` (a server and its own initdb, of one version). */
const findInstallation = (
  searchPath: ReadonlyArray<string> | undefined
): Effect.Effect<Installation, PgServerNotInstalled> =>
  Effect.suspend(() => {
    const dirs = Proc.dedupe(searchPath ?? defaultSearchPath())
    for (const dir of dirs) {
      const postgres = Proc.findExecutable(["postgres"], [dir])
      const initdb = Proc.findExecutable(["initdb"], [dir])
      if (postgres !== undefined && initdb !== undefined) {
        // pg_basebackup beside the server's real binary (a symlinked postgres names the version's directory)
        const own = Path.dirname(realpath(postgres))
        const pgBasebackup = Proc.findExecutable(["pg_basebackup"], Proc.dedupe([own, dir]))
        return Effect.succeed({ postgres, initdb, pgBasebackup })
      }
    }
    return Effect.fail(
      new PgServerNotInstalled({ missing: "postgres and initdb", searched: dirs, isRoot: Proc.isRoot() })
    )
  })

/** The OS user the server runs as: PostgreSQL refuses to run as root. @internal */
export interface OsUser {
  readonly name: string
  readonly uid: number
  readonly gid: number
}

const lookupUser = (name: string): OsUser | undefined => {
  try {
    for (const line of Fs.readFileSync("/etc/passwd", "utf8").split("\n")) {
      const [user, , uid, gid] = line.split(":")
      if (user === name && uid !== undefined && gid !== undefined) {
        return { name, uid: Number(uid), gid: Number(gid) }
      }
    }
  } catch {
    // no /etc/passwd
  }
  return undefined
}

const serverUser = (): Effect.Effect<OsUser | undefined, PgServerStartFailed> =>
  Effect.suspend(() => {
    if (!Proc.isRoot()) {
      return Effect.succeed(undefined)
    }
    const user = lookupUser("postgres") ?? lookupUser("nobody")
    return user !== undefined
      ? Effect.succeed(user)
      : Effect.fail(
          startFailed("prepare", "running as root, and there is no postgres or nobody user to run the server as")
        )
  })

const chownTo = (user: OsUser, paths: ReadonlyArray<string>): Effect.Effect<void, PgServerStartFailed> =>
  Effect.async<void, PgServerStartFailed>((resume) => {
    const child = ChildProcess.execFile(
      "chown",
      ["-R", `${user.uid}:${user.gid}`, ...paths],
      { timeout: 30_000 },
      (e) => resume(e ? Effect.fail(startFailed("prepare", `chown -R ${user.name} failed: ${e.message}`)) : Effect.void)
    )
    return Effect.sync(() => child.kill("SIGKILL"))
  })

// -----------------------------------------------------------------------------
// server settings
// -----------------------------------------------------------------------------

/**
 * A small, fast server for tests: durability is traded for speed (`fsync`, `synchronous_commit` and
 * `full_page_writes` off: a crash of the machine may lose or corrupt data; a crash of the server process (`kill`) may
 * lose the last acknowledged commits, whose WAL was still in the server's memory — a test that crashes the server
 * under load passes `serverArgs: ["-c", "synchronous_commit=on"]`).
 */
const tuningArgs: ReadonlyArray<string> = [
  "fsync=off",
  "synchronous_commit=off",
  "full_page_writes=off",
  "max_connections=200",
  "shared_buffers=32MB",
  "huge_pages=off",
  "dynamic_shared_memory_type=mmap",
  "unix_socket_permissions=0700",
  "logging_collector=off"
].flatMap((setting) => ["-c", setting])

const serverArgs = (options: {
  readonly dataDir: string
  readonly socketDir: string
  readonly port: number
  readonly extra: ReadonlyArray<string>
}): ReadonlyArray<string> => [
  "-D",
  options.dataDir,
  "-p",
  String(options.port),
  "-k",
  options.socketDir,
  "-c",
  `listen_addresses=${loopback}`,
  ...tuningArgs,
  ...options.extra
]

const initdbArgs = (dataDir: string): ReadonlyArray<string> => [
  "-D",
  dataDir,
  "-U",
  adminUsername,
  // the unix socket lives in a directory only the server's user can enter; TCP needs a password
  "--auth-local=trust",
  "--auth-host=scram-sha-256",
  "--no-sync",
  "--no-instructions",
  "-E",
  "UTF8",
  "--no-locale"
]

const isPortInUse = (lines: ReadonlyArray<string>): boolean =>
  lines.some((line) => /address already in use|could not bind/i.test(line))

const socketDirUsable = (dir: string): boolean => Buffer.byteLength(Path.join(dir, ".s.PGSQL.65535")) <= 100

const validName = (kind: string, value: string): Effect.Effect<string, PgServerStartFailed> =>
  /^[a-z_][a-z0-9_]{0,62}$/.test(value) && !value.startsWith("pg_")
    ? Effect.succeed(value)
    : Effect.fail(startFailed("prepare", `invalid ${kind} "${value}" (lower case letters, digits and _)`))

// -----------------------------------------------------------------------------
// embedded
// -----------------------------------------------------------------------------

interface Layout {
  readonly base: string
  readonly dataDir: string
  readonly socketDir: string
  readonly logFile: string
  readonly initLog: string
  readonly pidFile: string
  /** Directories to remove with the server */
  readonly dirs: ReadonlyArray<string>
}

const makeLayout = (root: string): Effect.Effect<Layout, PgServerStartFailed, Scope.Scope> =>
  Effect.gen(function* () {
    const tempDir = (parent: string) =>
      Effect.acquireRelease(
        Effect.try({
          try: () => {
            const dir = Fs.mkdtempSync(Path.join(parent, tempPrefix))
            // sweepStale removes it once this process is gone
            Fs.writeFileSync(
              Path.join(dir, Proc.ownerFile),
              JSON.stringify({ ownerPid: process.pid, createdAt: new Date().toISOString() })
            )
            return dir
          },
          catch: (error) => startFailed("prepare", `cannot create a directory in ${parent}: ${String(error)}`)
        }),
        (dir) => Proc.removeDir(dir)
      )
    const base = yield* tempDir(root)
    const socketDir = socketDirUsable(base) ? base : yield* tempDir("/tmp")
    return {
      base,
      dataDir: Path.join(base, "data"),
      socketDir,
      logFile: Path.join(base, "server.log"),
      initLog: Path.join(base, "initdb.log"),
      pidFile: Path.join(base, Proc.serverPidFile),
      dirs: socketDir === base ? [base] : [base, socketDir]
    }
  })

const initdb = (
  install: Installation,
  layout: Layout,
  user: OsUser | undefined,
  timeout: Duration.Duration
): Effect.Effect<void, PgServerStartFailed> =>
  Effect.gen(function* () {
    const failed = (reason: string, extra: Partial<StartFailedFields> = {}) =>
      startFailed("initialize", reason, { dataDir: layout.dataDir, logFile: layout.initLog, ...extra })
    const proc = yield* Proc.spawnLogged(install.initdb, initdbArgs(layout.dataDir), layout.initLog, user).pipe(
      Effect.mapError((reason) => failed(reason))
    )
    const info = yield* Effect.interruptible(Deferred.await(proc.exited)).pipe(
      Effect.timeoutFail({
        duration: timeout,
        onTimeout: () => failed(`initdb did not finish within ${Duration.format(timeout)}`)
      }),
      Effect.onInterrupt(() => Proc.hardKill(proc)),
      Effect.tapError(() => Proc.hardKill(proc))
    )
    if (info.code !== 0) {
      return yield* failed(`initdb failed${info.error ? `: ${info.error}` : ""}`, {
        exitCode: info.code,
        signal: info.signal,
        logTail: Proc.readLogTail(layout.initLog)
      })
    }
  })

const bootstrap = (
  layout: Layout,
  port: number,
  options: {
    readonly database: string
    readonly username: string
    readonly password: string
    readonly adminPassword: string
  }
): Effect.Effect<string, Pg.PgFailure> => {
  const secrets = [options.password, options.adminPassword]
  const db = Pg.identifier(options.database)
  const app = Pg.identifier(options.username)
  const run = (database: string, statements: ReadonlyArray<string>) =>
    Effect.acquireUseRelease(
      Pg.connect({ host: layout.socketDir, port, username: adminUsername, database }),
      (conn) => Effect.forEach(statements, (statement) => Pg.query(conn, statement, secrets)),
      Pg.close
    )
  return Effect.gen(function* () {
    yield* run("postgres", [
      `ALTER ROLE ${Pg.identifier(adminUsername)} PASSWORD ${Pg.literal(options.adminPassword)}`,
      `CREATE ROLE ${app} LOGIN PASSWORD ${Pg.literal(options.password)} ` +
        "NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS",
      `CREATE DATABASE ${db}`,
      `REVOKE ALL ON DATABASE ${db} FROM PUBLIC`,
      `GRANT CONNECT, TEMPORARY ON DATABASE ${db} TO ${app}`,
      "REVOKE CONNECT ON DATABASE postgres FROM PUBLIC",
      "REVOKE CONNECT ON DATABASE template1 FROM PUBLIC"
    ])
    const results = yield* run(options.database, [
      `GRANT USAGE, CREATE ON SCHEMA public TO ${app}`,
      "SHOW server_version"
    ])
    const rows = results[results.length - 1] as ReadonlyArray<{ readonly server_version?: unknown }> | undefined
    return String(rows?.[0]?.server_version ?? "")
  })
}

/**
 * How `makeEmbedded` fills a new data directory when it is not `initdb` and the bootstrap: a replica's is a base
 * backup of its primary (`pgReplicated.ts`), with the primary's roles and passwords.
 *
 * @internal
 */
export interface EmbeddedFill {
  readonly password: string
  readonly adminPassword: string
  /** Fills `dataDir` (it does not exist yet), as `user`, logging to `logFile`. */
  readonly fill: (o: {
    readonly install: Installation
    readonly dataDir: string
    readonly logFile: string
    readonly user: OsUser | undefined
    readonly timeout: Duration.Duration
  }) => Effect.Effect<void, PgServerStartFailed>
}

/** `SHOW server_version`, as the admin over the socket (a replica: no bootstrap). */
const versionOf = (layout: Layout, port: number): Effect.Effect<string, Pg.PgFailure> =>
  Effect.acquireUseRelease(
    Pg.connect({ host: layout.socketDir, port, username: adminUsername, database: "postgres" }),
    (conn) => Pg.query<{ readonly server_version?: unknown }>(conn, "SHOW server_version"),
    Pg.close
  ).pipe(Effect.map((rows) => String(rows[0]?.server_version ?? "")))

/** @internal */
export const makeEmbedded = (
  options: PgServerOptions = {},
  filled?: EmbeddedFill
): Effect.Effect<PgServerService, PgServerError, Scope.Scope> =>
  live(
    Effect.gen(function* () {
      const database = yield* validName("database name", options.database ?? "app")
      const username = yield* validName("role name", options.username ?? "app")
      if (username === adminUsername || username === "postgres") {
        return yield* startFailed("prepare", `the application role cannot be "${username}"`)
      }
      const startTimeout = Duration.decode(options.startTimeout ?? Duration.seconds(60))
      const stopTimeout = Duration.decode(options.stopTimeout ?? Duration.seconds(10))
      const root = Path.resolve(options.tmpDir ?? Os.tmpdir())

      const install = yield* findInstallation(options.searchPath)
      const user = yield* serverUser()
      yield* Proc.sweepStale(root, tempPrefix)
      const layout = yield* makeLayout(root)
      const { dataDir, logFile, pidFile } = layout
      for (const file of [logFile, layout.initLog]) {
        Fs.closeSync(Fs.openSync(file, "a", 0o600))
      }
      if (user !== undefined) {
        yield* chownTo(user, layout.dirs)
      }
      if (filled === undefined) yield* initdb(install, layout, user, startTimeout)
      else yield* filled.fill({ install, dataDir, logFile: layout.initLog, user, timeout: startTimeout })

      const password = filled?.password ?? randomPassword()
      const adminPassword = filled?.adminPassword ?? randomPassword()
      const fixedPort = options.port !== undefined
      let port =
        options.port ??
        (yield* Proc.freePort.pipe(Effect.mapError((reason) => startFailed("prepare", `no free port: ${reason}`))))

      // --- process control ---------------------------------------------------------------------------------
      // finalizers run in reverse order: the server stops first, then the watchdog goes, then the directories
      const watchdog = yield* Proc.spawnWatchdog(pidFile, layout.dirs, "sessionfx-pg-watchdog")
      yield* Effect.addFinalizer(() =>
        Option.match(watchdog, { onNone: () => Effect.void, onSome: (proc) => live(Proc.hardKill(proc)) })
      )

      let current: Proc.ServerProcess | undefined
      let closed = false
      const lock = yield* Effect.makeSemaphore(1)

      const stopCurrent = (graceful: boolean): Effect.Effect<void> =>
        Effect.suspend(() => {
          const proc = current
          if (proc === undefined) {
            return Effect.void
          }
          // SIGINT is PostgreSQL's fast shutdown: open transactions roll back and clients are disconnected
          return (graceful ? Proc.terminate(proc, stopTimeout, "SIGINT") : hardKillTree(proc)).pipe(
            Effect.zipRight(
              Effect.sync(() => {
                current = undefined
                Fs.rmSync(pidFile, { force: true })
              })
            )
          )
        })

      yield* Effect.addFinalizer(() =>
        live(
          lock.withPermits(1)(
            Effect.suspend(() => {
              closed = true
              return stopCurrent(true)
            })
          )
        )
      )

      const spawnOnce = (onPort: number): Effect.Effect<void, PgServerStartFailed> =>
        Effect.gen(function* () {
          if (closed) {
            return yield* startFailed("start", "the server's scope is closed", { dataDir })
          }
          const logOffset = Proc.fileSize(logFile)
          const args = serverArgs({
            dataDir,
            socketDir: layout.socketDir,
            port: onPort,
            extra: options.serverArgs ?? []
          })
          const proc = yield* Proc.spawnLogged(install.postgres, args, logFile, user).pipe(
            Effect.mapError((reason) => startFailed("start", reason, { dataDir, logFile }))
          )
          current = proc
          Fs.writeFileSync(pidFile, String(proc.pid))

          const ready = Pg.connect({
            host: layout.socketDir,
            port: onPort,
            username: adminUsername,
            database: "postgres"
          }).pipe(
            Effect.flatMap(Pg.close),
            Effect.retry({
              schedule: Schedule.spaced(Duration.millis(25)),
              // refused or no socket yet, or 57P03 (starting up): wait; a refused login will not get better
              while: (error) => error.code !== "28P01" && error.code !== "28000"
            }),
            Effect.mapError((error) => `cannot connect over ${layout.socketDir}: ${error.message}`)
          )
          const exited = Deferred.await(proc.exited).pipe(
            Effect.flatMap((info) =>
              Effect.fail(`the server exited during startup${info.error ? ` (${info.error})` : ""}`)
            )
          )
          const outcome = yield* Effect.interruptible(Effect.raceFirst(ready, exited)).pipe(
            Effect.timeoutFail({
              duration: startTimeout,
              onTimeout: () => `the server did not accept connections within ${Duration.format(startTimeout)}`
            }),
            Effect.either
          )
          if (Either.isRight(outcome)) {
            return
          }
          yield* stopCurrent(false)
          const info = Option.getOrUndefined(yield* Deferred.poll(proc.exited))
          const exit = info === undefined ? undefined : yield* info
          return yield* startFailed("start", outcome.left, {
            exitCode: exit?.code ?? null,
            signal: exit?.signal ?? null,
            dataDir,
            logFile,
            logTail: Proc.readLogTail(logFile, 40, logOffset)
          })
        })

      const startServer = (retryPort: boolean): Effect.Effect<void, PgServerStartFailed> =>
        Effect.gen(function* () {
          for (let attempt = 1; ; attempt++) {
            const result = yield* Effect.either(spawnOnce(port))
            if (Either.isRight(result)) {
              return
            }
            if (!retryPort || attempt >= 5 || !isPortInUse(result.left.logTail)) {
              return yield* result.left
            }
            port = yield* Proc.freePort.pipe(
              Effect.mapError((reason) => startFailed("start", `no free port: ${reason}`, { dataDir }))
            )
          }
        })

      const startIfStopped = Effect.suspend(() =>
        current !== undefined && current.isAlive() ? Effect.void : startServer(false)
      )

      // --- first start and bootstrap -------------------------------------------------------------------------
      const version = yield* lock.withPermits(1)(
        Effect.zipRight(
          startServer(!fixedPort),
          // suspended: `port` is the one the server ended up on (startServer moves it when the first is taken)
          Effect.suspend(() =>
            filled === undefined
              ? bootstrap(layout, port, { database, username, password, adminPassword })
              : versionOf(layout, port)
          ).pipe(
            Effect.mapError((error) =>
              startFailed("bootstrap", `${error.message}${error.code ? ` (${error.code})` : ""}`, {
                dataDir,
                logFile,
                logTail: Proc.readLogTail(logFile, 40)
              })
            )
          )
        )
      )

      const app: ConnectionTarget = { host: loopback, port, database, username, password: Redacted.make(password) }
      const admin: ConnectionTarget = { ...app, username: adminUsername, password: Redacted.make(adminPassword) }
      const guarded = <E>(self: Effect.Effect<void, E>) => live(lock.withPermits(1)(self))
      const service: PgServerService = {
        kind: "embedded",
        version,
        url: formatUrl(app, scheme),
        host: app.host,
        port,
        database,
        username,
        password: app.password,
        socketDir: Option.some(layout.socketDir),
        admin: {
          host: admin.host,
          port,
          username: adminUsername,
          password: admin.password,
          url: formatUrl(admin, scheme)
        },
        dataDir: Option.some(dataDir),
        logFile: Option.some(logFile),
        get pid() {
          return current !== undefined && current.isAlive() ? Option.some(current.pid) : Option.none()
        },
        start: guarded(startIfStopped),
        stop: guarded(stopCurrent(true)),
        kill: guarded(stopCurrent(false)),
        restart: guarded(Effect.zipRight(stopCurrent(true), startIfStopped))
      }
      return service
    })
  )

// -----------------------------------------------------------------------------
// external
// -----------------------------------------------------------------------------

const parseUrl = (
  source: string,
  url: Redacted.Redacted<string>,
  requireDatabase: boolean
): Effect.Effect<ConnectionTarget, PgServerInvalidUrl> =>
  Effect.suspend(() => {
    const result = parseTarget(Redacted.value(url).trim(), pgDialect, requireDatabase)
    return "target" in result
      ? Effect.succeed(result.target)
      : Effect.fail(new PgServerInvalidUrl({ source, reason: result.reason }))
  })

const probe = (target: ConnectionTarget): Effect.Effect<string, PgServerUnavailable> =>
  Effect.acquireUseRelease(
    Pg.connect({
      host: target.host,
      port: target.port,
      username: target.username,
      password: Redacted.value(target.password),
      database: target.database === "" ? "postgres" : target.database
    }),
    (conn) => Pg.query<{ readonly server_version: string }>(conn, "SHOW server_version"),
    Pg.close
  ).pipe(
    Effect.map((rows) => String(rows[0]?.server_version ?? "")),
    Effect.mapError(
      (error) =>
        new PgServerUnavailable({
          target: describeTarget(target, scheme),
          code: error.code,
          reason: error.message.split(Redacted.value(target.password)).join("***")
        })
    )
  )

const toRedacted = (value: Redacted.Redacted<string> | string): Redacted.Redacted<string> =>
  typeof value === "string" ? Redacted.make(value) : value

/** @internal */
export const makeExternal = (
  options: PgExternalOptions,
  sources: { readonly url: string; readonly adminUrl: string } = { url: "url", adminUrl: "adminUrl" }
): Effect.Effect<PgServerService, PgServerError> =>
  live(
    Effect.gen(function* () {
      const app = yield* parseUrl(sources.url, toRedacted(options.url), true)
      const admin =
        options.adminUrl !== undefined ? yield* parseUrl(sources.adminUrl, toRedacted(options.adminUrl), false) : app
      const version = yield* probe(app)
      const adminTarget = admin.database === "" ? { ...admin, database: app.database } : admin
      const service: PgServerService = {
        kind: "external",
        version,
        url: formatUrl(app, scheme),
        host: app.host,
        port: app.port,
        database: app.database,
        username: app.username,
        password: app.password,
        socketDir: Option.none(),
        admin: {
          host: admin.host,
          port: admin.port,
          username: admin.username,
          password: admin.password,
          url: formatUrl(adminTarget, scheme)
        },
        dataDir: Option.none(),
        logFile: Option.none(),
        pid: Option.none(),
        start: unsupported("start"),
        stop: unsupported("stop"),
        kill: unsupported("kill"),
        restart: unsupported("restart")
      }
      return service
    })
  )

const envUrl = (name: string) => readEnvUrl(name, (source, reason) => new PgServerInvalidUrl({ source, reason }))

/** @internal */
export const make = (options: PgServerOptions = {}): Effect.Effect<PgServerService, PgServerError, Scope.Scope> =>
  Effect.gen(function* () {
    const url = yield* envUrl("PG_URL")
    if (Option.isNone(url)) {
      return yield* makeEmbedded(options)
    }
    const adminUrl = yield* envUrl("PG_ADMIN_URL")
    return yield* makeExternal(
      { url: url.value, adminUrl: Option.getOrUndefined(adminUrl) },
      { url: "PG_URL", adminUrl: "PG_ADMIN_URL" }
    )
  })
