import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import { createRequire } from "node:module"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import { assert, describe, it, layer } from "@effect/vitest"
import * as MysqlClient from "@effect/sql-mysql2/MysqlClient"
import { MysqlServer } from "@sessionfx/testing"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"

// --- helpers ---------------------------------------------------------------------------------------------------

const clientFor = (url: Redacted.Redacted<string>) =>
  Effect.map(Layer.build(MysqlClient.layer({ url, maxConnections: 2 })), Context.get(MysqlClient.MysqlClient))

const appClient = Effect.flatMap(MysqlServer.MysqlServer, (server) => clientFor(server.url))

const isRunning = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
  } catch (error) {
    assert.strictEqual((error as NodeJS.ErrnoException).code, "ESRCH")
    return false
  }
  // an orphan that exited but was not reaped yet is a zombie: gone for our purposes
  try {
    return !/^\d+ \(.*\) Z/.test(Fs.readFileSync(`/proc/${pid}/stat`, "utf8"))
  } catch {
    return false
  }
}

/** Live processes whose command line mentions `text` (a server or a watchdog of that data directory). */
const processesMentioning = (text: string): Array<number> =>
  Fs.readdirSync("/proc")
    .filter((entry) => /^\d+$/.test(entry) && Number(entry) !== process.pid)
    .filter((entry) => {
      try {
        return Fs.readFileSync(`/proc/${entry}/cmdline`, "utf8").includes(text)
      } catch {
        return false
      }
    })
    .map(Number)

interface Footprint {
  readonly pid: number
  readonly dataDir: string
  readonly socketPath: string
}

const footprint = (server: MysqlServer.MysqlServer.Service): Footprint => ({
  pid: Option.getOrThrow(server.pid),
  dataDir: Option.getOrThrow(server.dataDir),
  socketPath: Option.getOrThrow(server.socketPath)
})

const assertRunning = (print: Footprint) => {
  assert.isTrue(isRunning(print.pid), "server process alive")
  assert.isTrue(Fs.existsSync(print.dataDir), "data dir exists")
  assert.isTrue(Fs.existsSync(print.socketPath), "socket exists")
}

const assertGone = (print: Footprint) => {
  assert.isFalse(isRunning(print.pid), `server process ${print.pid} still alive`)
  assert.isFalse(Fs.existsSync(print.dataDir), `${print.dataDir} still exists`)
  assert.deepStrictEqual(processesMentioning(print.dataDir), [])
}

/** Sets environment variables for the scope and restores them afterwards. */
const withEnv = (vars: Record<string, string | undefined>) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const saved = Object.fromEntries(Object.keys(vars).map((key) => [key, process.env[key]]))
      apply(vars)
      return saved
    }),
    (saved) => Effect.sync(() => apply(saved))
  )

const apply = (vars: Record<string, string | undefined>) => {
  for (const [key, value] of Object.entries(vars)) {
    if (value === undefined) {
      delete process.env[key]
    } else {
      process.env[key] = value
    }
  }
}

const tempDir = (prefix: string) =>
  Effect.acquireRelease(
    Effect.sync(() => Fs.mkdtempSync(Path.join(Os.tmpdir(), prefix))),
    (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
  )

const serverOf = (layer: Layer.Layer<MysqlServer.MysqlServer, MysqlServer.MysqlServerError>) =>
  Effect.map(Layer.build(layer), Context.get(MysqlServer.MysqlServer))

// --- one shared embedded server ---------------------------------------------------------------------------------

layer(MysqlServer.layerEmbedded())("embedded server", (it) => {
  it.effect("describes itself without revealing its passwords", () =>
    Effect.gen(function* () {
      const server = yield* MysqlServer.MysqlServer
      const print = footprint(server)
      assertRunning(print)
      assert.strictEqual(server.kind, "embedded")
      assert.strictEqual(server.host, "127.0.0.1")
      assert.strictEqual(server.database, "app")
      assert.strictEqual(server.username, "app")
      assert.strictEqual(server.flavor, /mariadb/i.test(server.version) ? "mariadb" : "mysql")

      const url = new URL(Redacted.value(server.url))
      assert.strictEqual(url.hostname, server.host)
      assert.strictEqual(Number(url.port), server.port)
      assert.strictEqual(url.username, server.username)
      assert.strictEqual(decodeURIComponent(url.password), Redacted.value(server.password))
      assert.strictEqual(url.pathname, `/${server.database}`)

      const password = Redacted.value(server.password)
      const adminPassword = Redacted.value(server.admin.password)
      assert.isAtLeast(password.length, 16)
      assert.notStrictEqual(password, adminPassword)
      for (const printed of [String(server.url), JSON.stringify(server), String(server.admin.url)]) {
        assert.notInclude(printed, password)
        assert.notInclude(printed, adminPassword)
      }
    })
  )

  it.scoped("the admin sees and kills application connections; the application user cannot", () =>
    Effect.gen(function* () {
      const server = yield* MysqlServer.MysqlServer
      const app = yield* appClient
      const admin = yield* clientFor(server.admin.url)

      const appConnection = yield* app.reserve
      const [appId] = yield* appConnection.execute("SELECT CONNECTION_ID() AS id", [], undefined)
      const [adminId] = yield* admin<{ readonly id: number }>`SELECT CONNECTION_ID() AS id`

      const processes = yield* admin<{ readonly id: number; readonly user: string }>`
        SELECT ID AS id, USER AS user FROM information_schema.PROCESSLIST
      `
      assert.isTrue(processes.some((row) => Number(row.id) === Number(appId.id) && row.user === server.username))
      const trx = yield* admin<{ readonly n: number }>`SELECT COUNT(*) AS n FROM information_schema.INNODB_TRX`
      assert.strictEqual(trx.length, 1)

      const denied = yield* Effect.flip(app.unsafe(`KILL ${Number(adminId?.id)}`))
      assert.match(String(denied.cause), /not owner|denied/i)

      yield* admin.unsafe(`KILL ${Number(appId.id)}`)
      const killed = yield* Effect.flip(appConnection.execute("SELECT 1", [], undefined))
      assert.strictEqual(killed._tag, "SqlError")
    })
  )

  it.scoped("restart keeps committed data, the port and the data directory", () =>
    Effect.gen(function* () {
      const server = yield* MysqlServer.MysqlServer
      const before = footprint(server)
      yield* Effect.scoped(
        Effect.gen(function* () {
          const sql = yield* appClient
          yield* sql`CREATE TABLE restart_rows (id INT PRIMARY KEY) ENGINE=InnoDB`
          yield* sql`INSERT INTO restart_rows VALUES (42)`
        })
      )

      yield* server.restart
      const after = footprint(server)
      assert.notStrictEqual(after.pid, before.pid)
      assert.isFalse(isRunning(before.pid))
      assert.strictEqual(after.dataDir, before.dataDir)
      assertRunning(after)

      const sql = yield* appClient
      const rows = yield* sql<{ readonly id: number }>`SELECT id FROM restart_rows`
      assert.deepStrictEqual(
        rows.map((row) => row.id),
        [42]
      )
    })
  )

  it.scoped("stop, kill (a crash) and start: the server goes away and comes back with its data", () =>
    Effect.gen(function* () {
      const server = yield* MysqlServer.MysqlServer
      const port = server.port
      yield* Effect.scoped(
        Effect.gen(function* () {
          const sql = yield* appClient
          yield* sql`CREATE TABLE crash_rows (id INT PRIMARY KEY) ENGINE=InnoDB`
          yield* sql`INSERT INTO crash_rows VALUES (1), (2)`
        })
      )

      const first = Option.getOrThrow(server.pid)
      yield* server.stop
      assert.isTrue(Option.isNone(server.pid))
      assert.isFalse(isRunning(first))
      const down = yield* Effect.flip(Effect.scoped(appClient))
      assert.strictEqual(down._tag, "SqlError")

      yield* server.start
      const second = Option.getOrThrow(server.pid)
      yield* server.kill
      assert.isFalse(isRunning(second))
      assert.isTrue(Option.isNone(server.pid))

      yield* server.start
      yield* server.start // already running: nothing to do
      assert.strictEqual(server.port, port)
      const sql = yield* appClient
      const rows = yield* sql<{ readonly id: number }>`SELECT id FROM crash_rows ORDER BY id`
      assert.deepStrictEqual(
        rows.map((row) => row.id),
        [1, 2]
      )
    })
  )

  it.scoped("MYSQL_URL selects that server and launches nothing", () =>
    Effect.gen(function* () {
      const embedded = yield* MysqlServer.MysqlServer
      yield* withEnv({
        MYSQL_URL: Redacted.value(embedded.url),
        MYSQL_ADMIN_URL: Redacted.value(embedded.admin.url)
      })
      // with no search path, launching a server would fail with MysqlServerNotInstalled
      const external = yield* serverOf(MysqlServer.layer({ searchPath: [] }))
      assert.strictEqual(external.kind, "external")
      assert.strictEqual(external.port, embedded.port)
      assert.strictEqual(external.host, embedded.host)
      assert.strictEqual(external.version, embedded.version)
      assert.strictEqual(Redacted.value(external.password), Redacted.value(embedded.password))
      assert.strictEqual(external.admin.username, embedded.admin.username)
      assert.isTrue(Option.isNone(external.pid))
      assert.isTrue(Option.isNone(external.dataDir))

      const sql = yield* clientFor(external.url)
      const [row] = yield* sql<{ readonly user: string }>`SELECT CURRENT_USER() AS user`
      assert.strictEqual(row?.user.split("@")[0], embedded.username)

      const restart = yield* Effect.flip(external.restart)
      assert.strictEqual(restart._tag, "MysqlServerUnsupported")
      const stop = yield* Effect.flip(external.stop)
      assert.strictEqual(stop._tag, "MysqlServerUnsupported")
    })
  )
})

const testingDir = fileURLToPath(new URL("..", import.meta.url))
const viteNode = Path.join(
  Path.dirname(createRequire(import.meta.url).resolve("vitest/package.json")),
  "..",
  "vite-node",
  "vite-node.mjs"
)

/** A separate node process that starts an embedded server, reports it on stdout and waits to be killed. */
const ownerScript = (dir: string) => {
  const effect = (module: string) => JSON.stringify(Path.join(testingDir, "node_modules/effect/dist/esm", module))
  const file = Path.join(dir, "owner.ts")
  Fs.writeFileSync(
    file,
    [
      `import * as Effect from ${effect("Effect.js")}`,
      `import * as Option from ${effect("Option.js")}`,
      `import * as MysqlServer from ${JSON.stringify(Path.join(testingDir, "src/MysqlServer.ts"))}`,
      "setInterval(() => {}, 60_000)",
      "Effect.runFork(Effect.scoped(Effect.gen(function* () {",
      "  const server = yield* MysqlServer.makeEmbedded()",
      "  const print = { pid: Option.getOrThrow(server.pid), dataDir: Option.getOrThrow(server.dataDir), socketPath: Option.getOrThrow(server.socketPath) }",
      "  console.log(JSON.stringify(print))",
      "  yield* Effect.never",
      "})))",
      ""
    ].join("\n")
  )
  return file
}

const firstLine = (child: ChildProcess.ChildProcess) =>
  Effect.async<string, string>((resume) => {
    let buffer = ""
    child.stdout?.on("data", (chunk) => {
      buffer += String(chunk)
      const newline = buffer.indexOf("\n")
      if (newline >= 0) {
        resume(Effect.succeed(buffer.slice(0, newline)))
      }
    })
    child.once("exit", (code) => resume(Effect.fail(`the owner process exited with ${code}`)))
  })

/** Waits, on the real clock, until `condition` holds. */
const eventually = (condition: () => boolean, within: Duration.DurationInput) =>
  Effect.suspend(() => (condition() ? Effect.void : Effect.fail("not yet"))).pipe(
    Effect.retry(Schedule.spaced("100 millis")),
    Effect.timeoutFail({ duration: within, onTimeout: () => "condition not met in time" })
  )

// --- servers with their own lifetimes ---------------------------------------------------------------------------

const withConfig = (map: Record<string, string>) =>
  Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(map))))

describe("MysqlServer lifecycle", () => {
  it.effect("closing the scope stops the server and removes its files", () =>
    Effect.gen(function* () {
      const print = yield* Effect.scoped(
        Effect.map(MysqlServer.makeEmbedded(), (server) => {
          const print = footprint(server)
          assertRunning(print)
          return print
        })
      )
      assertGone(print)
    })
  )

  it.effect("a failure inside the scope stops the server", () =>
    Effect.gen(function* () {
      const seen = yield* Deferred.make<Footprint>()
      const exit = yield* Effect.exit(
        Effect.scoped(
          Effect.gen(function* () {
            const server = yield* MysqlServer.makeEmbedded()
            yield* Deferred.succeed(seen, footprint(server))
            return yield* Effect.fail("boom" as const)
          })
        )
      )
      assert.deepStrictEqual(exit, Exit.fail("boom" as const))
      assertGone(yield* Deferred.await(seen))
    })
  )

  it.effect("interrupting the owner fiber stops the server", () =>
    Effect.gen(function* () {
      const seen = yield* Deferred.make<Footprint>()
      const fiber = yield* Effect.fork(
        Effect.scoped(
          Effect.gen(function* () {
            const server = yield* MysqlServer.makeEmbedded()
            yield* Deferred.succeed(seen, footprint(server))
            return yield* Effect.never
          })
        )
      )
      const print = yield* Deferred.await(seen)
      assertRunning(print)
      const exit = yield* Fiber.interrupt(fiber)
      assert.isTrue(Exit.isInterrupted(exit))
      assertGone(print)
    })
  )

  it.live("when the owner process dies without closing its scope, the watchdog stops the server and cleans up", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const dir = yield* tempDir("sfx-owner-")
        const child = yield* Effect.acquireRelease(
          Effect.sync(() =>
            // this project's config: @sessionfx/session resolves to its source (the @sessionfx/source condition)
            ChildProcess.spawn(process.execPath, [viteNode, "--config", "vitest.config.ts", ownerScript(dir)], {
              cwd: testingDir,
              stdio: ["ignore", "pipe", "inherit"]
            })
          ),
          (child) => Effect.sync(() => child.kill("SIGKILL"))
        )
        const line = yield* firstLine(child).pipe(Effect.timeout("60 seconds"))
        const print = JSON.parse(line) as Footprint
        assertRunning(print)

        child.kill("SIGKILL") // no finalizer runs in the owner
        // the watchdog notices within a second, stops the server, removes the directory and exits
        yield* eventually(
          () =>
            !isRunning(print.pid) && !Fs.existsSync(print.dataDir) && processesMentioning(print.dataDir).length === 0,
          "20 seconds"
        )
        assertGone(print)
      })
    )
  )

  it.effect("a missing binary fails with MysqlServerNotInstalled saying what to do", () =>
    Effect.gen(function* () {
      const nowhere = Path.join(Os.tmpdir(), "sessionfx-no-such-dir")
      const error = yield* Effect.flip(Effect.scoped(MysqlServer.makeEmbedded({ searchPath: [nowhere] })))
      assert.strictEqual(error._tag, "MysqlServerNotInstalled")
      assert.include(error.message, "apt-get install -y mariadb-server")
      assert.include(error.message, "MYSQL_URL=mysql://")
      assert.include(error.message, nowhere)

      const fromLayer = yield* Effect.flip(serverOf(MysqlServer.layer({ searchPath: [] }))).pipe(
        Effect.scoped,
        withConfig({})
      )
      assert.strictEqual(fromLayer._tag, "MysqlServerNotInstalled")
    })
  )

  it.effect("a failed start carries the exit code and the tail of the server's log", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(
        Effect.scoped(MysqlServer.makeEmbedded({ serverArgs: ["--sessionfx-no-such-option=1"] }))
      )
      if (error._tag !== "MysqlServerStartFailed") {
        return assert.fail(`expected MysqlServerStartFailed, got ${error._tag}: ${error.message}`)
      }
      assert.strictEqual(error.phase, "start")
      assert.isNotNull(error.exitCode)
      assert.notStrictEqual(error.exitCode, 0)
      assert.isTrue(error.logTail.length > 0)
      assert.isAtMost(error.logTail.length, 40)
      assert.isTrue(error.logTail.some((line) => line.includes("sessionfx-no-such-option")))
      assert.include(error.message, "sessionfx-no-such-option")
      assert.include(error.message, "exit code")
      // nothing left behind
      assert.isString(error.dataDir)
      assert.isFalse(Fs.existsSync(error.dataDir!))
      assert.deepStrictEqual(processesMentioning(error.dataDir!), [])
    })
  )

  it.effect("a start that times out leaves no process and no files behind", () =>
    Effect.gen(function* () {
      yield* Effect.scoped(MysqlServer.makeEmbedded()) // the template exists before the short timeout counts
      const error = yield* Effect.flip(Effect.scoped(MysqlServer.makeEmbedded({ startTimeout: "1 millis" })))
      if (error._tag !== "MysqlServerStartFailed") {
        return assert.fail(`expected MysqlServerStartFailed, got ${error._tag}: ${error.message}`)
      }
      assert.include(error.reason, "did not accept connections")
      assert.isString(error.dataDir)
      assert.isFalse(Fs.existsSync(error.dataDir!))
      assert.deepStrictEqual(processesMentioning(error.dataDir!), [])
    })
  )

  it.effect("an invalid MYSQL_URL is a typed error that never shows the password", () =>
    Effect.gen(function* () {
      const cases = [
        ["not a url at s3cr3t-pw", "not a valid url"],
        ["postgres://app:s3cr3t-pw@127.0.0.1:5432/app", "unsupported scheme"],
        ["mysql://app:s3cr3t-pw@127.0.0.1:3306", "database name is missing"],
        ["mysql://:s3cr3t-pw@127.0.0.1:3306/app", "user name is missing"]
      ] as const
      for (const [url, reason] of cases) {
        const error = yield* Effect.flip(Effect.scoped(MysqlServer.make())).pipe(withConfig({ MYSQL_URL: url }))
        assert.strictEqual(error._tag, "MysqlServerInvalidUrl")
        assert.include(error.message, "MYSQL_URL")
        assert.include(error.message, reason)
        assert.notInclude(error.message, "s3cr3t-pw")
        assert.notInclude(JSON.stringify(error), "s3cr3t-pw")
      }
      const unreachable = yield* Effect.flip(Effect.scoped(MysqlServer.make())).pipe(
        withConfig({ MYSQL_URL: "mysql://app:s3cr3t-pw@127.0.0.1:1/app" })
      )
      assert.strictEqual(unreachable._tag, "MysqlServerUnavailable")
      assert.include(unreachable.message, "127.0.0.1:1")
      assert.notInclude(unreachable.message, "s3cr3t-pw")
    })
  )

  it.scoped("persistent mode keeps data, password and port across two lifetimes", () =>
    Effect.gen(function* () {
      const dataDir = yield* tempDir("sfx-persist-")
      const first = yield* Effect.scoped(
        Effect.gen(function* () {
          const server = yield* MysqlServer.makeEmbedded({ dataDir, username: "ledger", database: "ledger" })
          assert.strictEqual(Option.getOrThrow(server.dataDir), dataDir)
          const sql = yield* clientFor(server.url)
          yield* sql`CREATE TABLE kept (id INT PRIMARY KEY, note VARCHAR(20)) ENGINE=InnoDB`
          yield* sql`INSERT INTO kept VALUES (7, 'survives')`
          return { pid: Option.getOrThrow(server.pid), password: Redacted.value(server.password), port: server.port }
        })
      )
      assert.isFalse(isRunning(first.pid))
      assert.isTrue(Fs.existsSync(Path.join(dataDir, "mysql")), "the data directory is kept")
      const stateFile = Path.join(dataDir, "sessionfx-server.json")
      assert.strictEqual(Fs.statSync(stateFile).mode & 0o777, 0o600)

      const second = yield* MysqlServer.makeEmbedded({ dataDir, username: "ledger", database: "ledger" })
      assert.strictEqual(Redacted.value(second.password), first.password)
      assert.strictEqual(second.port, first.port)
      const sql = yield* clientFor(second.url)
      const rows = yield* sql<{ readonly id: number; readonly note: string }>`SELECT id, note FROM kept`
      assert.deepStrictEqual(
        rows.map((row) => [row.id, row.note]),
        [[7, "survives"]]
      )
    })
  )

  it.scoped("servers started concurrently share one template and get their own port and directory", () =>
    Effect.gen(function* () {
      const tmpDir = yield* tempDir("sfx-tpl-")
      const servers = yield* Effect.all([MysqlServer.makeEmbedded({ tmpDir }), MysqlServer.makeEmbedded({ tmpDir })], {
        concurrency: "unbounded"
      })
      const [a, b] = servers
      assert.notStrictEqual(a.port, b.port)
      assert.notStrictEqual(Option.getOrThrow(a.dataDir), Option.getOrThrow(b.dataDir))
      const entries = Fs.readdirSync(tmpDir)
      assert.strictEqual(entries.filter((entry) => entry.startsWith("sessionfx-mysql-template-")).length, 1)
      assert.deepStrictEqual(
        entries.filter((entry) => entry.includes(".tmp-")),
        []
      )
      for (const server of servers) {
        const sql = yield* clientFor(server.url)
        const [row] = yield* sql<{ readonly n: number }>`SELECT 1 AS n`
        assert.strictEqual(Number(row?.n), 1)
      }
    })
  )
})
