/**
 * The superuser side of the reliability tests: processlist, innodb_trx, KILL, a held row lock. Each query opens
 * its own connection, so it keeps working across a server restart.
 */
import type { MysqlServer } from "@sessionfx/testing"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as Mysql from "mysql2/promise"

export type Server = MysqlServer.MysqlServer["Type"]

const options = (server: Server): Mysql.ConnectionOptions => ({
  host: server.admin.host,
  port: server.admin.port,
  user: server.admin.username,
  password: Redacted.value(server.admin.password),
  database: server.database,
  connectTimeout: 5_000,
  supportBigNumbers: true,
  bigNumberStrings: true
})

/** One query as the superuser on a connection of its own. */
export const query = <A = Record<string, any>>(server: Server, sql: string, params: ReadonlyArray<unknown> = []) =>
  Effect.tryPromise({
    try: async () => {
      const conn = await Mysql.createConnection(options(server))
      try {
        const [rows] = await conn.query(sql, params as Array<unknown>)
        return rows as unknown as ReadonlyArray<A>
      } finally {
        conn.destroy()
      }
    },
    catch: (cause) => new Error(`admin query failed: ${sql}: ${String((cause as Error)?.message ?? cause)}`)
  })

/** `KILL QUERY id` / `KILL CONNECTION id`; false when the server refused (e.g. the id is already gone). */
export const kill = (server: Server, kind: "QUERY" | "CONNECTION", id: number) =>
  Effect.match(query(server, `KILL ${kind} ${Math.trunc(id)}`), { onFailure: () => false, onSuccess: () => true })

/** A superuser connection held for the scope (closed on release). */
export const connection = (server: Server) =>
  Effect.acquireRelease(
    Effect.promise(() => Mysql.createConnection(options(server))),
    (conn) => Effect.sync(() => conn.destroy())
  )
