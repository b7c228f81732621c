import { Engine } from "@sessionfx/session"
import { MysqlServer } from "@sessionfx/testing"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Mysql from "mysql2/promise"

/** One private server per test file. */
export const ServerLive = MysqlServer.layer()

/** An Engine against the file's server. */
export const engineLayer = (options: Partial<Engine.EngineOptions> = {}) =>
  Layer.unwrapEffect(
    Effect.map(MysqlServer.MysqlServer, (server) => Engine.layer({ url: server.url, pool: { size: 4 }, ...options }))
  )

/** A superuser connection (KILL, processlist, innodb_trx). */
export const adminConnection: Effect.Effect<Mysql.Connection, never, MysqlServer.MysqlServer | Scope.Scope> =
  Effect.flatMap(MysqlServer.MysqlServer, (server) =>
    Effect.acquireRelease(
      Effect.promise(() =>
        Mysql.createConnection({
          host: server.admin.host,
          port: server.admin.port,
          user: server.admin.username,
          password: Redacted.value(server.admin.password),
          multipleStatements: true
        })
      ),
      (conn) => Effect.promise(() => conn.end().catch(() => undefined))
    )
  )

/** Runs one statement on the admin connection. */
export const admin = (conn: Mysql.Connection, sql: string, values?: Array<unknown>) =>
  Effect.promise(() => conn.query(sql, values).then(([rows]) => rows as Array<any>))

/** A fresh connection as the application user, outside any pool. */
export const appConnection: Effect.Effect<Mysql.Connection, never, MysqlServer.MysqlServer | Scope.Scope> =
  Effect.flatMap(MysqlServer.MysqlServer, (server) =>
    Effect.acquireRelease(
      Effect.promise(() => Mysql.createConnection({ uri: Redacted.value(server.url) })),
      (conn) => Effect.promise(() => conn.end().catch(() => undefined))
    )
  )

/** Polls `check` until it holds (observing state the test cannot be told about, e.g. the server's processlist). */
export const eventually = <E, R>(check: Effect.Effect<boolean, E, R>, what: string) =>
  check.pipe(
    Effect.repeat({ schedule: Schedule.spaced("10 millis"), until: (ok) => ok }),
    Effect.timeoutFail({ duration: "10 seconds", onTimeout: () => new Error(`timed out waiting for: ${what}`) })
  )
