/**
 * The ledger's command line: `serve` (the default) serves; `demo` starts the server in-process (on the embedded
 * default unless DATABASE_URL is set), runs the demo client against it over TCP, prints the results, and exits 0
 * when the total is conserved. `--help`, `--version`; a configuration error is one line on stderr and exit code 1;
 * SIGTERM or SIGINT drains and exits 0.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Redacted from "effect/Redacted"
import { createRequire } from "node:module"
import * as App from "./App.js"
import * as Cli from "./Cli.js"
import * as Config from "./Config.js"
import * as Demo from "./Demo.js"
import { TcpServer } from "./Tcp.js"

/** The version in apps/ledger/package.json (one directory up from src/ and from the built dist/). */
const version = (): string => {
  try {
    return (createRequire(import.meta.url)("../package.json") as { version: string }).version
  } catch {
    return "unknown"
  }
}

const usage = `ledger — a ledger over MySQL/MariaDB or PostgreSQL: a TCP line protocol and an HTTP JSON API

Usage: ledger [serve | demo] [options]

Commands:
  serve            serve TCP (LEDGER_TCP_PORT, default 7070) and HTTP (LEDGER_HTTP_PORT, default 8080) (default)
  demo             start a server in-process (or use --host/--port) and run the demo client against it

Options:
  --fast-unsafe    embedded database only: do not flush every commit to disk (an OS crash or power loss can lose
                   acknowledged transfers); the same as LEDGER_FAST_UNSAFE=true
  --help, -h       print this help and exit
  --version        print the version and exit
  demo only: --connections N --transfers N --accounts N --seed N --host H --port P --token T

An unknown option, a malformed value or an extra argument is a configuration error.

Configuration is read from environment variables (DATABASE_URL: mysql://… or postgres://…, LEDGER_TOKEN, LEDGER_* —
see docs/ledger.md).
Without DATABASE_URL an embedded MariaDB/MySQL server keeps its data under LEDGER_DATA_DIR (default .data/mysql).
A configuration error is reported on one line and the exit code is 1. SIGTERM or SIGINT drains and exits 0.
`

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
)

const cli = Cli.parse(process.argv.slice(2))

const settings = (fastUnsafe: boolean) =>
  Effect.map(Config.fromEnv, (s) => (fastUnsafe ? { ...s, fastUnsafe: true } : s))

const serve = (fastUnsafe: boolean) =>
  Effect.gen(function* () {
    const resolved = yield* settings(fastUnsafe)
    return yield* Layer.launch(App.layer(resolved)).pipe(
      Effect.onInterrupt(() => Effect.logInfo("ledger stopped: every connection drained"))
    )
  })

/** `demo`: against `--host`/`--port` (token: `--token`, else as `serve` finds it) or a server started in-process. */
const demo = (fastUnsafe: boolean, options: Cli.DemoOptions) =>
  Effect.gen(function* () {
    const resolved = yield* settings(fastUnsafe)
    const token = options.token ?? Redacted.value(resolved.token)
    const external = options.port !== undefined || options.host !== undefined
    const report = yield* Effect.scoped(
      Effect.gen(function* () {
        const target = external
          ? { host: options.host ?? "127.0.0.1", port: options.port ?? resolved.tcpPort }
          : Context.get(yield* Layer.build(App.layer({ ...resolved, tcpPort: 0, httpPort: 0 })), TcpServer)
        const demoOptions = { ...options, host: target.host, port: target.port, token }
        const report = yield* Demo.run(demoOptions)
        yield* Effect.sync(() => process.stdout.write(Demo.format(demoOptions, report) + "\n"))
        return report
      })
    )
    if (!report.conserved) return yield* Effect.dieMessage("the total balance was not conserved")
  })

const named = (path: ReadonlyArray<string>, message: string) =>
  (path.length === 0 ? message : `${path.join("_")}: ${message}`).replace(/\s*\n\s*/g, " ")

/** A configuration error as one line: every problem, `NAME: what is wrong`, separated by `; `. */
export const configLine = (error: ConfigError.ConfigError): string =>
  ConfigError.reduceWithContext(error, undefined, {
    andCase: (_, l: string, r: string) => `${l}; ${r}`,
    orCase: (_, l: string, r: string) => `${l}; or ${r}`,
    invalidDataCase: (_, path, message) => named(path, message),
    missingDataCase: (_, path, message) => named(path, message),
    sourceUnavailableCase: (_, path, message) => named(path, message),
    unsupportedCase: (_, path, message) => named(path, message)
  })

const fail = (line: string) =>
  Effect.sync(() => {
    process.stderr.write(`ledger: ${line}\n`)
    process.exit(1)
  })

switch (cli._tag) {
  case "Help":
    process.stdout.write(usage)
    process.exit(0)
    break
  case "Version":
    process.stdout.write(`ledger ${version()}\n`)
    process.exit(0)
    break
  case "Invalid":
    process.stderr.write(`ledger: configuration error: ${cli.message}\n`)
    process.exit(1)
}

/** A failure to start (the database unreachable, a port taken…): one ERROR line, exit code 1. */
const cannotStart = (e: { readonly _tag: string; readonly message?: string }) =>
  Effect.zipRight(
    Effect.logError("ledger cannot start").pipe(Effect.annotateLogs({ error: e._tag, reason: e.message ?? "" })),
    fail(`cannot start: ${e._tag}: ${(e.message ?? "").split("\n")[0]}`)
  )

const program = (
  cli._tag === "Demo" ? demo(cli.fastUnsafe, cli.demo) : serve(cli._tag === "Serve" && cli.fastUnsafe)
).pipe(
  Effect.catchTag("ConfigError", (e: ConfigError.ConfigError) => fail(`configuration error: ${configLine(e)}`)),
  Effect.catchAll(cannotStart),
  Effect.tapDefect((defect) => Effect.logError("ledger failed", defect)),
  Effect.provide(LoggerLive),
  Effect.catchTag("ConfigError", (e: ConfigError.ConfigError) => fail(`configuration error: ${configLine(e)}`))
)

NodeRuntime.runMain(program, { disablePrettyLogger: true })
