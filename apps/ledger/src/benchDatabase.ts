/**
 * The database of the ledger's benchmark (src/bench.ts): an embedded MariaDB (`--db mariadb`, the default) or
 * PostgreSQL (`--db postgres`), durable unless `--fast-unsafe`, reached over TCP or its unix socket (`--socket`).
 */
import { MysqlServer, PgServer } from "@sessionfx/testing"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as ChildProcess from "node:child_process"
import { durabilityArgs } from "./App.js"

export interface Options {
  readonly fastUnsafe: boolean
  readonly overSocket: boolean
  /** where `mysql2` resolves from (the status reader runs there) */
  readonly appDir: string
}

export interface BenchDatabase {
  /** flavor and version */
  readonly label: string
  /** the ledger's `DATABASE_URL` */
  readonly url: string
  /** the reference server's url (PyMySQL): MariaDB only */
  readonly pyUrl: string | undefined
  /** the server's process (PostgreSQL: the postmaster, whose children are the backends) */
  readonly dbPid: number
  /** the server's status counters (`Questions` and others), read synchronously; none on PostgreSQL */
  readonly status: () => Record<string, number> | undefined
}

/** The database of the benchmark when it is MariaDB: its url (and PyMySQL's), its process, its statement counter. */
export const mariadb = (options: Options) =>
  Effect.gen(function* () {
    const { appDir, fastUnsafe, overSocket } = options
    const db = yield* MysqlServer.make({ serverArgs: durabilityArgs(fastUnsafe) })
    const dbPid = db.pid._tag === "Some" ? db.pid.value : undefined
    if (dbPid === undefined)
      return yield* Effect.dieMessage("the benchmark needs an embedded database (unset MYSQL_URL)")
    const socketPath = db.socketPath._tag === "Some" ? db.socketPath.value : undefined
    if (overSocket && socketPath === undefined) return yield* Effect.dieMessage("--socket needs the embedded server")
    const tcpUrl = Redacted.value(db.url)
    const url = overSocket
      ? `${tcpUrl}${tcpUrl.includes("?") ? "&" : "?"}socket=${encodeURIComponent(socketPath!)}`
      : tcpUrl
    const pyUrl = overSocket
      ? `${tcpUrl.replace(/^mysql:/, "mysql+pymysql:")}${tcpUrl.includes("?") ? "&" : "?"}unix_socket=${encodeURIComponent(socketPath!)}`
      : tcpUrl.replace(/^mysql:/, "mysql+pymysql:")
    // a synchronous read of the counter between runs: a child process keeps the demo's event loop out of it
    const admin = Redacted.value(db.admin.url)
    const counters = [
      "Questions",
      "Com_stmt_prepare",
      "Com_stmt_execute",
      "Com_begin",
      "Com_commit",
      "Com_rollback",
      "Com_reset_connection",
      "Connections",
      "Innodb_row_lock_waits",
      "Innodb_row_lock_time"
    ]
    const read =
      `require("mysql2/promise").createConnection(${JSON.stringify(admin)}).then(async (c) => {` +
      `const [r] = await c.query("SHOW GLOBAL STATUS WHERE Variable_name IN (${counters.map((n) => `'${n}'`).join(", ")})");` +
      `process.stdout.write(JSON.stringify(Object.fromEntries(r.map((x) => [x.Variable_name, Number(x.Value)])))); c.end() })`
    const status = () => {
      const out = ChildProcess.execFileSync(process.execPath, ["-e", read], { cwd: appDir })
      return JSON.parse(out.toString()) as Record<string, number>
    }
    return { label: `${db.flavor} ${db.version}`, url, pyUrl, dbPid, status } satisfies BenchDatabase
  })

/** The database of the benchmark when it is PostgreSQL: durable as MariaDB is, or with the fast, unsafe settings. */
export const postgres = (options: Options) =>
  Effect.gen(function* () {
    const { fastUnsafe, overSocket } = options
    const durability = fastUnsafe
      ? ["fsync=on", "synchronous_commit=off", "full_page_writes=off"]
      : ["fsync=on", "synchronous_commit=on", "full_page_writes=on"]
    const db = yield* PgServer.make({ serverArgs: durability.flatMap((setting) => ["-c", setting]) })
    const dbPid = db.pid._tag === "Some" ? db.pid.value : undefined
    if (dbPid === undefined) return yield* Effect.dieMessage("the benchmark needs an embedded database (unset PG_URL)")
    const socketDir = db.socketDir._tag === "Some" ? db.socketDir.value : undefined
    if (overSocket && socketDir === undefined) return yield* Effect.dieMessage("--socket needs the embedded server")
    const tcpUrl = Redacted.value(db.url)
    const url = overSocket
      ? `${tcpUrl}${tcpUrl.includes("?") ? "&" : "?"}host=${encodeURIComponent(socketDir!)}`
      : tcpUrl
    // PostgreSQL keeps no count of the statements it received (without pg_stat_statements)
    return {
      label: `postgresql ${db.version}`,
      url,
      pyUrl: undefined,
      dbPid,
      status: () => undefined
    } satisfies BenchDatabase
  })
