import * as HttpServer from "@effect/platform/HttpServer"
import * as SqlClient from "@effect/sql/SqlClient"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as FiberRef from "effect/FiberRef"
import * as HashSet from "effect/HashSet"
import * as Logger from "effect/Logger"
import * as Layer from "effect/Layer"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as App from "../src/App.js"
import * as Client from "../src/Client.js"
import * as Config from "../src/Config.js"
import { TcpServer } from "../src/Tcp.js"
import { TestDb } from "./dialects.js"

export const TOKEN = "test-token-0123456789"

/**
 * Starts the whole server (TCP + HTTP on free ports) in the current scope, on the test's database. With `logs`, every
 * log line of the server (INFO and above, logfmt) is appended there instead of being dropped.
 */
export const startApp = (overrides: Partial<Config.Settings> = {}, options: { logs?: Array<string> } = {}) =>
  Effect.gen(function* () {
    const db = yield* TestDb
    const settings: Config.Settings = {
      ...Config.defaults,
      databaseUrl: Option.some(db.url),
      tcpPort: 0,
      httpPort: 0,
      poolSize: 6,
      token: Redacted.make(TOKEN),
      ...overrides
    }
    // the server's fibers inherit this: request logs would drown the test output
    const logs = options.logs
    const context = yield* Layer.build(App.layer(settings)).pipe(
      logs === undefined
        ? Effect.locally(FiberRef.currentMinimumLogLevel, LogLevel.Warning)
        : (build) =>
            build.pipe(
              Effect.locally(FiberRef.currentMinimumLogLevel, LogLevel.Info),
              Effect.locally(
                FiberRef.currentLoggers,
                HashSet.make(Logger.map(Logger.logfmtLogger, (line) => void logs.push(line)))
              )
            )
    )
    const tcp = Context.get(context, TcpServer)
    const http = Context.get(context, HttpServer.HttpServer)
    const sql = Context.get(context, SqlClient.SqlClient)
    const address = http.address as HttpServer.TcpAddress
    const connect = (token: string | null = TOKEN) =>
      Client.connect({ host: tcp.host, port: tcp.port, token: token ?? undefined })
    return { tcp, sql, baseUrl: `http://127.0.0.1:${address.port}`, connect }
  })

export const sumBalances = (sql: SqlClient.SqlClient, ids: ReadonlyArray<number>) =>
  Effect.map(
    sql.onDialectOrElse({
      pg: () =>
        sql<{
          total: string
        }>`SELECT CAST(COALESCE(SUM(balance), 0) AS text) AS total FROM accounts WHERE id IN ${sql.in(ids)}`,
      orElse: () =>
        sql<{
          total: number | string | null
        }>`SELECT CAST(COALESCE(SUM(balance), 0) AS SIGNED) AS total FROM accounts WHERE id IN ${sql.in(ids)}`
    }),
    (rows) => Number(rows[0]?.total ?? 0)
  )

export const countTransfers = (sql: SqlClient.SqlClient, ids: ReadonlyArray<number>) =>
  Effect.map(
    sql<{
      n: number | string
    }>`SELECT COUNT(*) AS n FROM transfers WHERE src IN ${sql.in(ids)} OR dst IN ${sql.in(ids)}`,
    (rows) => Number(rows[0]?.n ?? 0)
  )

/** One HTTP request; the body is parsed as JSON when it is JSON. */
export const http = (baseUrl: string, method: string, path: string, body?: unknown, token: string | null = TOKEN) =>
  Effect.promise(async () => {
    const response = await fetch(baseUrl + path, {
      method,
      headers: {
        ...(token === null ? {} : { authorization: `Bearer ${token}` }),
        ...(body === undefined ? {} : { "content-type": "application/json" })
      },
      ...(body === undefined ? {} : { body: typeof body === "string" ? body : JSON.stringify(body) })
    })
    const text = await response.text()
    let json: any = undefined
    try {
      json = JSON.parse(text)
    } catch {
      json = undefined
    }
    return { status: response.status, text, json, type: response.headers.get("content-type") ?? "" }
  })

/**
 * Polls a condition about state outside this process's fibers (sockets the server closed, a database process coming
 * back) until it holds: every 20 ms, for at most `times` tries.
 */
export const until = (check: Effect.Effect<boolean>, times = 500) =>
  Effect.flatMap(check, (ok) => (ok ? Effect.void : Effect.fail("not yet"))).pipe(
    Effect.retry({ schedule: Schedule.spaced("20 millis"), times }),
    Effect.orDie
  )
