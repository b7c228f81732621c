import * as HttpServer from "@effect/platform/HttpServer"
import { assert, it } from "@effect/vitest"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as FiberRef from "effect/FiberRef"
import * as Layer from "effect/Layer"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as App from "../src/App.js"
import * as Client from "../src/Client.js"
import * as Config from "../src/Config.js"
import { TcpServer } from "../src/Tcp.js"
import { http, TOKEN, until } from "./utils.js"

it.scopedLive(
  "the embedded database is restarted when it dies, and the ledger carries on",
  () =>
    Effect.gen(function* () {
      if (process.env.MYSQL_URL !== undefined) {
        return yield* Effect.dieMessage("supervision is of the embedded server: run this test without MYSQL_URL")
      }
      const dir = yield* Effect.acquireRelease(
        Effect.sync(() => Fs.mkdtempSync(Path.join(Os.tmpdir(), "ledger-supervision-"))),
        (d) => Effect.sync(() => Fs.rmSync(d, { recursive: true, force: true }))
      )
      const dataDir = Path.join(dir, "mysql")
      const settings: Config.Settings = {
        ...Config.defaults,
        dataDir,
        tcpPort: 0,
        httpPort: 0,
        poolSize: 4,
        token: Redacted.make(TOKEN)
      }
      const context = yield* Layer.build(App.layer(settings)).pipe(
        Effect.locally(FiberRef.currentMinimumLogLevel, LogLevel.None)
      )
      const tcp = Context.get(context, TcpServer)
      const baseUrl = `http://127.0.0.1:${(Context.get(context, HttpServer.HttpServer).address as HttpServer.TcpAddress).port}`
      const c = yield* Client.connect({ host: tcp.host, port: tcp.port, token: TOKEN })
      const a = (yield* c.call("create_account", { name: "survivor" })).id
      yield* c.call("deposit", { account: a, amount: 500 })
      const healthy = yield* http(baseUrl, "GET", "/health", undefined, null)
      assert.deepStrictEqual(
        [healthy.status, healthy.json.database.kind, healthy.json.database.restarts],
        [200, "embedded", 0]
      )

      // a crash: SIGKILL of the server process
      const pid = Number(Fs.readFileSync(Path.join(dataDir, "mysqld.pid"), "utf8").trim())
      process.kill(pid, "SIGKILL")
      yield* until(
        Effect.map(
          http(baseUrl, "GET", "/health", undefined, null),
          (h) => h.status === 200 && h.json.database.restarts === 1
        ),
        3000
      )
      const after = yield* http(baseUrl, "GET", "/health", undefined, null)
      assert.deepStrictEqual(
        [after.json.database.state, Option.isSome(Option.fromNullable(after.json.database.lastRestartAt))],
        ["running", true]
      )
      assert.notStrictEqual(Number(Fs.readFileSync(Path.join(dataDir, "mysqld.pid"), "utf8").trim()), pid)

      // the same connection carries on; committed money survived the crash
      assert.strictEqual((yield* c.call("balance", { account: a })).balance, 500)
      yield* c.call("deposit", { account: a, amount: 25 })
      assert.strictEqual((yield* c.call("balance", { account: a })).balance, 525)
    }),
  { timeout: 120_000 }
)
