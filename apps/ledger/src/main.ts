/**
 * `tsx src/main.ts serve` serves; `tsx src/main.ts demo` starts the server in-process (on the embedded default unless
 * DATABASE_URL is set), runs the demo client against it over TCP, prints the results, and exits 0 when the total
 * is conserved.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Redacted from "effect/Redacted"
import * as App from "./App.js"
import * as Config from "./Config.js"
import * as Demo from "./Demo.js"
import { TcpServer } from "./Tcp.js"

const LoggerLive = Layer.unwrapEffect(
  Effect.gen(function* () {
    const format = yield* Config.logFormat
    const level = yield* Config.logLevel
    const base =
      format === "json" ? Logger.jsonLogger : format === "pretty" ? Logger.prettyLoggerDefault : Logger.logfmtLogger
    return Layer.merge(
      Logger.replace(Logger.defaultLogger, Logger.withConsoleError(base)),
      Logger.minimumLogLevel(level)
    )
  })
).pipe(Layer.orDie)

const text = (name: string): string | undefined => {
  const i = process.argv.indexOf(`--${name}`)
  return i === -1 ? undefined : process.argv[i + 1]
}

const flag = (name: string, fallback: number) => {
  const raw = text(name)
  const value = raw === undefined ? undefined : Number(raw)
  return value !== undefined && Number.isInteger(value) && value > 0 ? value : fallback
}

const serve = Effect.gen(function* () {
  const settings = yield* Config.fromEnv
  return yield* Layer.launch(App.layer(settings))
})

/** `demo`: against `--host`/`--port` (token: `--token`, else as `serve` finds it) or a server started in-process. */
const demo = Effect.gen(function* () {
  const settings = yield* Config.fromEnv
  const options = {
    connections: flag("connections", 16),
    transfers: flag("transfers", 4000),
    accounts: flag("accounts", 32),
    seed: flag("seed", 42)
  }
  const token = text("token") ?? Redacted.value(settings.token)
  const external = text("port") !== undefined || text("host") !== undefined
  const report = yield* Effect.scoped(
    Effect.gen(function* () {
      const target = external
        ? { host: text("host") ?? "127.0.0.1", port: flag("port", settings.tcpPort) }
        : Context.get(yield* Layer.build(App.layer({ ...settings, tcpPort: 0, httpPort: 0 })), TcpServer)
      const demoOptions = { ...options, host: target.host, port: target.port, token }
      const report = yield* Demo.run(demoOptions)
      yield* Effect.sync(() => process.stdout.write(Demo.format(demoOptions, report) + "\n"))
      return report
    })
  )
  if (!report.conserved) return yield* Effect.dieMessage("the total balance was not conserved")
})

const command = process.argv[2] ?? "serve"
const program =
  command === "serve"
    ? serve
    : command === "demo"
      ? demo
      : Effect.dieMessage(`unknown command "${command}"; use "serve" or "demo"`)

NodeRuntime.runMain(program.pipe(Effect.provide(LoggerLive)), { disablePrettyLogger: true })
