/**
 * The database under a fault test, whichever it is: its application url, the server's lifecycle (restart, crash),
 * and the superuser side of the checks (processlist / pg_stat_activity, KILL / pg_cancel_backend /
 * pg_terminate_backend, a row lock held outside the workload, the idle-in-transaction timeout). Every superuser
 * statement opens a connection of its own, so it keeps working across a server restart. A server that cannot start
 * fails the suite with its reason (the layer's error); nothing is skipped.
 */
import { Engine } from "@sessionfx/session"
import { MysqlServer, PgServer } from "@sessionfx/testing"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import type * as Scope from "effect/Scope"
import * as Pg from "pg"
import * as Admin from "./admin.js"

export type DbName = "mariadb" | "postgres"

export interface Db {
  readonly name: DbName
  /** The application's url, and where the server listens (the fault proxy's target). */
  readonly url: Redacted.Redacted<string>
  readonly host: string
  readonly port: number
  /** Fast shutdown, then start: clients see their connections drop; same port, same data. */
  readonly restart: Effect.Effect<void, unknown>
  /** SIGKILL of the server's processes, then start (crash recovery). */
  readonly crash: Effect.Effect<void, unknown>
  /** One statement as the superuser; `?` placeholders on both. */
  readonly query: <A = Record<string, any>>(
    sql: string,
    params?: ReadonlyArray<unknown>
  ) => Effect.Effect<ReadonlyArray<A>, Error>
  /**
   * Stops the statement of connection `id` (`QUERY`: KILL QUERY / pg_cancel_backend) or ends the connection
   * (`CONNECTION`: KILL CONNECTION / pg_terminate_backend); false when the server refused or the id is gone.
   */
  readonly kill: (kind: "QUERY" | "CONNECTION", id: number) => Effect.Effect<boolean>
  /**
   * One superuser connection held for the scope (opened now: it keeps working when the server is full later), for
   * statements with `?` placeholders.
   */
  readonly held: Effect.Effect<
    <A = Record<string, any>>(sql: string, params?: ReadonlyArray<unknown>) => Effect.Effect<ReadonlyArray<A>, Error>,
    Error,
    Scope.Scope
  >
  /** `kill` on one superuser connection held for the scope: for a fault loop (no connection set-up per kill). */
  readonly killer: Effect.Effect<
    (kind: "QUERY" | "CONNECTION", id: number) => Effect.Effect<boolean>,
    Error,
    Scope.Scope
  >
  /**
   * Transactions of the application user open on the server now (PostgreSQL: a failed one too, whose `xact_start` the
   * server has already cleared while it waits for ROLLBACK).
   */
  readonly openTransactions: Effect.Effect<number, Error>
  /** Connections of the application user the server holds now. */
  readonly appConnections: Effect.Effect<number, Error>
  /** Statements of the application user waiting for a row lock now (InnoDB's LOCK WAIT / a `Lock` wait event). */
  readonly lockWaits: Effect.Effect<number, Error>
  /** Whether the server still holds connection `id`. */
  readonly holds: (id: number) => Effect.Effect<boolean, Error>
  /** A superuser transaction holding `lockSql`'s row locks for the scope (rolled back and closed on release). */
  readonly holdLocks: (lockSql: string) => Effect.Effect<void, Error, Scope.Scope>
  /**
   * A transaction idle longer than `seconds` ends its connection (new application connections from now on):
   * MariaDB's `idle_transaction_timeout`, PostgreSQL's `idle_in_transaction_session_timeout`. Undone on release.
   */
  readonly idleInTransactionTimeout: (seconds: number) => Effect.Effect<void, Error, Scope.Scope>
  /** Whether a client → server chunk carries a unit's COMMIT (a COM_QUERY packet / the extended protocol's Parse). */
  readonly isCommit: (chunk: Buffer) => boolean
}

export class DbTag extends Context.Tag("test/reliability/Db")<DbTag, Db>() {}

const mariadb = (server: Admin.Server): Db => ({
  name: "mariadb",
  url: server.url,
  host: server.host,
  port: server.port,
  restart: server.restart,
  crash: Effect.zipRight(server.kill, server.start),
  query: (sql, params) => Admin.query(server, sql, params),
  kill: (kind, id) => Admin.kill(server, kind, id),
  held: Effect.map(
    Admin.connection(server),
    (conn) =>
      <A>(sql: string, params: ReadonlyArray<unknown> = []) =>
        Effect.tryPromise({
          try: () => conn.query(sql, params as Array<unknown>).then(([rows]) => rows as unknown as ReadonlyArray<A>),
          catch: (cause) => new Error(`admin query failed: ${sql}: ${String((cause as Error)?.message ?? cause)}`)
        })
  ),
  killer: Effect.map(
    Admin.connection(server),
    (conn) => (kind, id) =>
      Effect.promise(() =>
        conn.query(`KILL ${kind} ${Math.trunc(id)}`).then(
          () => true,
          () => false
        )
      )
  ),
  openTransactions: Effect.map(
    Admin.query<{ n: string }>(
      server,
      `SELECT COUNT(*) AS n FROM information_schema.innodb_trx t
         JOIN information_schema.processlist p ON t.trx_mysql_thread_id = p.id
        WHERE p.user = ?`,
      [server.username]
    ),
    (rows) => Number(rows[0]?.n ?? 0)
  ),
  appConnections: Effect.map(
    Admin.query<{ n: string }>(server, `SELECT COUNT(*) AS n FROM information_schema.processlist WHERE user = ?`, [
      server.username
    ]),
    (rows) => Number(rows[0]?.n ?? 0)
  ),
  // (innodb_trx is refreshed only after 100 ms without a read: poll it more slowly, `trxPoll`)
  lockWaits: Effect.map(
    Admin.query<{ n: string }>(
      server,
      `SELECT COUNT(*) AS n FROM information_schema.innodb_trx t
         JOIN information_schema.processlist p ON t.trx_mysql_thread_id = p.id
        WHERE p.user = ? AND t.trx_state = 'LOCK WAIT'`,
      [server.username]
    ),
    (rows) => Number(rows[0]?.n ?? 0)
  ),
  holds: (id) =>
    Effect.map(
      Admin.query<{ n: string }>(server, `SELECT COUNT(*) AS n FROM information_schema.processlist WHERE id = ?`, [id]),
      (rows) => Number(rows[0]?.n ?? 0) > 0
    ),
  holdLocks: (lockSql) =>
    Effect.asVoid(
      Effect.acquireRelease(
        Effect.flatMap(Admin.connection(server), (conn) =>
          Effect.as(
            Effect.promise(async () => {
              await conn.query("START TRANSACTION")
              await conn.query(lockSql)
            }),
            conn
          )
        ),
        (conn) => Effect.promise(() => conn.query("ROLLBACK").catch(() => undefined))
      )
    ),
  idleInTransactionTimeout: (seconds) =>
    Effect.acquireRelease(
      Effect.asVoid(Admin.query(server, `SET GLOBAL idle_transaction_timeout = ${Math.ceil(seconds)}`)),
      () => Effect.orDie(Admin.query(server, "SET GLOBAL idle_transaction_timeout = 0"))
    ),
  // exactly a COM_QUERY "COMMIT" packet (3-byte length, sequence id, 0x03, text)
  isCommit: (chunk) => chunk.length === 11 && chunk[4] === 3 && chunk.subarray(5).toString("latin1") === "COMMIT"
})

const numbered = (sql: string): string => {
  let i = 0
  return sql.replace(/\?/g, () => `$${++i}`)
}

type PgService = PgServer.PgServer["Type"]

const kill = (kind: "QUERY" | "CONNECTION") =>
  kind === "QUERY" ? "SELECT pg_cancel_backend($1::int) AS ok" : "SELECT pg_terminate_backend($1::int) AS ok"

const pgConnect = (server: PgService) =>
  Effect.tryPromise({
    try: async () => {
      const client = new Pg.Client({
        connectionString: Redacted.value(server.admin.url),
        connectionTimeoutMillis: 5_000
      })
      // a server that ends the connection (restart, terminate) must not crash the test process
      client.on("error", () => undefined)
      await client.connect()
      return client
    },
    catch: (cause) => new Error(`admin connect failed: ${String((cause as Error)?.message ?? cause)}`)
  })

const pgQuery =
  (server: PgService) =>
  <A = Record<string, any>>(sql: string, params: ReadonlyArray<unknown> = []) =>
    Effect.acquireUseRelease(
      pgConnect(server),
      (client) =>
        Effect.tryPromise({
          try: async () => (await client.query(numbered(sql), params as Array<unknown>)).rows as ReadonlyArray<A>,
          catch: (cause) => new Error(`admin query failed: ${sql}: ${String((cause as Error)?.message ?? cause)}`)
        }),
      (client) => Effect.promise(() => client.end().catch(() => undefined))
    )

const postgres = (server: PgService): Db => {
  const query = pgQuery(server)
  const count = (sql: string, params: ReadonlyArray<unknown>) =>
    Effect.map(query<{ n: string }>(sql, params), (rows) => Number(rows[0]?.n ?? 0))
  return {
    name: "postgres",
    url: server.url,
    host: server.host,
    port: server.port,
    restart: server.restart,
    crash: Effect.zipRight(server.kill, server.start),
    query,
    kill: (kind, id) =>
      Effect.match(query<{ ok: boolean }>(kill(kind).replace("$1", "?"), [Math.trunc(id)]), {
        onFailure: () => false,
        onSuccess: (rows) => rows[0]?.ok === true
      }),
    held: Effect.map(
      Effect.acquireRelease(pgConnect(server), (client) => Effect.promise(() => client.end().catch(() => undefined))),
      (client) =>
        <A>(sql: string, params: ReadonlyArray<unknown> = []) =>
          Effect.tryPromise({
            try: async () => (await client.query(numbered(sql), params as Array<unknown>)).rows as ReadonlyArray<A>,
            catch: (cause) => new Error(`admin query failed: ${sql}: ${String((cause as Error)?.message ?? cause)}`)
          })
    ),
    killer: Effect.map(
      Effect.acquireRelease(pgConnect(server), (client) => Effect.promise(() => client.end().catch(() => undefined))),
      (client) => (kind, id) =>
        Effect.promise(() =>
          client.query<{ ok: boolean }>(kill(kind), [Math.trunc(id)]).then(
            (r) => r.rows[0]?.ok === true,
            () => false
          )
        )
    ),
    openTransactions: count(
      `SELECT count(*) AS n FROM pg_stat_activity WHERE usename = ? AND (xact_start IS NOT NULL OR state = 'idle in transaction (aborted)')`,
      [server.username]
    ),
    appConnections: count(`SELECT count(*) AS n FROM pg_stat_activity WHERE usename = ?`, [server.username]),
    lockWaits: count(`SELECT count(*) AS n FROM pg_stat_activity WHERE usename = ? AND wait_event_type = 'Lock'`, [
      server.username
    ]),
    holds: (id) =>
      Effect.map(count(`SELECT count(*) AS n FROM pg_stat_activity WHERE pid = ?::int`, [id]), (n) => n > 0),
    holdLocks: (lockSql) =>
      Effect.asVoid(
        Effect.acquireRelease(
          Effect.flatMap(pgConnect(server), (client) =>
            Effect.as(
              Effect.promise(async () => {
                await client.query("BEGIN")
                await client.query(lockSql)
              }),
              client
            )
          ),
          (client) =>
            Effect.promise(() =>
              client
                .query("ROLLBACK")
                .then(() => client.end())
                .catch(() => undefined)
            )
        )
      ),
    idleInTransactionTimeout: (seconds) =>
      Effect.acquireRelease(
        Effect.asVoid(
          query(
            `ALTER ROLE ${server.username} SET idle_in_transaction_session_timeout = '${Math.round(seconds * 1000)}ms'`
          )
        ),
        () => Effect.orDie(query(`ALTER ROLE ${server.username} RESET idle_in_transaction_session_timeout`))
      ),
    // the extended protocol's Parse message of a unit's COMMIT
    isCommit: (chunk) => chunk[0] === 0x50 && chunk.includes("\0COMMIT\0", 0, "latin1")
  }
}

/** Server arguments of one suite's servers, after the harness defaults (and the ones `dialects` always gives). */
export interface ServerArgs {
  readonly mariadb?: ReadonlyArray<string>
  readonly postgres?: ReadonlyArray<string>
}

/**
 * Both databases, by name, each a private server for the suite, started with `args`:
 * `for (const [name, db] of dialectsWith(args)) layer(db)(…)`.
 * PostgreSQL runs with `synchronous_commit=on`: the test server's default (off) acknowledges a COMMIT before its WAL
 * left the server's memory, so a crash of the server process loses acknowledged units (the crash scenario lost 4 to 7
 * of 140 with it off); with `fsync=off` the WAL still reaches the operating system, which survives a process crash.
 */
export const dialectsWith = (args: ServerArgs = {}): ReadonlyArray<readonly [DbName, Layer.Layer<DbTag, unknown>]> => [
  [
    "mariadb",
    Layer.effect(DbTag, Effect.map(MysqlServer.MysqlServer, mariadb)).pipe(
      Layer.provide(MysqlServer.layer({ serverArgs: args.mariadb ?? [] }))
    )
  ],
  [
    "postgres",
    Layer.effect(DbTag, Effect.map(PgServer.PgServer, postgres)).pipe(
      Layer.provide(PgServer.layer({ serverArgs: ["-c", "synchronous_commit=on", ...(args.postgres ?? [])] }))
    )
  ]
]

/** Both databases with the harness's servers (`dialectsWith()`). */
export const dialects = dialectsWith()

/**
 * `effect` with an Engine (and its autocommit `SqlClient`) on the suite's server: connect and kill bounded short, a
 * pool of 2 unless `options.pool` says otherwise.
 */
export const withEngine = <A, E, R>(effect: Effect.Effect<A, E, R>, options: Partial<Engine.EngineOptions> = {}) =>
  Effect.provide(effect, engineLayer(options))

/** The Engine `withEngine` provides, as a layer. */
export const engineLayer = (options: Partial<Engine.EngineOptions> = {}) =>
  Layer.unwrapEffect(
    Effect.map(DbTag, (db) =>
      Engine.layer({
        connectTimeout: "5 seconds",
        killGrace: "1 second",
        ...options,
        url: options.url ?? db.url,
        pool: { size: 2, acquireTimeout: "10 seconds", ...options.pool }
      } as Engine.EngineOptions)
    )
  )
