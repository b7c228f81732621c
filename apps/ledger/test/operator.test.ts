/**
 * What an operator expects (issue 23): the built server (`pnpm build`, run by node) answers --help and --version,
 * reports a configuration error as one line with exit code 1, logs a start-up summary, drains and exits 0 on
 * SIGTERM; the embedded database is durable unless told otherwise.
 */
import { assert, it, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { MysqlServer } from "@sessionfx/testing"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import * as HashSet from "effect/HashSet"
import * as Logger from "effect/Logger"
import * as Layer from "effect/Layer"
import * as LogLevel from "effect/LogLevel"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Mysql from "mysql2/promise"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as App from "../src/App.js"
import * as Client from "../src/Client.js"
import * as Config from "../src/Config.js"
import { TOKEN } from "./utils.js"
import { mariadb } from "./dialects.js"

const appDir = Path.resolve(import.meta.dirname, "..")
const main = Path.join(appDir, "dist", "main.js")

/** Builds the server once per file, as `scripts/start.sh` does. */
const built = Effect.sync(() => {
  ChildProcess.execFileSync("pnpm", ["-s", "build"], { cwd: appDir, stdio: "pipe" })
  return main
}).pipe(Effect.cached, Effect.runSync)

const run = (args: ReadonlyArray<string>, env: Record<string, string> = {}) =>
  Effect.flatMap(built, (file) =>
    Effect.async<{ code: number | null; stdout: string; stderr: string }>((resume) => {
      const child = ChildProcess.spawn(process.execPath, [file, ...args], {
        cwd: appDir,
        env: { PATH: process.env.PATH ?? "", LEDGER_DATA_DIR: Path.join(Os.tmpdir(), "ledger-op-none"), ...env }
      })
      let stdout = ""
      let stderr = ""
      child.stdout.on("data", (d) => (stdout += d))
      child.stderr.on("data", (d) => (stderr += d))
      child.on("close", (code) => resume(Effect.succeed({ code, stdout, stderr })))
    })
  )

/** Polls `condition` until it holds (bounded by the test's timeout). */
const until = (condition: Effect.Effect<boolean>) =>
  Effect.repeat(condition, { until: (ok) => ok, schedule: Schedule.spaced("20 millis") })

it.effect("--help and --version print and exit 0", () =>
  Effect.gen(function* () {
    const help = yield* run(["--help"])
    assert.strictEqual(help.code, 0)
    assert.match(help.stdout, /^Usage: ledger/m)
    assert.match(help.stdout, /--fast-unsafe/)
    const version = yield* run(["--version"])
    assert.strictEqual(version.code, 0)
    assert.match(version.stdout, /^ledger \d+\.\d+\.\d+\n$/)
  })
)

it.effect("a configuration error is one line on stderr and exit code 1, no stack trace", () =>
  Effect.gen(function* () {
    const cases: ReadonlyArray<readonly [Record<string, string>, RegExp]> = [
      [{ LEDGER_TOKEN: "x".repeat(20), LEDGER_TCP_PORT: "seventy" }, /LEDGER_TCP_PORT/],
      [{ LEDGER_TOKEN: "short" }, /LEDGER_TOKEN must be at least 16 characters/],
      [{ LEDGER_TOKEN: "" }, /LEDGER_TOKEN must be at least 16 characters/],
      [{ LEDGER_TOKEN: "x".repeat(20), LEDGER_POOL_SIZE: "0" }, /LEDGER_POOL_SIZE/],
      [{ LEDGER_TOKEN: "x".repeat(20), LEDGER_IDLE_TIMEOUT: "soon" }, /LEDGER_IDLE_TIMEOUT/]
    ]
    for (const [env, pattern] of cases) {
      const r = yield* run(["serve"], env)
      assert.strictEqual(r.code, 1, JSON.stringify(env))
      const lines = r.stderr.split("\n").filter((l) => l !== "")
      assert.strictEqual(lines.length, 1, r.stderr)
      assert.match(lines[0]!, /^ledger: configuration error: /)
      assert.match(lines[0]!, pattern)
      assert.notMatch(r.stderr, /\bat .*:\d+:\d+/)
    }
    // the command line too: nothing unknown or malformed is ignored
    const token = { LEDGER_TOKEN: "x".repeat(20) }
    const argvCases: ReadonlyArray<readonly [ReadonlyArray<string>, RegExp]> = [
      [["launch"], /unknown command "launch"/],
      [["serve", "--bogus"], /--bogus/],
      [["--fast-unsafe=maybe"], /--fast-unsafe/],
      [["serve", "extra"], /unexpected argument "extra"/],
      [["serve", "--connections", "5"], /--connections is an option of "demo"/],
      [["demo", "--connections", "abc"], /--connections: expected an integer from 1/],
      [["demo", "--transfers", "-5"], /--transfers/],
      [["demo", "--accounts", "1e3"], /--accounts: expected an integer/],
      [["demo", "--port", "70000"], /--port: expected an integer from 1 to 65535/],
      [["demo", "--seed"], /--seed/]
    ]
    for (const [args, pattern] of argvCases) {
      const r = yield* run(args, token)
      assert.strictEqual(r.code, 1, args.join(" "))
      const lines = r.stderr.split("\n").filter((l) => l !== "")
      assert.strictEqual(lines.length, 1, r.stderr)
      assert.match(lines[0]!, /^ledger: configuration error: /)
      assert.match(lines[0]!, pattern)
    }
  })
)

layer(mariadb, { timeout: 120_000, excludeTestServices: true })("ledger as operated", (it) => {
  it.scoped(
    "the built server logs a start-up summary, serves, and on SIGTERM finishes the TCP and HTTP requests in flight and exits 0",
    () =>
      Effect.gen(function* () {
        const server = yield* MysqlServer.MysqlServer
        const file = yield* built
        const url = Redacted.value(server.url)
        const child = yield* Effect.acquireRelease(
          Effect.sync(() =>
            ChildProcess.spawn(process.execPath, [file, "serve"], {
              cwd: appDir,
              detached: true,
              env: {
                PATH: process.env.PATH ?? "",
                DATABASE_URL: url,
                LEDGER_TOKEN: TOKEN,
                LEDGER_TCP_PORT: "0",
                LEDGER_HTTP_PORT: "0",
                LEDGER_LOG_FORMAT: "logfmt"
              }
            })
          ),
          (c) => Effect.sync(() => c.exitCode === null && c.kill("SIGKILL"))
        )
        let stderr = ""
        child.stderr.on("data", (d) => (stderr += d))
        const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)))
        const summary = yield* Effect.async<string>((resume) => {
          const check = () => {
            const line = stderr.split("\n").find((l) => l.includes('message="ledger started"'))
            if (line !== undefined) {
              child.stderr.off("data", check)
              resume(Effect.succeed(line))
            }
          }
          child.stderr.on("data", check)
        })
        for (const field of ["tcp=", "http=", "database=", "durability=", "pool_size=10", "limits=", "timeouts="]) {
          assert.include(summary, field)
        }
        const password = new URL(url).password
        if (password !== "") assert.notInclude(stderr, password)
        const port = Number(/tcp=[\d.]+:(\d+)/.exec(summary)![1])
        // a client in the middle of its work when SIGTERM arrives: its transfer waits for a row lock held elsewhere
        const c = yield* Client.connect({ host: "127.0.0.1", port, token: TOKEN })
        const a = (yield* c.call("create_account", { name: "op-a" })).id
        const b = (yield* c.call("create_account", { name: "op-b" })).id
        yield* c.call("deposit", { account: a, amount: 10 })
        const holder = yield* Effect.acquireRelease(
          Effect.promise(() => Mysql.createConnection(url)),
          (conn) => Effect.promise(() => conn.end())
        )
        yield* Effect.promise(() => holder.query("BEGIN"))
        yield* Effect.promise(() => holder.query("SELECT balance FROM accounts WHERE id = ? FOR UPDATE", [a]))
        const transfer = yield* Effect.fork(c.request({ id: "in-flight", op: "transfer", from: a, to: b, amount: 3 }))
        // a request has begun once the ledger has lent it a connection (its unit waits for the lock from then on);
        // one over TCP, then one over HTTP
        const httpPort = Number(/http=[\d.]+:(\d+)/.exec(summary)![1])
        yield* until(
          Effect.promise(() => fetch(`http://127.0.0.1:${httpPort}/metrics`).then((r) => r.text())).pipe(
            Effect.map((metrics) => /^sessionfx_pool_in_use(\{[^}]*\})? [1-9]/m.test(metrics))
          )
        )
        const viaHttp = yield* Effect.fork(
          Effect.promise(() =>
            fetch(`http://127.0.0.1:${httpPort}/transfers`, {
              method: "POST",
              headers: { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" },
              body: JSON.stringify({ from: a, to: b, amount: 2 })
            }).then(
              async (r) => ({ status: r.status, text: await r.text() }),
              (e) => ({ status: 0, text: String(e) })
            )
          )
        )
        yield* until(
          Effect.promise(() => fetch(`http://127.0.0.1:${httpPort}/metrics`).then((r) => r.text())).pipe(
            Effect.map((metrics) => /^sessionfx_pool_in_use(\{[^}]*\})? [2-9]/m.test(metrics))
          )
        )
        process.kill(-child.pid!, "SIGTERM")
        // the server starts draining with the request in flight, and only then is the lock released
        yield* until(Effect.sync(() => stderr.includes('message="ledger TCP server draining"')))
        yield* Effect.promise(() => holder.query("ROLLBACK"))
        const answer = yield* Fiber.join(transfer)
        const httpAnswer = yield* Fiber.join(viaHttp)
        assert.strictEqual(httpAnswer.status, 200, httpAnswer.text)
        assert.deepStrictEqual([answer.id, answer.ok], ["in-flight", true])
        const code = yield* Effect.promise(() => exited)
        assert.strictEqual(code, 0, stderr)
        const stopped = stderr.split("\n").find((l) => l.includes('message="ledger TCP server stopped"')) ?? ""
        for (const field of [
          "connections_closed=1",
          "requests_in_flight=1",
          "requests_finished=1",
          "requests_interrupted=0"
        ]) {
          assert.include(stopped, field)
        }
        assert.match(stderr, /message="ledger stopped/)
        const [[row]] = (yield* Effect.promise(() =>
          holder.query("SELECT balance FROM accounts WHERE id = ?", [b])
        )) as unknown as [[{ balance: number }]]
        assert.strictEqual(Number(row!.balance), 5)
        assert.notMatch(stderr, /level=(ERROR|FATAL)/)
        yield* c.closed
      })
  )
})

it.scopedLive(
  "the embedded database is durable by default; fast-unsafe is an explicit choice, and the summary says which",
  () =>
    Effect.gen(function* () {
      const dir = yield* Effect.acquireRelease(
        Effect.sync(() => Fs.mkdtempSync(Path.join(Os.tmpdir(), "ledger-durable-"))),
        (d) => Effect.sync(() => Fs.rmSync(d, { recursive: true, force: true }))
      )
      const settingsOf = (fastUnsafe: boolean): Config.Settings => ({
        ...Config.defaults,
        dataDir: Path.join(dir, "mysql"),
        tcpPort: 0,
        httpPort: 0,
        poolSize: 2,
        token: Redacted.make(TOKEN),
        fastUnsafe
      })
      const settingsIn = (fastUnsafe: boolean) =>
        Effect.scoped(
          Effect.gen(function* () {
            const logs: Array<string> = []
            const context = yield* Layer.build(App.layer(settingsOf(fastUnsafe))).pipe(
              Effect.locally(FiberRef.currentMinimumLogLevel, LogLevel.Info),
              Effect.locally(
                FiberRef.currentLoggers,
                HashSet.make(Logger.map(Logger.logfmtLogger, (line) => void logs.push(line)))
              )
            )
            const sql = Context.get(context, SqlClient.SqlClient)
            const [row] = yield* sql<{ flush: number; doublewrite: number }>`
              SELECT @@innodb_flush_log_at_trx_commit AS flush, @@innodb_doublewrite AS doublewrite`
            const summary = logs.find((l) => l.includes('message="ledger started"')) ?? ""
            return [Number(row!.flush), Number(row!.doublewrite), /durability="?([a-z-]+)/.exec(summary)?.[1]]
          })
        )
      assert.deepStrictEqual(yield* settingsIn(false), [1, 1, "durable"])
      assert.deepStrictEqual(yield* settingsIn(true), [2, 0, "fast-unsafe"])
    }),
  120_000
)
