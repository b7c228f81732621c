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
import * as Mysql from "mysql2"
import type { MysqlServerError } from "./serverError.js"
import {
  MysqlServerInvalidUrl,
  MysqlServerStartFailed,
  MysqlServerUnavailable,
  MysqlServerUnsupported
} from "./serverError.js"
import * as Sql from "./serverMysql.js"
import * as Proc from "./serverProcess.js"
import { describeTarget, envUrl as readEnvUrl, formatUrl, parseUrl } from "./serverUrl.js"
import type { ConnectionTarget } from "./serverUrl.js"
import type { ExternalOptions, ServerOptions, ServerService } from "./types.js"

// The layer is often built under @effect/vitest's TestClock, which only moves when a test adjusts it: every timeout
// and poll interval here runs on a real clock.
const liveClock = Clock.make()
const live = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> => Effect.withClock(self, liveClock)

const adminUsername = "sfx_admin"
const loopback = "127.0.0.1"
const stateFile = "sessionfx-server.json"

const appPrivileges = [
  "SELECT",
  "INSERT",
  "UPDATE",
  "DELETE",
  "CREATE",
  "DROP",
  "INDEX",
  "ALTER",
  "REFERENCES",
  "CREATE TEMPORARY TABLES",
  "LOCK TABLES",
  "EXECUTE",
  "CREATE VIEW",
  "SHOW VIEW",
  "TRIGGER"
].join(", ")

const randomPassword = (): string => Crypto.randomBytes(18).toString("base64url")

const startFailed = (
  phase: MysqlServerStartFailed["phase"],
  reason: string,
  extra: Partial<ConstructorParameters<typeof MysqlServerStartFailed>[0]> = {}
) =>
  new MysqlServerStartFailed({
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
    new MysqlServerUnsupported({
      operation,
      reason: "the server is external (MYSQL_URL); only an embedded server can be stopped, started or restarted"
    })
  )

// -----------------------------------------------------------------------------
// persistent state
// -----------------------------------------------------------------------------

interface PersistentState {
  readonly passwords: Readonly<Record<string, string>>
  readonly adminPassword: string
  readonly port: number | undefined
}

const readState = (dataDir: string): PersistentState | undefined => {
  try {
    const raw = JSON.parse(Fs.readFileSync(Path.join(dataDir, stateFile), "utf8"))
    if (typeof raw?.adminPassword !== "string" || typeof raw?.passwords !== "object") {
      return undefined
    }
    return {
      passwords: raw.passwords,
      adminPassword: raw.adminPassword,
      port: typeof raw.port === "number" ? raw.port : undefined
    }
  } catch {
    return undefined
  }
}

const writeState = (dataDir: string, state: PersistentState): void => {
  const file = Path.join(dataDir, stateFile)
  const tmp = `${file}.${process.pid}.tmp`
  Fs.writeFileSync(tmp, JSON.stringify({ version: 1, ...state }, null, 2), { mode: 0o600 })
  Fs.chmodSync(tmp, 0o600)
  Fs.renameSync(tmp, file)
}

/** Files of ours that may sit in a persistent data directory before it is initialised. */
const ownFiles = new Set(["error.log", stateFile, Proc.serverPidFile, "mysqld.pid", "mysqld.sock"])

// -----------------------------------------------------------------------------
// embedded
// -----------------------------------------------------------------------------

const validName = (kind: string, value: string, pattern: RegExp): Effect.Effect<string, MysqlServerStartFailed> =>
  pattern.test(value) ? Effect.succeed(value) : Effect.fail(startFailed("prepare", `invalid ${kind} "${value}"`))

const isPortInUse = (lines: ReadonlyArray<string>): boolean =>
  lines.some((line) => /address already in use|bind on tcp\/ip port/i.test(line))

/**
 * What the servers of one replicated set or cluster need beyond the public options.
 *
 * @internal
 */
export interface EmbeddedInternals {
  /** Fixed passwords, so that users copied or replicated from a peer keep working. */
  readonly password?: string | undefined
  readonly adminPassword?: string | undefined
  /** Arguments computed anew at each start, after `serverArgs` (a Galera node bootstraps only on its first start). */
  readonly startArgs?: (() => ReadonlyArray<string>) | undefined
  /** Run the server as this OS user when we are root; its directories are handed to that user. */
  readonly runAs?: string | undefined
  /** After root can log in, at every start, before the server counts as started (a Galera node: synced). */
  readonly awaitReady?: ((conn: Mysql.Connection) => Effect.Effect<void, string>) | undefined
}

const chownTo = (user: string, paths: ReadonlyArray<string>): Effect.Effect<void, string> =>
  Effect.async<void, string>((resume) => {
    const child = ChildProcess.execFile("chown", ["-R", `${user}:`, ...paths], { timeout: 30_000 }, (error) =>
      resume(error ? Effect.fail(`chown -R ${user}: failed: ${error.message}`) : Effect.void)
    )
    return Effect.sync(() => child.kill("SIGKILL"))
  })

/** @internal */
export const makeEmbedded = (
  options: ServerOptions = {},
  internals: EmbeddedInternals = {}
): Effect.Effect<ServerService, MysqlServerError, Scope.Scope> =>
  live(
    Effect.gen(function* () {
      const database = yield* validName("database name", options.database ?? "app", /^[A-Za-z0-9_$]{1,64}$/)
      const username = yield* validName("user name", options.username ?? "app", /^[A-Za-z0-9_.-]{1,32}$/)
      if (username === "root" || username === adminUsername) {
        return yield* startFailed("prepare", `the application user cannot be "${username}"`)
      }
      const startTimeout = Duration.decode(options.startTimeout ?? Duration.seconds(60))
      const stopTimeout = Duration.decode(options.stopTimeout ?? Duration.seconds(10))
      const root = Path.resolve(options.tmpDir ?? Os.tmpdir())
      const extraArgs = options.serverArgs ?? []

      const install = yield* Proc.findInstallation(options.searchPath)
      yield* Proc.sweepStale(root)
      const template = yield* Proc.ensureTemplate(install, root, startTimeout)

      // --- directories -------------------------------------------------------------------------------------
      const persistent = options.dataDir !== undefined
      let dataDir: string
      if (options.dataDir !== undefined) {
        const dir = Path.resolve(options.dataDir)
        dataDir = dir
        yield* Effect.try({
          try: () => {
            Fs.mkdirSync(dir, { recursive: true, mode: 0o700 })
            return Fs.readdirSync(dir)
          },
          catch: (error) => startFailed("prepare", `cannot use ${dir}: ${String(error)}`, { dataDir: dir })
        }).pipe(
          Effect.flatMap((entries) => {
            if (entries.includes("mysql")) {
              return Effect.void
            }
            const foreign = entries.filter((entry) => !ownFiles.has(entry))
            return foreign.length > 0
              ? Effect.fail(
                  startFailed(
                    "prepare",
                    `${dir} is neither empty nor a MySQL data directory (found ${foreign.slice(0, 5).join(", ")})`,
                    { dataDir: dir }
                  )
                )
              : Proc.copyTemplate(template, dir)
          })
        )
      } else {
        dataDir = yield* Effect.acquireRelease(
          Effect.try({
            try: () => {
              const dir = Fs.mkdtempSync(Path.join(root, Proc.tempPrefix))
              Fs.writeFileSync(
                Path.join(dir, Proc.ownerFile),
                JSON.stringify({ ownerPid: process.pid, createdAt: new Date().toISOString() })
              )
              return dir
            },
            catch: (error) => startFailed("prepare", `cannot create a directory in ${root}: ${String(error)}`)
          }),
          (dir) => Proc.removeDir(dir)
        )
        yield* Proc.copyTemplate(template, dataDir)
      }
      const extraDirs: Array<string> = []
      let socketPath = Proc.socketPathFor(dataDir)
      if (socketPath === undefined) {
        const shortRoot = Proc.socketPathFor(Path.join(root, "sfx-XXXXXX")) !== undefined ? root : "/tmp"
        const socketDir = yield* Effect.acquireRelease(
          Effect.try({
            try: () => Fs.mkdtempSync(Path.join(shortRoot, "sfx-")),
            catch: (error) => startFailed("prepare", `cannot create a socket directory: ${String(error)}`)
          }),
          (dir) => Proc.removeDir(dir)
        )
        extraDirs.push(socketDir)
        socketPath = Path.join(socketDir, "mysqld.sock")
      }
      const socket = socketPath
      const logFile = Path.join(dataDir, "error.log")
      const pidFile = Path.join(dataDir, "mysqld.pid")
      const serverPidFile = Path.join(dataDir, Proc.serverPidFile)
      Fs.rmSync(serverPidFile, { force: true })
      const runAs = internals.runAs !== undefined && Proc.isRoot() ? internals.runAs : undefined
      if (runAs !== undefined) {
        yield* Effect.sync(() => Fs.closeSync(Fs.openSync(logFile, "a", 0o600)))
        yield* chownTo(runAs, [dataDir, ...extraDirs]).pipe(
          Effect.mapError((reason) => startFailed("prepare", reason, { dataDir }))
        )
      }

      // --- credentials and port ------------------------------------------------------------------------------
      const saved = persistent ? readState(dataDir) : undefined
      const password = internals.password ?? saved?.passwords[username] ?? randomPassword()
      const adminPassword = internals.adminPassword ?? saved?.adminPassword ?? randomPassword()
      const secrets = [password, adminPassword]
      const fixedPort = options.port !== undefined
      let port =
        options.port ??
        (saved?.port !== undefined && (yield* Proc.isPortFree(saved.port))
          ? saved.port
          : yield* Proc.freePort.pipe(Effect.mapError((reason) => startFailed("prepare", `no free port: ${reason}`))))

      // --- process control -----------------------------------------------------------------------------------
      // finalizers run in reverse order: the server stops first, then the watchdog goes, then the directories
      const watchdog = yield* Proc.spawnWatchdog(serverPidFile, persistent ? extraDirs : [dataDir, ...extraDirs])
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
          return (graceful ? Proc.terminate(proc, stopTimeout) : Proc.hardKill(proc)).pipe(
            Effect.zipRight(
              Effect.sync(() => {
                current = undefined
                Fs.rmSync(serverPidFile, { force: true })
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

      const exitDescription = (proc: Proc.ServerProcess) =>
        Deferred.poll(proc.exited).pipe(
          Effect.flatMap((done) => (Option.isSome(done) ? Effect.asSome(done.value) : Effect.succeedNone))
        )

      const spawnOnce = (onPort: number): Effect.Effect<Mysql.Connection, MysqlServerStartFailed> =>
        Effect.gen(function* () {
          if (closed) {
            return yield* startFailed("start", "the server's scope is closed", { dataDir })
          }
          const logOffset = Proc.fileSize(logFile)
          const args = Proc.serverArgs({
            install,
            dataDir,
            socketPath: socket,
            port: onPort,
            pidFile,
            logFile,
            extra: [...extraArgs, ...(internals.startArgs?.() ?? [])],
            user: runAs
          })
          const proc = yield* Proc.spawnLogged(install.server, args, logFile).pipe(
            Effect.mapError((reason) => startFailed("start", reason, { dataDir, logFile }))
          )
          current = proc
          Fs.writeFileSync(serverPidFile, String(proc.pid))

          const attempt = Sql.connect({ socketPath: socket, user: "root", password: "", multipleStatements: true })
          const loggedIn = attempt.pipe(
            Effect.retry({
              schedule: Schedule.spaced(Duration.millis(25)),
              while: (error) => error.code !== "ER_ACCESS_DENIED_ERROR"
            }),
            Effect.mapError((error) => `cannot log in as root over ${socket}: ${error.message}`)
          )
          const awaitReady = internals.awaitReady
          const ready =
            awaitReady === undefined
              ? loggedIn
              : Effect.flatMap(loggedIn, (conn) =>
                  awaitReady(conn).pipe(
                    Effect.as(conn),
                    Effect.onError(() => Sql.close(conn))
                  )
                )
          const exited = Deferred.await(proc.exited).pipe(
            Effect.flatMap((info) =>
              Effect.fail(`the server exited during startup${info.error ? ` (${info.error})` : ""}`)
            )
          )
          // interruptible even inside a finalizer or a semaphore: the race must be able to interrupt its loser
          const outcome = yield* Effect.interruptible(Effect.raceFirst(ready, exited)).pipe(
            Effect.timeoutFail({
              duration: startTimeout,
              onTimeout: () => `the server did not accept connections within ${Duration.format(startTimeout)}`
            }),
            Effect.either
          )
          if (Either.isRight(outcome)) {
            return outcome.right
          }
          yield* stopCurrent(false)
          const info = yield* exitDescription(proc)
          return yield* startFailed("start", outcome.left, {
            exitCode: Option.match(info, { onNone: () => null, onSome: (i) => i.code }),
            signal: Option.match(info, { onNone: () => null, onSome: (i) => i.signal }),
            dataDir,
            logFile,
            logTail: Proc.readLogTail(logFile, 40, logOffset)
          })
        })

      const startServer = (retryPort: boolean): Effect.Effect<Mysql.Connection, MysqlServerStartFailed> =>
        Effect.gen(function* () {
          for (let attempt = 1; ; attempt++) {
            const result = yield* Effect.either(spawnOnce(port))
            if (Either.isRight(result)) {
              return result.right
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
        current !== undefined && current.isAlive()
          ? Effect.void
          : Effect.flatMap(startServer(false), (conn) => Sql.close(conn))
      )

      // --- first start and bootstrap -------------------------------------------------------------------------
      const version = yield* lock
        .withPermits(1)(
          Effect.flatMap(startServer(!fixedPort), (conn) =>
            bootstrap(conn, { database, username, password, adminPassword, secrets }).pipe(
              Effect.ensuring(Sql.close(conn))
            )
          )
        )
        .pipe(
          Effect.mapError((error) =>
            error instanceof MysqlServerStartFailed
              ? error
              : startFailed("bootstrap", `${error.message}${error.code ? ` (${error.code})` : ""}`, {
                  dataDir,
                  logFile,
                  logTail: Proc.readLogTail(logFile, 40)
                })
          )
        )
      if (persistent) {
        const passwords = { ...saved?.passwords, [username]: password }
        yield* Effect.try({
          try: () => writeState(dataDir, { passwords, adminPassword, port }),
          catch: (error) => startFailed("bootstrap", `cannot write ${stateFile}: ${String(error)}`, { dataDir })
        })
      }

      const app: ConnectionTarget = { host: loopback, port, database, username, password: Redacted.make(password) }
      const admin: ConnectionTarget = {
        host: loopback,
        port,
        database,
        username: adminUsername,
        password: Redacted.make(adminPassword)
      }
      const guarded = <E>(self: Effect.Effect<void, E>) => live(lock.withPermits(1)(self))
      const service: ServerService = {
        kind: "embedded",
        flavor: Sql.flavorOf(version),
        version,
        url: formatUrl(app),
        host: app.host,
        port,
        database,
        username,
        password: app.password,
        socketPath: Option.some(socket),
        admin: {
          host: admin.host,
          port,
          username: adminUsername,
          password: admin.password,
          socketPath: Option.some(socket),
          url: formatUrl(admin)
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

const bootstrap = (
  conn: Mysql.Connection,
  options: {
    readonly database: string
    readonly username: string
    readonly password: string
    readonly adminPassword: string
    readonly secrets: ReadonlyArray<string>
  }
): Effect.Effect<string, Sql.SqlFailure> => {
  const db = Mysql.escapeId(options.database)
  const statements: Array<string> = [`CREATE DATABASE IF NOT EXISTS ${db} CHARACTER SET utf8mb4`]
  for (const host of ["%", "localhost"]) {
    const app = Mysql.format("?@?", [options.username, host])
    const admin = Mysql.format("?@?", [adminUsername, host])
    statements.push(
      Mysql.format(`CREATE USER IF NOT EXISTS ${app} IDENTIFIED BY ?`, [options.password]),
      Mysql.format(`ALTER USER ${app} IDENTIFIED BY ?`, [options.password]),
      `GRANT ${appPrivileges} ON ${db}.* TO ${app}`,
      Mysql.format(`CREATE USER IF NOT EXISTS ${admin} IDENTIFIED BY ?`, [options.adminPassword]),
      Mysql.format(`ALTER USER ${admin} IDENTIFIED BY ?`, [options.adminPassword]),
      `GRANT ALL PRIVILEGES ON *.* TO ${admin} WITH GRANT OPTION`
    )
  }
  statements.push("SELECT VERSION() AS version")
  return Sql.query<unknown>(conn, statements.join(";\n"), [], options.secrets).pipe(
    Effect.map((results) => {
      const last = results[results.length - 1] as ReadonlyArray<{ readonly version?: unknown }> | undefined
      return String(last?.[0]?.version ?? "")
    })
  )
}

// -----------------------------------------------------------------------------
// external
// -----------------------------------------------------------------------------

const probe = (target: ConnectionTarget): Effect.Effect<string, MysqlServerUnavailable> =>
  Effect.acquireUseRelease(
    Sql.connect({
      host: target.host,
      port: target.port,
      user: target.username,
      password: Redacted.value(target.password),
      ...(target.database !== "" ? { database: target.database } : {}),
      connectTimeout: 10_000
    }),
    (conn) => Sql.query<{ readonly version: string }>(conn, "SELECT VERSION() AS version"),
    (conn) => Sql.close(conn)
  ).pipe(
    Effect.map((rows) => String(rows[0]?.version ?? "")),
    Effect.mapError(
      (error) =>
        new MysqlServerUnavailable({
          target: describeTarget(target),
          code: error.code,
          reason: error.message.split(Redacted.value(target.password)).join("***")
        })
    )
  )

const toRedacted = (value: Redacted.Redacted<string> | string): Redacted.Redacted<string> =>
  typeof value === "string" ? Redacted.make(value) : value

/** @internal */
export const makeExternal = (
  options: ExternalOptions,
  sources: { readonly url: string; readonly adminUrl: string } = { url: "url", adminUrl: "adminUrl" }
): Effect.Effect<ServerService, MysqlServerError> =>
  live(
    Effect.gen(function* () {
      const app = yield* parseUrl(sources.url, toRedacted(options.url))
      const admin =
        options.adminUrl !== undefined
          ? yield* parseUrl(sources.adminUrl, toRedacted(options.adminUrl), { requireDatabase: false })
          : app
      const version = yield* probe(app)
      const service: ServerService = {
        kind: "external",
        flavor: Sql.flavorOf(version),
        version,
        url: formatUrl(app),
        host: app.host,
        port: app.port,
        database: app.database,
        username: app.username,
        password: app.password,
        socketPath: Option.none(),
        admin: {
          host: admin.host,
          port: admin.port,
          username: admin.username,
          password: admin.password,
          socketPath: Option.none(),
          url: formatUrl(admin)
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

const envUrl = (name: string) => readEnvUrl(name, (source, reason) => new MysqlServerInvalidUrl({ source, reason }))

/** @internal */
export const make = (options: ServerOptions = {}): Effect.Effect<ServerService, MysqlServerError, Scope.Scope> =>
  Effect.gen(function* () {
    const url = yield* envUrl("MYSQL_URL")
    if (Option.isNone(url)) {
      return yield* makeEmbedded(options)
    }
    const adminUrl = yield* envUrl("MYSQL_ADMIN_URL")
    return yield* makeExternal(
      { url: url.value, adminUrl: Option.getOrUndefined(adminUrl) },
      { url: "MYSQL_URL", adminUrl: "MYSQL_ADMIN_URL" }
    )
  })
