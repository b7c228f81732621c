import * as ChildProcess from "node:child_process"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Path from "node:path"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as FiberId from "effect/FiberId"
import * as Option from "effect/Option"
import { MysqlServerNotInstalled, MysqlServerStartFailed } from "./serverError.js"

/** @internal */
export const isRoot = (): boolean => typeof process.getuid === "function" && process.getuid() === 0

// -----------------------------------------------------------------------------
// installation
// -----------------------------------------------------------------------------

/** @internal */
export interface Installation {
  readonly server: string
  readonly flavor: "mariadb" | "mysql"
  readonly versionText: string
  readonly basedir: string
  /** `mariadb-install-db` / `mysql_install_db`; undefined for MySQL 8, which uses `mysqld --initialize-insecure` */
  readonly installDb: string | undefined
}

/** @internal */
export const defaultSearchPath = (): ReadonlyArray<string> => {
  const fromPath = (process.env.PATH ?? "").split(Path.delimiter).filter((dir) => dir !== "")
  return dedupe([...fromPath, "/usr/sbin", "/usr/local/sbin", "/usr/local/mysql/bin", "/usr/bin", "/usr/local/bin"])
}

/** @internal */
export const dedupe = (items: ReadonlyArray<string>): ReadonlyArray<string> => Array.from(new Set(items))

/** @internal */
export const findExecutable = (names: ReadonlyArray<string>, dirs: ReadonlyArray<string>): string | undefined => {
  for (const name of names) {
    for (const dir of dirs) {
      const candidate = Path.join(dir, name)
      try {
        if (Fs.statSync(candidate).isFile()) {
          Fs.accessSync(candidate, Fs.constants.X_OK)
          return candidate
        }
      } catch {
        // not here
      }
    }
  }
  return undefined
}

const runCapture = (file: string, args: ReadonlyArray<string>): Effect.Effect<string, string> =>
  Effect.async<string, string>((resume) => {
    const child = ChildProcess.execFile(file, args, { timeout: 15_000, maxBuffer: 1024 * 1024 }, (error, stdout) => {
      if (error) {
        resume(Effect.fail(error.message))
      } else {
        resume(Effect.succeed(String(stdout).trim()))
      }
    })
    return Effect.sync(() => child.kill("SIGKILL"))
  })

/**
 * Finds `mariadbd` or `mysqld` and the tool that initialises a data directory.
 *
 * @internal
 */
export const findInstallation = (
  searchPath: ReadonlyArray<string> | undefined
): Effect.Effect<Installation, MysqlServerNotInstalled | MysqlServerStartFailed> =>
  Effect.gen(function* () {
    const dirs = dedupe(searchPath ?? defaultSearchPath())
    const found = findExecutable(["mariadbd", "mysqld"], dirs)
    if (found === undefined) {
      return yield* new MysqlServerNotInstalled({ missing: "mariadbd or mysqld", searched: dirs, isRoot: isRoot() })
    }
    const server = Fs.realpathSync(found)
    const stat = Fs.statSync(server)
    const cacheKey = [found, server, stat.size, stat.mtimeMs].join("\0")
    const cached = installations.get(cacheKey)
    if (cached !== undefined) {
      return cached
    }
    const versionText = yield* runCapture(server, ["--version"]).pipe(
      Effect.mapError(
        (reason) =>
          new MysqlServerStartFailed({
            phase: "prepare",
            reason: `${server} --version failed: ${reason}`,
            exitCode: null,
            signal: null,
            dataDir: undefined,
            logFile: undefined,
            logTail: []
          })
      )
    )
    const flavor = /mariadb/i.test(versionText) ? "mariadb" : "mysql"
    const binDir = Path.dirname(server)
    const basedir = Path.dirname(binDir)
    if (flavor === "mysql") {
      const install: Installation = { server, flavor, versionText, basedir, installDb: undefined }
      installations.set(cacheKey, install)
      return install
    }
    const toolDirs = dedupe([
      Path.dirname(found),
      binDir,
      Path.join(basedir, "bin"),
      Path.join(basedir, "scripts"),
      ...dirs
    ])
    const installDb = findExecutable(["mariadb-install-db", "mysql_install_db"], toolDirs)
    if (installDb === undefined) {
      return yield* new MysqlServerNotInstalled({
        missing: "mariadb-install-db (found the server but not its install tool)",
        searched: toolDirs,
        isRoot: isRoot()
      })
    }
    const install: Installation = { server, flavor, versionText, basedir, installDb }
    installations.set(cacheKey, install)
    return install
  })

// `mariadbd --version` costs tens of milliseconds: ask once per binary and process
const installations = new Map<string, Installation>()

// -----------------------------------------------------------------------------
// server settings
// -----------------------------------------------------------------------------

/**
 * Settings shared by initialisation and every start: a small, fast server for tests. Durability is traded for speed
 * (`innodb_flush_log_at_trx_commit=2` still survives a crash of the server process, not of the machine).
 *
 * @internal
 */
export const engineArgs: ReadonlyArray<string> = [
  "--innodb-buffer-pool-size=64M",
  "--innodb-log-file-size=16M",
  "--innodb-temp-data-file-path=ibtmp1:1M:autoextend",
  "--character-set-server=utf8mb4"
]

/** @internal */
export const tuningArgs: ReadonlyArray<string> = [
  "--skip-name-resolve",
  "--innodb-flush-log-at-trx-commit=2",
  "--innodb-doublewrite=0",
  "--innodb-use-native-aio=0",
  "--innodb-buffer-pool-load-at-startup=0",
  "--innodb-buffer-pool-dump-at-shutdown=0",
  "--skip-log-bin",
  "--sync-binlog=0",
  "--performance-schema=OFF",
  "--max-connections=500"
]

const userArgs = (): ReadonlyArray<string> => (isRoot() ? ["--user=root"] : [])

// -----------------------------------------------------------------------------
// files
// -----------------------------------------------------------------------------

/** The last `lines` lines of a log file, reading at most the last 64 KiB after `fromOffset`. */
export const readLogTail = (file: string | undefined, lines = 40, fromOffset = 0): ReadonlyArray<string> => {
  if (file === undefined) {
    return []
  }
  try {
    const fd = Fs.openSync(file, "r")
    try {
      const size = Fs.fstatSync(fd).size
      const start = Math.max(fromOffset, size - 64 * 1024, 0)
      const buffer = Buffer.alloc(Math.max(size - start, 0))
      Fs.readSync(fd, buffer, 0, buffer.length, start)
      return buffer
        .toString("utf8")
        .split("\n")
        .map((line) => line.trimEnd())
        .filter((line) => line !== "")
        .slice(-lines)
    } finally {
      Fs.closeSync(fd)
    }
  } catch {
    return []
  }
}

/** @internal */
export const fileSize = (file: string): number => {
  try {
    return Fs.statSync(file).size
  } catch {
    return 0
  }
}

/** @internal */
export const removeDir = (dir: string): Effect.Effect<void> =>
  Effect.promise(() => Fs.promises.rm(dir, { recursive: true, force: true, maxRetries: 3 }).catch(() => undefined))

const copyDir = (from: string, to: string): Effect.Effect<void, string> =>
  Effect.async<void, string>((resume) => {
    // `cp -a` is several times faster than fs.cp for a data directory of a few hundred files
    const child = ChildProcess.spawn("cp", ["-a", `${from}/.`, to], { stdio: ["ignore", "ignore", "pipe"] })
    let stderr = ""
    let fallback = false
    child.stderr.on("data", (chunk) => {
      stderr = (stderr + String(chunk)).slice(-2000)
    })
    child.on("error", () => {
      // no `cp` on this system
      fallback = true
      Fs.promises.cp(from, to, { recursive: true }).then(
        () => resume(Effect.void),
        (error: unknown) => resume(Effect.fail(String(error)))
      )
    })
    child.on("exit", (code, signal) => {
      if (fallback) {
        return
      }
      resume(code === 0 ? Effect.void : Effect.fail(`cp -a failed (${code ?? signal}): ${stderr.trim()}`))
    })
    return Effect.sync(() => child.kill("SIGKILL"))
  })

/** @internal */
export const socketPathFor = (dir: string): string | undefined => {
  const candidate = Path.join(dir, "mysqld.sock")
  // sun_path holds 108 bytes including the terminating NUL
  return Buffer.byteLength(candidate) <= 100 ? candidate : undefined
}

// -----------------------------------------------------------------------------
// ports
// -----------------------------------------------------------------------------

/** @internal */
export const freePort: Effect.Effect<number, string> = Effect.async<number, string>((resume) => {
  const server = Net.createServer()
  server.unref()
  server.once("error", (error) => resume(Effect.fail(error.message)))
  server.listen(0, "127.0.0.1", () => {
    const address = server.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    server.close(() => resume(port > 0 ? Effect.succeed(port) : Effect.fail("no port assigned")))
  })
})

/** @internal */
export const isPortFree = (port: number): Effect.Effect<boolean> =>
  Effect.async<boolean>((resume) => {
    const server = Net.createServer()
    server.unref()
    server.once("error", () => resume(Effect.succeed(false)))
    server.listen(port, "127.0.0.1", () => server.close(() => resume(Effect.succeed(true))))
  })

// -----------------------------------------------------------------------------
// processes
// -----------------------------------------------------------------------------

/** @internal */
export interface ExitInfo {
  readonly code: number | null
  readonly signal: string | null
  readonly error: string | undefined
}

/** @internal */
export interface ServerProcess {
  readonly pid: number
  readonly exited: Deferred.Deferred<ExitInfo>
  readonly isAlive: () => boolean
}

const killGroup = (pid: number, signal: NodeJS.Signals): void => {
  try {
    process.kill(-pid, signal)
  } catch {
    try {
      process.kill(pid, signal)
    } catch {
      // already gone
    }
  }
}

/** Follows a child process: `exited` completes when it exits (or fails to start); `isAlive` until then. */
const watchExit = (child: ChildProcess.ChildProcess) => {
  const exited = Deferred.unsafeMake<ExitInfo>(FiberId.none)
  let alive = true
  const done = (info: ExitInfo) => {
    alive = false
    Deferred.unsafeDone(exited, Effect.succeed(info))
  }
  child.once("error", (error) => done({ code: null, signal: null, error: error.message }))
  child.once("exit", (code, signal) => done({ code, signal, error: undefined }))
  // a forgotten scope must not keep the node process alive; the watchdog cleans up after us
  child.unref()
  return { exited, isAlive: () => alive }
}

/**
 * Spawns a detached process (its own process group) with stdout and stderr appended to `logFile`.
 *
 * @internal
 */
export const spawnLogged = (
  file: string,
  args: ReadonlyArray<string>,
  logFile: string,
  /** Run as this OS user (root only) */
  user?: { readonly uid: number; readonly gid: number } | undefined
): Effect.Effect<ServerProcess, string> =>
  Effect.suspend(() => {
    let fd: number
    try {
      fd = Fs.openSync(logFile, "a", 0o600)
    } catch (error) {
      return Effect.fail(`cannot open ${logFile}: ${String(error)}`)
    }
    let child: ChildProcess.ChildProcess
    try {
      child = ChildProcess.spawn(file, args, {
        detached: true,
        stdio: ["ignore", fd, fd],
        ...(user !== undefined ? { uid: user.uid, gid: user.gid } : {})
      })
    } catch (error) {
      return Effect.fail(`cannot spawn ${file}: ${String(error)}`)
    } finally {
      Fs.closeSync(fd)
    }
    const { exited, isAlive } = watchExit(child)
    if (child.pid === undefined) {
      return Deferred.await(exited).pipe(
        Effect.flatMap((info) => Effect.fail(`cannot spawn ${file}: ${info.error ?? "unknown error"}`))
      )
    }
    const pid = child.pid
    return Effect.succeed({ pid, exited, isAlive })
  })

/**
 * SIGTERM (or `signal`), wait up to `timeout` for a graceful exit, then SIGKILL the whole process group. Never fails.
 *
 * @internal
 */
export const terminate = (
  proc: ServerProcess,
  timeout: Duration.DurationInput,
  signal: NodeJS.Signals = "SIGTERM"
): Effect.Effect<void> =>
  Effect.gen(function* () {
    // a process that exited long ago may have had its pid reused: signal only one we know is alive
    if (!proc.isAlive()) {
      return
    }
    try {
      process.kill(proc.pid, signal)
    } catch {
      // gone already
    }
    const graceful = yield* Effect.interruptible(Deferred.await(proc.exited)).pipe(
      Effect.timeoutTo({
        duration: timeout,
        onTimeout: () => false,
        onSuccess: () => true
      })
    )
    if (!graceful) {
      yield* hardKill(proc)
    }
  })

/** @internal */
export const hardKill = (proc: ServerProcess): Effect.Effect<void> =>
  Effect.gen(function* () {
    if (!proc.isAlive()) {
      return
    }
    killGroup(proc.pid, "SIGKILL")
    yield* Effect.interruptible(Deferred.await(proc.exited)).pipe(Effect.timeout(Duration.seconds(5)), Effect.ignore)
  })

const watchdogScript = `
owner=$1; pidfile=$2; shift 2
while kill -0 "$owner" 2>/dev/null; do sleep 1; done
pid=$(cat "$pidfile" 2>/dev/null)
dir=$(dirname "$pidfile")
# the server may have died by itself long ago: only signal a process that still runs on this directory
if [ -n "$pid" ] && { [ ! -d /proc ] || grep -qaF -- "$dir" "/proc/$pid/cmdline" 2>/dev/null; }; then
  kill -s TERM -- "-$pid" 2>/dev/null
  i=0
  while kill -s 0 -- "-$pid" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  kill -s KILL -- "-$pid" 2>/dev/null
  rm -f -- "$pidfile"
fi
for dir in "$@"; do rm -rf -- "$dir"; done
`

/**
 * A tiny detached shell that outlives a crashed owner: once the owner process is gone it stops the server whose pid
 * is in `pidFile` and removes `dirs`.
 *
 * @internal
 */
export const spawnWatchdog = (
  pidFile: string,
  dirs: ReadonlyArray<string>,
  name = "sessionfx-mysql-watchdog"
): Effect.Effect<Option.Option<ServerProcess>> =>
  Effect.sync(() => {
    try {
      const child = ChildProcess.spawn("/bin/sh", ["-c", watchdogScript, name, String(process.pid), pidFile, ...dirs], {
        detached: true,
        stdio: "ignore"
      })
      const { exited, isAlive } = watchExit(child)
      const pid = child.pid
      return pid === undefined ? Option.none() : Option.some({ pid, exited, isAlive })
    } catch {
      return Option.none()
    }
  })

const isProcessAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
}

// -----------------------------------------------------------------------------
// temporary directories
// -----------------------------------------------------------------------------

/** @internal */
export const tempPrefix = "sessionfx-mysql-"
const templatePrefix = "sessionfx-mysql-template-"
/** @internal */
export const ownerFile = "sessionfx-owner.json"
/** @internal */
export const serverPidFile = "sessionfx-server.pid"

/**
 * Removes temporary servers whose owner process is gone (in case a watchdog could not do it) and abandoned template
 * initialisations. Best effort, never fails.
 *
 * @internal
 */
export const sweepStale = (root: string, prefix: string = tempPrefix): Effect.Effect<void> =>
  Effect.sync(() => {
    let entries: Array<string>
    try {
      entries = Fs.readdirSync(root)
    } catch {
      return
    }
    const now = Date.now()
    for (const entry of entries) {
      if (!entry.startsWith(prefix)) {
        continue
      }
      const dir = Path.join(root, entry)
      try {
        const age = now - Fs.statSync(dir).mtimeMs
        if (entry.startsWith(templatePrefix)) {
          if (entry.includes(".tmp-") && age > 60 * 60 * 1000) {
            Fs.rmSync(dir, { recursive: true, force: true })
          }
          continue
        }
        let owner: number | undefined
        try {
          owner = Number(JSON.parse(Fs.readFileSync(Path.join(dir, ownerFile), "utf8")).ownerPid)
        } catch {
          owner = undefined
        }
        if (owner === undefined ? age < 10 * 60 * 1000 : isProcessAlive(owner)) {
          continue
        }
        const serverPid = Number(Fs.readFileSync(Path.join(dir, serverPidFile), "utf8").trim() || "0")
        if (serverPid > 0 && isProcessAlive(serverPid)) {
          const cmdline = Fs.readFileSync(`/proc/${serverPid}/cmdline`, "utf8")
          if (cmdline.includes(dir)) {
            killGroup(serverPid, "SIGKILL")
          }
        }
      } catch {
        // no pid file, no /proc: nothing to kill
      }
      try {
        Fs.rmSync(dir, { recursive: true, force: true })
      } catch {
        // someone else's, or already gone
      }
    }
  })

// -----------------------------------------------------------------------------
// template
// -----------------------------------------------------------------------------

const templateMarker = "sessionfx-template.json"

const lockdownSql = [
  "DELETE FROM mysql.global_priv WHERE User = 'root' AND Host <> 'localhost';",
  "DELETE FROM mysql.proxies_priv WHERE Host <> 'localhost';",
  ""
].join("\n")

const initFailed = (reason: string, extra: Partial<ConstructorParameters<typeof MysqlServerStartFailed>[0]> = {}) =>
  new MysqlServerStartFailed({
    phase: "initialize",
    reason,
    exitCode: null,
    signal: null,
    dataDir: undefined,
    logFile: undefined,
    logTail: [],
    ...extra
  })

const initArgs = (
  install: Installation,
  dataDir: string,
  tmpDir: string,
  extraFile: string,
  logFile: string
): ReadonlyArray<string> =>
  install.installDb !== undefined
    ? [
        "--no-defaults",
        `--datadir=${dataDir}`,
        `--tmpdir=${tmpDir}`,
        `--basedir=${install.basedir}`,
        ...userArgs(),
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
        "--skip-name-resolve",
        `--extra-file=${extraFile}`,
        ...engineArgs
      ]
    : [
        "--no-defaults",
        "--initialize-insecure",
        `--datadir=${dataDir}`,
        `--tmpdir=${tmpDir}`,
        `--basedir=${install.basedir}`,
        `--log-error=${logFile}`,
        ...userArgs(),
        ...engineArgs
      ]

/** @internal */
export const templateDirFor = (install: Installation, root: string): string => {
  const hash = Crypto.createHash("sha256")
    .update(
      [
        "sessionfx-template-v1",
        install.server,
        install.versionText,
        String(process.getuid?.() ?? ""),
        ...engineArgs
      ].join("\0")
    )
    .digest("hex")
    .slice(0, 16)
  return Path.join(root, `${templatePrefix}${hash}`)
}

/**
 * Initialises a data directory once per server version into `<root>/sessionfx-mysql-template-<hash>`. The work
 * happens in a private directory that is renamed into place, so concurrent processes never see half a template; the
 * loser of a race throws its copy away.
 *
 * @internal
 */
export const ensureTemplate = (
  install: Installation,
  root: string,
  timeout: Duration.DurationInput
): Effect.Effect<string, MysqlServerStartFailed> => {
  const template = templateDirFor(install, root)
  const ready = () => Fs.existsSync(Path.join(template, templateMarker))
  if (ready()) {
    return Effect.succeed(template)
  }
  return Effect.acquireUseRelease(
    Effect.try({
      try: () => Fs.mkdtempSync(`${template}.tmp-`),
      catch: (error) => initFailed(`cannot create a directory in ${root}: ${String(error)}`, { phase: "prepare" })
    }),
    (work) =>
      Effect.gen(function* () {
        const dataDir = Path.join(work, "data")
        const logFile = Path.join(work, "init.log")
        const extraFile = Path.join(work, "lockdown.sql")
        Fs.mkdirSync(dataDir, { mode: 0o700 })
        // the bootstrap's temporary tables in a directory of its own: in the shared /tmp, concurrent initialisations
        // were seen to fail ("Could not remove temporary table '/tmp/#sql-temptable-…'", then "Unknown table
        // 'mysql.tmp_user_sys'")
        const tmpDir = Path.join(work, "tmp")
        Fs.mkdirSync(tmpDir, { mode: 0o700 })
        Fs.writeFileSync(extraFile, lockdownSql)
        const tool = install.installDb ?? install.server
        const proc = yield* spawnLogged(tool, initArgs(install, dataDir, tmpDir, extraFile, logFile), logFile).pipe(
          Effect.mapError((reason) => initFailed(reason))
        )
        const info = yield* Effect.interruptible(Deferred.await(proc.exited)).pipe(
          Effect.timeoutFail({
            duration: timeout,
            onTimeout: () => initFailed(`${Path.basename(tool)} did not finish within ${Duration.format(timeout)}`)
          }),
          Effect.onInterrupt(() => hardKill(proc)),
          Effect.tapError(() => hardKill(proc))
        )
        if (info.code !== 0) {
          return yield* initFailed(`${Path.basename(tool)} failed${info.error ? `: ${info.error}` : ""}`, {
            exitCode: info.code,
            signal: info.signal,
            logFile,
            logTail: readLogTail(logFile)
          })
        }
        Fs.writeFileSync(
          Path.join(dataDir, templateMarker),
          JSON.stringify({ server: install.server, version: install.versionText, createdAt: new Date().toISOString() })
        )
        yield* Effect.try({
          try: () => {
            for (let attempt = 0; ; attempt++) {
              try {
                Fs.renameSync(dataDir, template)
                return
              } catch (error) {
                const code = (error as NodeJS.ErrnoException).code
                if (code !== "ENOTEMPTY" && code !== "EEXIST") {
                  throw error
                }
                if (ready()) {
                  return // another process won the race
                }
                if (attempt > 0) {
                  throw error
                }
                // a broken template without its marker: replace it
                Fs.rmSync(template, { recursive: true, force: true })
              }
            }
          },
          catch: (error) => initFailed(`cannot move the template into ${template}: ${String(error)}`)
        })
        return template
      }),
    (work) => removeDir(work)
  )
}

/** @internal */
export const copyTemplate = (template: string, dataDir: string): Effect.Effect<void, MysqlServerStartFailed> =>
  copyDir(template, dataDir).pipe(
    Effect.mapError((reason) =>
      initFailed(`cannot copy the template into ${dataDir}: ${reason}`, { phase: "prepare" })
    ),
    Effect.zipRight(Effect.sync(() => Fs.rmSync(Path.join(dataDir, templateMarker), { force: true })))
  )

/**
 * The command line of the server: private, loopback only, logging to a file.
 *
 * @internal
 */
export const serverArgs = (options: {
  readonly install: Installation
  readonly dataDir: string
  readonly socketPath: string
  readonly port: number
  readonly pidFile: string
  readonly logFile: string
  readonly extra: ReadonlyArray<string>
  /** The OS user the server runs as when started by root; default root. The server honours only the first `--user`. */
  readonly user?: string | undefined
}): ReadonlyArray<string> => [
  "--no-defaults",
  `--basedir=${options.install.basedir}`,
  `--datadir=${options.dataDir}`,
  `--socket=${options.socketPath}`,
  `--port=${options.port}`,
  "--bind-address=127.0.0.1",
  `--pid-file=${options.pidFile}`,
  `--log-error=${options.logFile}`,
  ...(options.user !== undefined && isRoot() ? [`--user=${options.user}`] : userArgs()),
  ...engineArgs,
  ...tuningArgs,
  ...(options.install.flavor === "mysql" ? ["--mysqlx=OFF"] : []),
  ...options.extra
]
