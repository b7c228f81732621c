import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import { createRequire } from "node:module"
import * as Os from "node:os"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import { assert, describe, it, layer } from "@effect/vitest"
import { PgServer } from "@sessionfx/testing"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import postgres from "postgres"

// --- helpers ---------------------------------------------------------------------------------------------------

/** One connection for the scope. */
const clientFor = (url: Redacted.Redacted<string>) =>
  Effect.acquireRelease(
    Effect.sync(() => postgres(Redacted.value(url), { max: 1, onnotice: () => {}, connect_timeout: 10 })),
    (sql) => Effect.promise(() => sql.end({ timeout: 0 }))
  )

const query = <A = Record<string, unknown>>(sql: postgres.Sql, text: string) =>
  Effect.tryPromise({
    try: () => sql.unsafe(text) as unknown as Promise<ReadonlyArray<A>>,
    catch: (error) => error as { readonly code?: string; readonly message: string }
  })

/** The SQLSTATE a statement fails with. */
const sqlState = (sql: postgres.Sql, text: string) => Effect.map(Effect.flip(query(sql, text)), (error) => error.code)

const appClient = Effect.flatMap(PgServer.PgServer, (server) => clientFor(server.url))

const isRunning = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
  } catch (error) {
    assert.strictEqual((error as NodeJS.ErrnoException).code, "ESRCH")
    return false
  }
  try {
    return !/^\d+ \(.*\) Z/.test(Fs.readFileSync(`/proc/${pid}/stat`, "utf8"))
  } catch {
    return false
  }
}

/** Live processes whose command line mentions `text` (a server or a watchdog of that directory). */
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
  readonly socket: string
}

const footprint = (server: PgServer.PgServer.Service): Footprint => ({
  pid: Option.getOrThrow(server.pid),
  dataDir: Option.getOrThrow(server.dataDir),
  socket: Path.join(Option.getOrThrow(server.socketDir), `.s.PGSQL.${server.port}`)
})

const assertRunning = (print: Footprint) => {
  assert.isTrue(isRunning(print.pid), "server process alive")
  assert.isTrue(Fs.existsSync(Path.join(print.dataDir, "PG_VERSION")), "data dir initialised")
  assert.isTrue(Fs.existsSync(print.socket), "socket exists")
}

const assertGone = (print: Footprint) => {
  assert.isFalse(isRunning(print.pid), `server process ${print.pid} still alive`)
  assert.isFalse(Fs.existsSync(Path.dirname(print.dataDir)), `${print.dataDir} still exists`)
  assert.deepStrictEqual(processesMentioning(print.dataDir), [])
}

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

const withConfig = (map: Record<string, string>) =>
  Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(map))))

const serverOf = (layer: Layer.Layer<PgServer.PgServer, PgServer.PgServerError>) =>
  Effect.map(Layer.build(layer), Context.get(PgServer.PgServer))

const uidOf = (pid: number): number => {
  const line = Fs.readFileSync(`/proc/${pid}/status`, "utf8")
    .split("\n")
    .find((entry) => entry.startsWith("Uid:"))
  return Number(line?.split(/\s+/)[1])
}

// --- one shared embedded server ---------------------------------------------------------------------------------

layer(PgServer.layerEmbedded(), { timeout: "2 minutes" })("embedded PostgreSQL server", (it) => {
  it.scoped("describes itself without revealing its passwords; runs with the test settings, not as root", () =>
    Effect.gen(function* () {
      const server = yield* PgServer.PgServer
      const print = footprint(server)
      assertRunning(print)
      assert.strictEqual(server.kind, "embedded")
      assert.strictEqual(server.host, "127.0.0.1")
      assert.strictEqual(server.database, "app")
      assert.strictEqual(server.username, "app")
      assert.match(server.version, /^\d+\.\d+/)

      const url = new URL(Redacted.value(server.url))
      assert.strictEqual(url.protocol, "postgres:")
      assert.strictEqual(url.hostname, server.host)
      assert.strictEqual(Number(url.port), server.port)
      assert.strictEqual(url.username, server.username)
      assert.strictEqual(decodeURIComponent(url.password), Redacted.value(server.password))
      assert.strictEqual(url.pathname, `/${server.database}`)
      assert.strictEqual(new URL(Redacted.value(server.admin.url)).pathname, `/${server.database}`)

      const password = Redacted.value(server.password)
      const adminPassword = Redacted.value(server.admin.password)
      assert.isAtLeast(password.length, 16)
      assert.notStrictEqual(password, adminPassword)
      for (const printed of [String(server.url), JSON.stringify(server), String(server.admin.url)]) {
        assert.notInclude(printed, password)
        assert.notInclude(printed, adminPassword)
      }

      // PostgreSQL refuses to run as root: started by root, it runs as an unprivileged user
      assert.notStrictEqual(uidOf(print.pid), 0)
      if (process.getuid?.() !== 0) {
        assert.strictEqual(uidOf(print.pid), process.getuid?.())
      }

      const admin = yield* clientFor(server.admin.url)
      const settings = yield* query<{ readonly name: string; readonly setting: string }>(
        admin,
        "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'listen_addresses') ORDER BY name"
      )
      assert.deepStrictEqual(
        settings.map((row) => [row.name, row.setting]),
        [
          ["fsync", "off"],
          ["full_page_writes", "off"],
          ["listen_addresses", "127.0.0.1"],
          ["synchronous_commit", "off"]
        ]
      )
    })
  )

  it.scoped("the application role creates and uses tables in its database and can do nothing an admin does", () =>
    Effect.gen(function* () {
      const server = yield* PgServer.PgServer
      const app = yield* appClient
      yield* query(app, "CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL)")
      yield* query(app, "INSERT INTO accounts VALUES (1, 100), (2, 50)")
      const [sum] = yield* query<{ readonly total: string }>(app, "SELECT SUM(balance)::text AS total FROM accounts")
      assert.strictEqual(sum?.total, "150")
      const [who] = yield* query<{ readonly user: string; readonly super: string }>(
        app,
        "SELECT current_user AS user, current_setting('is_superuser') AS super"
      )
      assert.deepStrictEqual(who, { user: server.username, super: "off" })

      assert.strictEqual(yield* sqlState(app, "CREATE DATABASE other"), "42501")
      assert.strictEqual(yield* sqlState(app, "CREATE ROLE intruder LOGIN"), "42501")
      assert.strictEqual(yield* sqlState(app, "ALTER SYSTEM SET fsync = on"), "42501")
      assert.strictEqual(yield* sqlState(app, "SELECT rolpassword FROM pg_authid"), "42501")
      assert.strictEqual(yield* sqlState(app, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"), "42501")

      // not even a connection to the other databases
      const other = new URL(Redacted.value(server.url))
      other.pathname = "/postgres"
      const refused = yield* Effect.flip(
        Effect.flatMap(clientFor(Redacted.make(other.toString())), (sql) => query(sql, "SELECT 1"))
      )
      assert.strictEqual(refused.code, "42501")

      // the admin is a superuser: it sees and terminates the application's backend; the application cannot
      const admin = yield* clientFor(server.admin.url)
      const [adminPid] = yield* query<{ readonly pid: number }>(admin, "SELECT pg_backend_pid() AS pid")
      const [appPid] = yield* query<{ readonly pid: number }>(app, "SELECT pg_backend_pid() AS pid")
      assert.strictEqual(yield* sqlState(app, `SELECT pg_terminate_backend(${adminPid?.pid})`), "42501")
      const seen = yield* query<{ readonly n: number }>(
        admin,
        `SELECT COUNT(*)::int AS n FROM pg_stat_activity WHERE pid = ${appPid?.pid} AND usename = '${server.username}'`
      )
      assert.strictEqual(seen[0]?.n, 1)
      const [done] = yield* query<{ readonly done: boolean }>(
        admin,
        `SELECT pg_terminate_backend(${appPid?.pid}, 5000) AS done`
      )
      assert.isTrue(done?.done)
      const left = yield* query(admin, `SELECT 1 FROM pg_stat_activity WHERE pid = ${appPid?.pid}`)
      assert.strictEqual(left.length, 0)
      // the client connects anew: another backend
      const [again] = yield* query<{ readonly pid: number }>(app, "SELECT pg_backend_pid() AS pid")
      assert.notStrictEqual(again?.pid, appPid?.pid)
    })
  )

  it.scoped("restart keeps committed data, the port and the data directory; stop, kill and start", () =>
    Effect.gen(function* () {
      const server = yield* PgServer.PgServer
      const before = footprint(server)
      yield* Effect.scoped(
        Effect.flatMap(appClient, (sql) =>
          Effect.zipRight(
            query(sql, "CREATE TABLE kept (id INT PRIMARY KEY)"),
            query(sql, "INSERT INTO kept VALUES (42)")
          )
        )
      )
      yield* server.restart
      const after = footprint(server)
      assert.notStrictEqual(after.pid, before.pid)
      assert.isFalse(isRunning(before.pid))
      assert.strictEqual(after.dataDir, before.dataDir)
      assertRunning(after)

      yield* server.stop
      assert.isTrue(Option.isNone(server.pid))
      assert.isFalse(isRunning(after.pid))
      const down = yield* Effect.flip(Effect.scoped(Effect.flatMap(appClient, (sql) => query(sql, "SELECT 1"))))
      assert.strictEqual(down.code, "ECONNREFUSED")

      yield* server.start
      const third = Option.getOrThrow(server.pid)
      yield* server.kill // a crash: recovery on the next start
      assert.isFalse(isRunning(third))
      yield* server.start
      yield* server.start // already running: nothing to do
      const rows = yield* Effect.scoped(
        Effect.flatMap(appClient, (sql) => query<{ id: number }>(sql, "SELECT id FROM kept"))
      )
      assert.deepStrictEqual(
        rows.map((row) => row.id),
        [42]
      )
    })
  )

  it.effect("kill is a crash of every server process: no backend outlives it, start right after succeeds (x5)", () =>
    Effect.gen(function* () {
      const server = yield* PgServer.PgServer
      for (let i = 0; i < 5; i++) {
        // the postmaster's children (backends, checkpointer, WAL writer…) each run in a session of their own: a
        // signal to the postmaster's process group does not reach them
        const pids = yield* Effect.scoped(
          Effect.gen(function* () {
            const admin = yield* clientFor(server.admin.url)
            yield* Effect.forEach([1, 2, 3], () => appClient.pipe(Effect.flatMap((sql) => query(sql, "SELECT 1"))), {
              discard: true
            })
            const rows = yield* query<{ readonly pid: number }>(admin, "SELECT pid FROM pg_stat_activity")
            return rows.map((row) => row.pid)
          })
        )
        assert.isAtLeast(pids.length, 3)
        yield* server.kill
        const outliving = pids.filter(isRunning)
        assert.deepStrictEqual(outliving, [], `repetition ${i + 1}: processes outlived the crash`)
        yield* server.start
        const rows = yield* Effect.scoped(
          Effect.flatMap(appClient, (sql) => query<{ n: number }>(sql, "SELECT 1 AS n"))
        )
        assert.strictEqual(rows[0]?.n, 1)
      }
    })
  )

  it.scoped("PG_URL selects that server and launches nothing", () =>
    Effect.gen(function* () {
      const embedded = yield* PgServer.PgServer
      yield* withEnv({ PG_URL: Redacted.value(embedded.url), PG_ADMIN_URL: Redacted.value(embedded.admin.url) })
      // with no search path, launching a server would fail with PgServerNotInstalled
      const external = yield* serverOf(PgServer.layer({ searchPath: [] }))
      assert.strictEqual(external.kind, "external")
      assert.strictEqual(external.port, embedded.port)
      assert.strictEqual(external.version, embedded.version)
      assert.strictEqual(external.admin.username, embedded.admin.username)
      assert.isTrue(Option.isNone(external.pid))
      assert.isTrue(Option.isNone(external.dataDir))

      const sql = yield* clientFor(external.url)
      const [row] = yield* query<{ readonly user: string }>(sql, "SELECT current_user AS user")
      assert.strictEqual(row?.user, embedded.username)

      assert.strictEqual((yield* Effect.flip(external.restart))._tag, "PgServerUnsupported")
      assert.strictEqual((yield* Effect.flip(external.stop))._tag, "PgServerUnsupported")
    })
  )
})

// --- servers with their own lifetimes ---------------------------------------------------------------------------

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
      `import * as PgServer from ${JSON.stringify(Path.join(testingDir, "src/PgServer.ts"))}`,
      "setInterval(() => {}, 60_000)",
      "Effect.runFork(Effect.scoped(Effect.gen(function* () {",
      "  const server = yield* PgServer.makeEmbedded()",
      "  const print = { pid: Option.getOrThrow(server.pid), dataDir: Option.getOrThrow(server.dataDir), socket: '' }",
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

const tempDir = (prefix: string) =>
  Effect.acquireRelease(
    Effect.sync(() => Fs.mkdtempSync(Path.join(Os.tmpdir(), prefix))),
    (dir) => Effect.sync(() => Fs.rmSync(dir, { recursive: true, force: true }))
  )

describe("PgServer lifecycle", () => {
  it.effect("closing the scope stops the server and removes its files", () =>
    Effect.gen(function* () {
      const print = yield* Effect.scoped(
        Effect.map(PgServer.makeEmbedded(), (server) => {
          const print = footprint(server)
          assertRunning(print)
          return print
        })
      )
      assertGone(print)
    })
  )

  it.scoped("two servers started concurrently get their own port, directory and data", () =>
    Effect.gen(function* () {
      const [a, b] = yield* Effect.all([PgServer.makeEmbedded(), PgServer.makeEmbedded()], {
        concurrency: "unbounded"
      })
      assert.notStrictEqual(a.port, b.port)
      assert.notStrictEqual(Option.getOrThrow(a.dataDir), Option.getOrThrow(b.dataDir))
      assert.notStrictEqual(Option.getOrThrow(a.pid), Option.getOrThrow(b.pid))
      const sqlA = yield* clientFor(a.url)
      const sqlB = yield* clientFor(b.url)
      yield* query(sqlA, "CREATE TABLE only_on_a (id INT)")
      assert.strictEqual(yield* sqlState(sqlB, "SELECT * FROM only_on_a"), "42P01")
      const [row] = yield* query<{ readonly n: number }>(sqlB, "SELECT 1 AS n")
      assert.strictEqual(row?.n, 1)
      // a's password does not open b
      const crossed = new URL(Redacted.value(b.url))
      crossed.password = encodeURIComponent(Redacted.value(a.password))
      const refused = yield* Effect.flip(
        Effect.flatMap(clientFor(Redacted.make(crossed.toString())), (sql) => query(sql, "SELECT 1"))
      )
      assert.strictEqual(refused.code, "28P01")
    })
  )

  it.effect("a failed start carries the exit code and the tail of the server's log, and leaves nothing behind", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(
        Effect.scoped(PgServer.makeEmbedded({ serverArgs: ["-c", "sessionfx_no_such_option=1"] }))
      )
      if (error._tag !== "PgServerStartFailed") {
        return assert.fail(`expected PgServerStartFailed, got ${error._tag}: ${error.message}`)
      }
      assert.strictEqual(error.phase, "start")
      assert.isNotNull(error.exitCode)
      assert.notStrictEqual(error.exitCode, 0)
      assert.isTrue(error.logTail.length > 0)
      assert.isAtMost(error.logTail.length, 40)
      assert.isTrue(error.logTail.some((line) => line.includes("sessionfx_no_such_option")))
      assert.include(error.message, "sessionfx_no_such_option")
      assert.include(error.message, "exit code")
      assert.isString(error.dataDir)
      assert.isFalse(Fs.existsSync(Path.dirname(error.dataDir!)))
      assert.deepStrictEqual(processesMentioning(error.dataDir!), [])
    })
  )

  it.effect("a missing binary fails with PgServerNotInstalled saying what to do", () =>
    Effect.gen(function* () {
      const nowhere = Path.join(Os.tmpdir(), "sessionfx-no-such-dir")
      const error = yield* Effect.flip(Effect.scoped(PgServer.makeEmbedded({ searchPath: [nowhere] })))
      assert.strictEqual(error._tag, "PgServerNotInstalled")
      assert.include(error.message, "apt-get install -y postgresql")
      assert.include(error.message, "PG_URL=postgres://")
      assert.include(error.message, nowhere)
      const fromLayer = yield* Effect.flip(serverOf(PgServer.layer({ searchPath: [] }))).pipe(
        Effect.scoped,
        withConfig({})
      )
      assert.strictEqual(fromLayer._tag, "PgServerNotInstalled")
    })
  )

  it.effect("an invalid or unreachable PG_URL is a typed error that never shows the password", () =>
    Effect.gen(function* () {
      const cases = [
        ["not a url at s3cr3t-pw", "not a valid url"],
        ["mysql://app:s3cr3t-pw@127.0.0.1:3306/app", "unsupported scheme"],
        ["postgres://app:s3cr3t-pw@127.0.0.1:5432", "database name is missing"],
        ["postgresql://:s3cr3t-pw@127.0.0.1/app", "user name is missing"]
      ] as const
      for (const [url, reason] of cases) {
        const error = yield* Effect.flip(Effect.scoped(PgServer.make())).pipe(withConfig({ PG_URL: url }))
        assert.strictEqual(error._tag, "PgServerInvalidUrl")
        assert.include(error.message, "PG_URL")
        assert.include(error.message, reason)
        assert.notInclude(error.message, "s3cr3t-pw")
        assert.notInclude(JSON.stringify(error), "s3cr3t-pw")
      }
      const unreachable = yield* Effect.flip(Effect.scoped(PgServer.make())).pipe(
        withConfig({ PG_URL: "postgresql://app:s3cr3t-pw@127.0.0.1:1/app" })
      )
      assert.strictEqual(unreachable._tag, "PgServerUnavailable")
      assert.include(unreachable.message, "127.0.0.1:1")
      assert.notInclude(unreachable.message, "s3cr3t-pw")
    })
  )

  it.live("when the owner process dies without closing its scope, the watchdog stops the server and cleans up", () =>
    Effect.scoped(
      Effect.gen(function* () {
        const dir = yield* tempDir("sfx-pg-owner-")
        const child = yield* Effect.acquireRelease(
          Effect.sync(() =>
            ChildProcess.spawn(process.execPath, [viteNode, "--config", "vitest.config.ts", ownerScript(dir)], {
              cwd: testingDir,
              stdio: ["ignore", "pipe", "inherit"]
            })
          ),
          (child) => Effect.sync(() => child.kill("SIGKILL"))
        )
        const line = yield* firstLine(child).pipe(Effect.timeout("60 seconds"))
        const print = JSON.parse(line) as Footprint
        assert.isTrue(isRunning(print.pid))

        child.kill("SIGKILL") // no finalizer runs in the owner
        yield* eventually(
          () =>
            !isRunning(print.pid) &&
            !Fs.existsSync(Path.dirname(print.dataDir)) &&
            processesMentioning(print.dataDir).length === 0,
          "30 seconds"
        )
        assertGone(print)
      })
    )
  )
})
