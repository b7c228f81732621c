/**
 * Adversarial tests of isolation between units (issue 13, guarantee 18): a unit sees only its own work and leaves
 * nothing behind — no session state and no open transaction on a returned connection, no request batched or cached
 * across units, no context leaked into its caller, no live handle in a fiber that outlives it — plus the long-unit
 * warning, SessionTest containment, and interruption when the server is at `max_connections`. Each check reads the
 * server's state from a connection of its own, or from the next unit on the same (pool of 1) connection.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as Model from "@effect/sql/Model"
import * as SqlResolver from "@effect/sql/SqlResolver"
import { assert, layer } from "@effect/vitest"
import { Engine, Session, SessionLive } from "@sessionfx/session"
import { SessionTest } from "@sessionfx/testing"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Scope from "effect/Scope"
import * as Mysql from "mysql2/promise"
import * as Redacted from "effect/Redacted"
import * as Pg from "pg"
import { type DbName, DbTag, dialectsWith, engineLayer, withEngine } from "./support/db.js"
import {
  bounded,
  counter,
  eventually,
  expectTag,
  failureOf,
  freshId,
  repeat,
  rootTag,
  show,
  sql,
  suiteOptions,
  trxPoll
} from "./support/unit.js"

/** One statement as the superuser (its own connection; `?` placeholders on both); a failure is a defect of the test. */
const adminQuery = <A = Record<string, any>>(statement: string, params: ReadonlyArray<unknown> = []) =>
  Effect.flatMap(DbTag, (db) => Effect.orDie(db.query<A>(statement, params)))

/** Committed rows of `table` matching `where`, as the server sees them (superuser, own connection). */
const count = (table: string, where = "1 = 1", params: ReadonlyArray<unknown> = []) =>
  Effect.map(adminQuery<{ n: string | number }>(`SELECT COUNT(*) AS n FROM ${table} WHERE ${where}`, params), (rows) =>
    Number(rows[0]?.n ?? 0)
  )

/** Rows of `table` with `id`, committed. */
const countId = (table: string, id: number) => count(table, "id = ?", [id])

/** The texts that differ between the databases. */
interface Texts {
  /** The `i`-th (from 1) placeholder of a text given to `sql.unsafe` or a reserved connection. */
  readonly param: (i: number) => string
  /** A statement sleeping `seconds` on the server. */
  readonly sleep: (seconds: number) => string
  /** Sets the session variable `name` (kept by the connection, not by the transaction). */
  readonly setVar: (name: string, value: number) => string
  /** The session variable `name` as one column. */
  readonly getVar: (name: string) => string
  /** Whether a value read by `getVar` means unset: NULL on MariaDB; PostgreSQL's reset placeholder reads as ''. */
  readonly unset: (v: unknown) => boolean
}

const textsOf: Record<DbName, Texts> = {
  mariadb: {
    param: () => "?",
    sleep: (seconds) => `SELECT SLEEP(${seconds})`,
    setVar: (name, value) => `SET @${name} = ${value}`,
    getVar: (name) => `SELECT @${name}`,
    unset: (v) => v === null
  },
  postgres: {
    param: (i) => `$${i}`,
    sleep: (seconds) => `SELECT pg_sleep(${seconds})`,
    setVar: (name, value) => `SELECT set_config('sfx.${name}', '${value}', false)`,
    getVar: (name) => `SELECT current_setting('sfx.${name}', true)`,
    unset: (v) => v === null || v === ""
  }
}

const pgSchema = [
  `CREATE TABLE IF NOT EXISTS items (id INT PRIMARY KEY, label VARCHAR(200) NOT NULL DEFAULT 'x')`,
  `CREATE TABLE IF NOT EXISTS counters (id INT PRIMARY KEY, v INT NOT NULL)`,
  // a function that changes the session: nothing in the calling statement's text says so
  `CREATE OR REPLACE FUNCTION sfx_configure() RETURNS int LANGUAGE plpgsql AS $$
   BEGIN PERFORM set_config('sfx.fn', '42', false); RETURN 1; END $$`
]

const schema = [
  `CREATE TABLE IF NOT EXISTS items (id INT PRIMARY KEY, label VARCHAR(200) NOT NULL DEFAULT 'x')`,
  `CREATE TABLE IF NOT EXISTS texts (id INT PRIMARY KEY, body TEXT CHARACTER SET utf8mb4 NOT NULL)`,
  `CREATE TABLE IF NOT EXISTS locked_t (id INT PRIMARY KEY)`,
  `CREATE TABLE IF NOT EXISTS counters (id INT PRIMARY KEY, v INT NOT NULL)`,
  `CREATE DATABASE IF NOT EXISTS other_db`,
  `GRANT SELECT ON other_db.* TO 'app'@'%'`,
  `GRANT SELECT ON other_db.* TO 'app'@'localhost'`,
  `DROP PROCEDURE IF EXISTS sfx_set_pv`,
  `CREATE PROCEDURE sfx_set_pv() BEGIN SET @pv = 42; END`,
  `DROP PROCEDURE IF EXISTS sfx_set_rs`,
  `CREATE PROCEDURE sfx_set_rs() BEGIN SET @prs = 7; SELECT 1 AS one; END`,
  `CREATE TABLE IF NOT EXISTS parent (id INT PRIMARY KEY)`,
  `CREATE TABLE IF NOT EXISTS child (id INT PRIMARY KEY, parent_id INT NOT NULL, FOREIGN KEY (parent_id) REFERENCES parent (id))`
]

/** The suite's schema: MariaDB's by the superuser (it grants and creates procedures), PostgreSQL's by the application. */
const suite = (name: DbName, dbLayer: Layer.Layer<DbTag, unknown>) =>
  Layer.effectDiscard(
    name === "postgres"
      ? withEngine(Effect.forEach(pgSchema, (text) => Effect.flatMap(sql, (s) => s.unsafe(text)), { discard: true }))
      : Effect.forEach(schema, (s) => adminQuery(s), { discard: true })
  ).pipe(Layer.provideMerge(dbLayer))

const insert = (id: number, label = "x") =>
  Effect.flatMap(sql, (s) => s`INSERT INTO items (id, label) VALUES (${id}, ${label})`)

const one = <A>(statement: string) =>
  Effect.flatMap(sql, (s) =>
    Effect.map(s.unsafe<Record<string, A>>(statement).unprepared, (rows) => Object.values(rows[0]!)[0] as A)
  )

/** Statements on a fresh application connection outside any pool (MariaDB: the leak matrix's checks). */
const onOtherConnection = (statements: ReadonlyArray<string>) =>
  Effect.flatMap(DbTag, (db) =>
    Effect.tryPromise(async () => {
      const conn = await Mysql.createConnection({ uri: Redacted.value(db.url), connectTimeout: 5_000 })
      try {
        let last: unknown
        for (const s of statements) last = (await conn.query(s))[0]
        return last as Array<Record<string, unknown>>
      } finally {
        conn.destroy()
      }
    })
  )

const UTF8 = "héllo ✓ 😀 Ωμέγα"

interface Leak<B = Baseline> {
  readonly name: string
  /** The statement unit A runs (sent as is, unprepared). */
  readonly statement: string
  /** Run in unit B on the same pool (of one connection): a description of what leaked, or undefined. */
  readonly check: (
    baseline: B
  ) => Effect.Effect<string | undefined, unknown, SqlClient.SqlClient | Session.Session | DbTag>
  /** Checks that need the pool free (another connection, autocommit statements). */
  readonly after?: () => Effect.Effect<string | undefined, unknown, SqlClient.SqlClient | DbTag>
}

interface Baseline {
  readonly timeZone: string
  readonly sqlMode: string
  readonly isolation: string
  readonly lockWait: number
  readonly maxStatementTime: number
  readonly selectLimit: string
}

const readBaseline = Session.transact(
  Effect.gen(function* () {
    return {
      timeZone: String(yield* one("SELECT @@session.time_zone")),
      sqlMode: String(yield* one("SELECT @@session.sql_mode")),
      isolation: String(yield* one("SELECT @@session.tx_isolation")),
      lockWait: Number(yield* one("SELECT @@session.innodb_lock_wait_timeout")),
      maxStatementTime: Number(yield* one("SELECT @@session.max_statement_time")),
      selectLimit: String(yield* one("SELECT @@session.sql_select_limit"))
    } satisfies Baseline
  })
)

const differs = (what: string, got: unknown, expected: unknown) =>
  String(got) === String(expected)
    ? undefined
    : `${what} is ${JSON.stringify(got)}, expected ${JSON.stringify(expected)}`

const leaks: ReadonlyArray<Leak> = [
  {
    name: "SET NAMES latin1",
    statement: "SET NAMES latin1",
    check: () =>
      Effect.gen(function* () {
        const id = freshId()
        yield* Effect.flatMap(sql, (s) => s`INSERT INTO texts (id, body) VALUES (${id}, ${UTF8})`)
        // read back by the superuser, on its own utf8mb4 connection, after B commits: see `after`
        leakedTexts.push(id)
        return undefined
      }),
    after: () =>
      Effect.gen(function* () {
        const ids = leakedTexts.splice(0)
        if (ids.length === 0) return undefined // the next unit failed already (reported)
        const rows = yield* adminQuery<{ id: number; body: string }>(
          `SELECT id, body FROM texts WHERE id IN (${ids.join(",")})`
        )
        const bad = rows.filter((r) => r.body !== UTF8)
        return bad.length === 0 && rows.length === ids.length
          ? undefined
          : `text stored as ${JSON.stringify(bad[0]?.body)}`
      })
  },
  {
    name: "SET @v = 1",
    statement: "SET @v = 1",
    check: () => Effect.map(one("SELECT @v"), (v) => differs("@v", v, null))
  },
  {
    name: "SET time_zone",
    statement: "SET time_zone = '+05:00'",
    check: (b) => Effect.map(one("SELECT @@session.time_zone"), (v) => differs("time_zone", v, b.timeZone))
  },
  {
    name: "SET sql_mode = ''",
    statement: "SET sql_mode = ''",
    check: (b) => Effect.map(one("SELECT @@session.sql_mode"), (v) => differs("sql_mode", v, b.sqlMode))
  },
  {
    name: "SET SESSION TRANSACTION ISOLATION LEVEL",
    statement: "SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    check: (b) => Effect.map(one("SELECT @@session.tx_isolation"), (v) => differs("tx_isolation", v, b.isolation))
  },
  {
    name: "SET innodb_lock_wait_timeout",
    statement: "SET SESSION innodb_lock_wait_timeout = 1",
    check: (b) =>
      Effect.map(one("SELECT @@session.innodb_lock_wait_timeout"), (v) =>
        differs("innodb_lock_wait_timeout", v, b.lockWait)
      )
  },
  {
    name: "SET max_statement_time",
    statement: "SET SESSION max_statement_time = 0.5",
    check: (b) =>
      Effect.map(one("SELECT @@session.max_statement_time"), (v) =>
        differs("max_statement_time", v, b.maxStatementTime)
      )
  },
  {
    name: "SET sql_select_limit",
    statement: "SET SESSION sql_select_limit = 1",
    check: (b) =>
      Effect.map(one("SELECT @@session.sql_select_limit"), (v) => differs("sql_select_limit", v, b.selectLimit))
  },
  {
    name: "CREATE TEMPORARY TABLE",
    statement: "CREATE TEMPORARY TABLE tmp_leak (x INT)",
    check: () =>
      Effect.map(Effect.either(one("SELECT COUNT(*) FROM tmp_leak")), (r) =>
        Either.isRight(r) ? "the temporary table is visible to the next unit" : undefined
      )
  },
  {
    name: "USE other_db",
    statement: "USE other_db",
    check: () => Effect.map(one("SELECT DATABASE()"), (v) => differs("DATABASE()", v, "app"))
  },
  {
    name: "SET autocommit = 0",
    statement: "SET autocommit = 0",
    check: () => Effect.succeed(undefined),
    // the leak shows outside units: an autocommit write must be committed when it returns
    after: () =>
      Effect.gen(function* () {
        const id = freshId()
        yield* insert(id)
        return (yield* countId("items", id)) === 1 ? undefined : "an autocommit INSERT was not committed"
      })
  },
  {
    name: "PREPARE",
    statement: "PREPARE sfx_leak FROM 'SELECT 1'",
    check: () =>
      Effect.map(Effect.either(Effect.flatMap(sql, (s) => s`EXECUTE sfx_leak`.unprepared)), (r) =>
        Either.isRight(r) ? "the prepared statement survived into the next unit" : undefined
      )
  },
  {
    name: "LOCK TABLES",
    statement: "LOCK TABLES locked_t WRITE",
    check: () => Effect.succeed(undefined),
    after: () =>
      Effect.map(
        Effect.either(
          onOtherConnection(["SET SESSION lock_wait_timeout = 2", `INSERT INTO locked_t (id) VALUES (${freshId()})`])
        ),
        (r) => (Either.isLeft(r) ? `another connection cannot write the table: ${String(r.left)}` : undefined)
      )
  },
  {
    name: "GET_LOCK",
    statement: "SELECT GET_LOCK('sfx_named', 0)",
    check: () => Effect.succeed(undefined),
    after: () =>
      Effect.map(
        onOtherConnection(["SELECT GET_LOCK('sfx_named', 0) AS g", "SELECT RELEASE_LOCK('sfx_named') AS r"]),
        (rows) => (Number(rows[0]?.r) === 1 ? undefined : "another session cannot get the named lock")
      )
  },
  {
    name: "CALL a procedure that sets a user variable",
    statement: "CALL sfx_set_pv()",
    check: () => Effect.map(one("SELECT @pv"), (v) => differs("@pv", v, null))
  }
]
const leakedTexts: Array<number> = []

/** More members of the class: state changed by statements that answer with a result set (whose status flags mysql2
 * does not expose), characteristics of the next transaction, and other session variables. */
const moreLeaks: ReadonlyArray<Leak> = [
  {
    name: "SELECT @w := 5 (a result set that sets a variable)",
    statement: "SELECT @w := 5 AS w",
    check: () => Effect.map(one("SELECT @w"), (v) => differs("@w", v, null))
  },
  {
    name: "SELECT ... INTO @x",
    statement: "SELECT 9 INTO @x",
    check: () => Effect.map(one("SELECT @x"), (v) => differs("@x", v, null))
  },
  {
    name: "CALL a procedure that sets a variable and returns a result set",
    statement: "CALL sfx_set_rs()",
    check: () => Effect.map(one("SELECT @prs"), (v) => differs("@prs", v, null))
  },
  {
    name: "CREATE TEMPORARY TABLE ... SELECT",
    statement: "CREATE TEMPORARY TABLE tmp_leak2 SELECT 1 AS x",
    check: () =>
      Effect.map(Effect.either(one("SELECT COUNT(*) FROM tmp_leak2")), (r) =>
        Either.isRight(r) ? "the temporary table is visible to the next unit" : undefined
      )
  },
  {
    name: "SET foreign_key_checks = 0",
    statement: "SET SESSION foreign_key_checks = 0",
    check: () =>
      Effect.map(
        Effect.either(Effect.flatMap(sql, (s) => s`INSERT INTO child (id, parent_id) VALUES (${freshId()}, -1)`)),
        (r) => (Either.isRight(r) ? "a foreign key was not checked in the next unit" : undefined)
      )
  },
  {
    name: "SET TRANSACTION READ ONLY (the next transaction's characteristics)",
    statement: "SET TRANSACTION READ ONLY",
    check: () =>
      Effect.map(
        Effect.either(Effect.flatMap(sql, (s) => s`INSERT INTO items (id, label) VALUES (${freshId()}, 'rw')`)),
        (r) => (Either.isLeft(r) ? `the next unit's transaction is read-only: ${String(r.left.message)}` : undefined)
      ),
    after: () =>
      Effect.map(
        Effect.either(Effect.flatMap(sql, (s) => s`INSERT INTO items (id, label) VALUES (${freshId()}, 'rw')`)),
        (r) => (Either.isLeft(r) ? `the next autocommit write is read-only: ${String(r.left)}` : undefined)
      )
  },
  {
    name: "SET TRANSACTION ISOLATION LEVEL (next transaction)",
    statement: "SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
    check: () =>
      Effect.gen(function* () {
        yield* Effect.flatMap(sql, (s) => s`SELECT COUNT(*) FROM items FOR UPDATE`)
        const id = yield* Session.connectionId
        let level: string | undefined
        yield* eventually(
          Effect.map(
            adminQuery<{ l: string }>(
              "SELECT trx_isolation_level AS l FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = ?",
              [id]
            ),
            (rows) => {
              level = rows[0]?.l
              return level !== undefined
            }
          ),
          "the unit's transaction is listed in innodb_trx",
          10,
          trxPoll
        )
        return differs("the next unit's isolation", level, "REPEATABLE READ")
      })
  },
  {
    name: "SET NAMES (prepared protocol)",
    statement: "PREPARED:SET NAMES latin1",
    check: () =>
      Effect.map(one("SELECT @@session.character_set_client"), (v) => differs("character_set_client", v, "utf8mb4"))
  },
  {
    name: "SET @v (prepared protocol)",
    statement: "PREPARED:SET @pv2 = 3",
    check: () => Effect.map(one("SELECT @pv2"), (v) => differs("@pv2", v, null))
  }
]

type MoreVariant = "first, commit" | "in a savepoint that rolls back" | "first, rollback" | "outside any unit"
const moreVariants: ReadonlyArray<MoreVariant> = [
  "first, commit",
  "in a savepoint that rolls back",
  "first, rollback",
  "outside any unit"
]

const runMore = <B>(leak: Leak<B>, variant: MoreVariant) =>
  Effect.flatMap(sql, (s) => {
    const prepared = leak.statement.startsWith("PREPARED:")
    const text = prepared ? leak.statement.slice("PREPARED:".length) : leak.statement
    const statement = Effect.asVoid(prepared ? s.unsafe(text) : s.unsafe(text).unprepared)
    switch (variant) {
      case "outside any unit":
        return statement
      case "first, commit":
        return Effect.asVoid(Effect.exit(Session.transact(statement)))
      case "first, rollback":
        return Effect.asVoid(Effect.exit(Session.transact(Effect.zipRight(statement, Effect.fail("x")))))
      case "in a savepoint that rolls back":
        return Effect.asVoid(
          Effect.exit(
            Session.transact(
              Effect.zipRight(
                s`SELECT 1 AS warm`,
                Effect.either(Session.savepoint(Effect.zipRight(statement, Effect.fail("x"))))
              )
            )
          )
        )
    }
  })

/** What a fresh connection of the engine reports on PostgreSQL (read in a unit). */
const pgSettings = [
  "TimeZone",
  "search_path",
  "statement_timeout",
  "lock_timeout",
  "default_transaction_isolation",
  "default_transaction_read_only",
  "application_name",
  "DateStyle"
] as const
type PgBaseline = Readonly<Record<(typeof pgSettings)[number], string>>

const readPgBaseline = Session.transact(
  Effect.map(
    Effect.forEach(pgSettings, (name) => Effect.map(one<string>(`SELECT current_setting('${name}')`), String)),
    (values) => Object.fromEntries(pgSettings.map((name, i) => [name, values[i]!])) as PgBaseline
  )
)

/** A setting of the next unit against the baseline. */
const setting = (name: (typeof pgSettings)[number]) => (b: PgBaseline) =>
  Effect.map(one(`SELECT current_setting('${name}')`), (v) => differs(name, v, b[name]))

/** The session variable `sfx.name` is unset in the next unit (a reset placeholder reads as ''). */
const unsetVar = (name: string) => () =>
  Effect.map(one(`SELECT current_setting('sfx.${name}', true) AS v`), (v) =>
    v === null || v === "" ? undefined : `sfx.${name} is ${JSON.stringify(v)}`
  )

/** The next unit sees no such relation / prepared statement (asked in a savepoint: the error fails only that). */
const gone = (statement: string, what: string) => () =>
  Effect.map(Effect.either(Session.savepoint(one(statement))), (r) =>
    Either.isRight(r) ? `${what} is visible to the next unit` : undefined
  )

/**
 * PostgreSQL's members of the class: statements that change the session (settings, placeholders, temporary tables,
 * prepared statements, LISTEN, session advisory locks), written as a user writes them. PostgreSQL reports a few
 * settings by ParameterStatus; for the rest only the statement's text says it (or nothing does: a function).
 */
const pgLeaks: ReadonlyArray<Leak<PgBaseline>> = [
  { name: "SET TIME ZONE", statement: "SET TIME ZONE '+05:00'", check: setting("TimeZone") },
  { name: "SET search_path", statement: "SET search_path = pg_catalog", check: setting("search_path") },
  { name: "SET statement_timeout", statement: "SET statement_timeout = 1234", check: setting("statement_timeout") },
  { name: "SET SESSION lock_timeout", statement: "SET SESSION lock_timeout = 4321", check: setting("lock_timeout") },
  { name: "SET application_name", statement: "SET application_name = 'leaky'", check: setting("application_name") },
  { name: "SET DateStyle", statement: "SET DateStyle = 'SQL, DMY'", check: setting("DateStyle") },
  {
    name: "SET SESSION CHARACTERISTICS isolation",
    statement: "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    check: setting("default_transaction_isolation")
  },
  {
    name: "SET SESSION CHARACTERISTICS READ ONLY",
    statement: "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    check: setting("default_transaction_read_only"),
    after: () =>
      Effect.map(Effect.either(insert(freshId(), "rw")), (r) =>
        Either.isLeft(r) ? `the next autocommit write is read-only: ${String(r.left)}` : undefined
      )
  },
  { name: "set_config", statement: "SELECT set_config('sfx.v', '1', false)", check: unsetVar("v") },
  { name: "SET a placeholder", statement: "SET sfx.w = '2'", check: unsetVar("w") },
  {
    name: "CREATE TEMPORARY TABLE",
    statement: "CREATE TEMPORARY TABLE tmp_leak (x INT)",
    check: gone("SELECT COUNT(*) FROM tmp_leak", "the temporary table")
  },
  {
    name: "PREPARE",
    statement: "PREPARE sfx_leak AS SELECT 1",
    check: gone("EXECUTE sfx_leak", "the prepared statement")
  },
  {
    name: "LISTEN",
    statement: "LISTEN sfx_channel",
    check: () =>
      Effect.map(one("SELECT COUNT(*) FROM pg_listening_channels()"), (n) => differs("channels listened to", n, 0))
  },
  {
    name: "DECLARE … WITH HOLD",
    statement: "DECLARE sfx_held CURSOR WITH HOLD FOR SELECT 1",
    check: () =>
      Effect.map(one("SELECT COUNT(*) FROM pg_cursors WHERE name = 'sfx_held'"), (n) =>
        differs("cursors named sfx_held", n, 0)
      )
  },
  {
    name: "pg_try_advisory_lock",
    statement: "SELECT pg_try_advisory_lock(4243)",
    check: () => Effect.succeed(undefined),
    after: () =>
      Effect.map(adminQuery<{ ok: boolean }>("SELECT pg_try_advisory_lock(4243) AS ok"), (rows) =>
        rows[0]?.ok === true ? undefined : "another session cannot take the advisory lock"
      )
  },
  {
    name: "pg_advisory_lock",
    statement: "SELECT pg_advisory_lock(4242)",
    check: () => Effect.succeed(undefined),
    // another connection can take the lock: the unit's connection holds none
    after: () =>
      Effect.map(adminQuery<{ ok: boolean }>("SELECT pg_try_advisory_lock(4242) AS ok"), (rows) =>
        rows[0]?.ok === true ? undefined : "another session cannot take the advisory lock"
      )
  }
]

type Variant = "first, commit" | "later, rollback" | "comment, commit" | "later, commit" | "outside any unit"
const variants: ReadonlyArray<Variant> = [
  "first, commit",
  "later, rollback",
  "comment, commit",
  "later, commit",
  "outside any unit"
]

const runA = <B>(leak: Leak<B>, variant: Variant) =>
  Effect.flatMap(sql, (s) => {
    const text = variant.startsWith("comment") ? `/* x */ ${leak.statement}` : leak.statement
    const statement = s.unsafe(text).unprepared
    if (variant === "outside any unit") return Effect.asVoid(statement)
    const body = variant.startsWith("later") ? Effect.zipRight(s`SELECT 1 AS warm`, statement) : statement
    return Effect.asVoid(
      Effect.exit(
        Session.transact(variant.endsWith("rollback") ? Effect.zipRight(body, Effect.fail("roll back" as const)) : body)
      )
    )
  })

/** One leak matrix: the leaks, the baseline a fresh connection reports, and the positions unit A runs them in. */
interface Matrix<B, V extends string> {
  readonly leaks: ReadonlyArray<Leak<B>>
  readonly baseline: Effect.Effect<B, unknown, SqlClient.SqlClient | Engine.Engine>
  /** Engine names `${prefix}-${n}` (metrics are process-wide). */
  readonly prefix: string
  readonly positions: ReadonlyArray<V>
  readonly run: (leak: Leak<B>, position: V) => Effect.Effect<void, unknown, SqlClient.SqlClient | Engine.Engine>
  /** A statement run outside any unit must succeed (the `variants` matrix says so; `moreVariants` does not ask). */
  readonly outsideMustSucceed: boolean
}

/**
 * Each leak × each position: unit A runs the statement, then the next unit B (on the same, only, connection) must see
 * exactly what a fresh connection sees (the baseline, read before A); `after` checks run with the pool free.
 */
const leakMatrix = <B, V extends string>(m: Matrix<B, V>) =>
  Effect.gen(function* () {
    const problems: Array<string> = []
    const report = (leak: Leak<B>, position: V, exit: Exit.Exit<string | undefined, unknown>) => {
      if (Exit.isFailure(exit)) problems.push(`${leak.name} (${position}): ${show(exit)}`)
      else if (exit.value !== undefined) problems.push(`${leak.name} (${position}): ${exit.value}`)
    }
    let n = 0
    for (const leak of m.leaks) {
      for (const position of m.positions) {
        yield* withEngine(
          Effect.gen(function* () {
            const baseline = yield* m.baseline
            const a = yield* Effect.exit(m.run(leak, position))
            if (Exit.isFailure(a) && m.outsideMustSucceed && position === "outside any unit") {
              problems.push(`${leak.name} (${position}): statement failed: ${show(a)}`)
            }
            // baseline: what a fresh connection of this engine reports; B must see exactly that
            report(leak, position, yield* Effect.exit(Session.transact(leak.check(baseline))))
            if (leak.after) report(leak, position, yield* Effect.exit(leak.after()))
          }),
          { pool: { size: 1 }, name: `${m.prefix}-${++n}` }
        )
      }
    }
    assert.deepStrictEqual(problems, [], "session state crossed from one unit to the next")
  })

for (const [dbName, dbLayer] of dialectsWith()) {
  const texts = textsOf[dbName]
  layer(suite(dbName, dbLayer), suiteOptions)(`isolation (${dbName})`, (it) => {
    // MariaDB only: the leak matrix's statements are MySQL's (user variables, sql_mode, LOCK TABLES, GET_LOCK, …)
    if (dbName === "mariadb") {
      it.effect("connection state never outlives the unit that changed it (pool 1; every statement × position)", () =>
        leakMatrix({
          leaks,
          baseline: readBaseline,
          prefix: "iso-leak",
          positions: variants,
          run: runA,
          outsideMustSucceed: true
        })
      )

      it.effect(
        "more members: result sets that set state, next-transaction characteristics, prepared SETs, savepoints",
        () =>
          leakMatrix({
            leaks: moreLeaks,
            baseline: readBaseline,
            prefix: "iso-more",
            positions: moreVariants,
            run: runMore,
            outsideMustSucceed: false
          })
      )
    } else {
      // PostgreSQL's own members of the class
      it.effect("connection state never outlives the unit that changed it (pool 1; every statement × position)", () =>
        leakMatrix({
          leaks: pgLeaks,
          baseline: readPgBaseline,
          prefix: "iso-pg-leak",
          positions: variants,
          run: runA,
          outsideMustSucceed: true
        })
      )
      // the same statements sent as prepared statements (the extended protocol), and in savepoints that roll back
      it.effect("more positions: prepared, in a savepoint that rolls back, first then rollback", () =>
        leakMatrix({
          leaks: pgLeaks.map((leak) => ({ ...leak, statement: `PREPARED:${leak.statement}` })),
          baseline: readPgBaseline,
          prefix: "iso-pg-more",
          positions: moreVariants,
          run: runMore,
          outsideMustSucceed: true
        })
      )
      // A known gap (docs/postgresql.md): a function that changes the session (set_config inside it) leaves that on
      // the connection, for nothing the server reports or the statement's text says shows it. This test fails while
      // the gap is there (`fails`): it passes, and so fails the suite, once the gap is closed — then make it `effect`.
      it.effect.fails("a function that calls set_config: its setting does not reach the next unit", () =>
        leakMatrix({
          leaks: [{ name: "SELECT sfx_configure()", statement: "SELECT sfx_configure()", check: unsetVar("fn") }],
          baseline: readPgBaseline,
          prefix: "iso-pg-fn",
          positions: variants,
          run: runA,
          outsideMustSucceed: true
        })
      )
    }

    it.effect("dirty returns are counted: sessionfx_pool_dirty_returns_total by reason", () =>
      withEngine(
        Effect.gen(function* () {
          const s = yield* sql
          const state0 = yield* counter("sessionfx_pool_dirty_returns_total", `iso-dirty-${dbName}`, {
            reason: "state"
          })
          yield* Session.transact(s.unsafe(texts.setVar("counted", 1)).unprepared)
          assert.isAtLeast(
            (yield* counter("sessionfx_pool_dirty_returns_total", `iso-dirty-${dbName}`, { reason: "state" })) - state0,
            1,
            "a unit that set a user variable is not counted as a dirty return (reason state)"
          )
          const trx0 = yield* counter("sessionfx_pool_dirty_returns_total", `iso-dirty-${dbName}`, {
            reason: "transaction"
          })
          yield* s`BEGIN`.unprepared
          assert.isAtLeast(
            (yield* counter("sessionfx_pool_dirty_returns_total", `iso-dirty-${dbName}`, { reason: "transaction" })) -
              trx0,
            1,
            "an autocommit BEGIN is not counted as a dirty return (reason transaction)"
          )
        }),
        { pool: { size: 1 }, name: `iso-dirty-${dbName}` }
      )
    )

    it.effect("an autocommit BEGIN outside any unit never swallows a later write (pool 1, several spellings)", () =>
      Effect.gen(function* () {
        const spellings: ReadonlyArray<readonly [string, (s: SqlClient.SqlClient) => Effect.Effect<unknown, unknown>]> =
          [
            ["sql`BEGIN`", (s) => s`BEGIN`],
            ["START TRANSACTION (unprepared)", (s) => s`START TRANSACTION`.unprepared],
            ["/* c */ begin work", (s) => s.unsafe("/* c */ begin work")],
            ["START TRANSACTION READ WRITE", (s) => s.unsafe("START TRANSACTION READ WRITE").unprepared],
            // MariaDB only: PostgreSQL has no autocommit setting
            ...(dbName === "mariadb"
              ? [["SET autocommit = 0", (s: SqlClient.SqlClient) => s.unsafe("SET autocommit = 0").unprepared] as const]
              : []),
            [
              "BEGIN then a write",
              (s) =>
                Effect.zipRight(s`BEGIN`.unprepared, s`INSERT INTO items (id, label) VALUES (${freshId()}, 'pending')`)
            ]
          ]
        const problems: Array<string> = []
        for (const [name, open] of spellings) {
          yield* withEngine(
            Effect.gen(function* () {
              const s = yield* sql
              const exit = yield* Effect.exit(open(s))
              if (Exit.isFailure(exit)) problems.push(`${name}: ${show(exit)}`)
              // the next autocommit statement on the (only) connection is committed when it returns
              const w = freshId()
              yield* insert(w)
              if ((yield* countId("items", w)) !== 1)
                problems.push(`${name}: the next autocommit INSERT is not committed`)
              // a unit that fails on that connection rolls back only its own work; the earlier write stays
              const u = freshId()
              yield* Effect.exit(Session.transact(Effect.zipRight(insert(u), Effect.fail("x"))))
              if ((yield* countId("items", u)) !== 0) problems.push(`${name}: the failed unit's write was kept`)
              if ((yield* countId("items", w)) !== 1) problems.push(`${name}: the autocommit write was lost later`)
            }),
            { pool: { size: 1 } }
          )
        }
        // the write made after BEGIN in the last spelling is an autocommit statement of its own: committed, not lost
        assert.strictEqual(
          yield* count("items", "label = 'pending'"),
          1,
          "an autocommit write after an autocommit BEGIN was lost"
        )
        assert.deepStrictEqual(problems, [], "open transactions returned to the pool")
      })
    )

    it.effect("an abandoned sql.reserve with START TRANSACTION is never committed by an unrelated unit", () =>
      withEngine(
        Effect.gen(function* () {
          // MariaDB only: SET autocommit (PostgreSQL has no autocommit setting)
          const variants = [
            "START TRANSACTION + INSERT",
            ...(dbName === "mariadb" ? (["SET autocommit=0 + INSERT"] as const) : []),
            "SET @r + nothing"
          ] as const
          for (const variant of variants) {
            const r = freshId()
            const w = freshId()
            yield* Effect.scoped(
              Effect.gen(function* () {
                const s = yield* sql
                const conn = yield* s.reserve
                if (variant === "SET @r + nothing") {
                  yield* conn.executeUnprepared(texts.setVar("r", 7), [], undefined)
                  return
                }
                yield* conn.executeUnprepared(
                  variant.startsWith("START") ? "START TRANSACTION" : "SET autocommit = 0",
                  [],
                  undefined
                )
                yield* conn.execute(
                  `INSERT INTO items (id, label) VALUES (${texts.param(1)}, 'reserved')`,
                  [r],
                  undefined
                )
              })
            )
            const seen = yield* Session.transact(
              Effect.gen(function* () {
                yield* insert(w)
                return yield* one(texts.getVar("r"))
              })
            )
            assert.strictEqual(yield* countId("items", w), 1, `${variant}: the unit's own write`)
            assert.strictEqual(
              yield* countId("items", r),
              0,
              `${variant}: the abandoned write was committed by the next unit`
            )
            assert.isTrue(
              texts.unset(seen),
              `${variant}: the reserved connection's variable leaked into a unit: ${seen}`
            )
            // and outside units
            const x = freshId()
            yield* insert(x)
            assert.strictEqual(yield* countId("items", x), 1, `${variant}: the next autocommit write is not committed`)
          }
          assert.isAtLeast(
            yield* counter("sessionfx_pool_dirty_returns_total", `iso-reserve-${dbName}`, { reason: "transaction" }),
            variants.length - 1,
            "abandoned reserved connections with a transaction open are not counted (reason transaction)"
          )
        }),
        { pool: { size: 1 }, name: `iso-reserve-${dbName}` }
      )
    )

    // ---------------------------------------------------------------------------------------------------------------
    // batching and caching
    // ---------------------------------------------------------------------------------------------------------------

    it.effect("batched requests of two units (SqlResolver, batching: true) run inside their own unit", () =>
      withEngine(
        Effect.gen(function* () {
          const engineSql = yield* sql
          const voidResolver = yield* SqlResolver.void("IsoInsert", {
            Request: Schema.Number,
            execute: (ids) =>
              engineSql`INSERT INTO items ${engineSql.insert(ids.map((id) => ({ id, label: "batched" })))}`
          })
          const ctxResolver = yield* SqlResolver.void("IsoInsertCtx", {
            Request: Schema.Number,
            withContext: true,
            execute: (ids) =>
              Effect.flatMap(
                SqlClient.SqlClient,
                (s) => s`INSERT INTO items ${s.insert(ids.map((id) => ({ id, label: "batched-ctx" })))}`
              )
          })
          const finder = yield* SqlResolver.findById("IsoFind", {
            Id: Schema.Number,
            Result: Schema.Struct({ id: Schema.Number, label: Schema.String }),
            ResultId: (r) => r.id,
            execute: (ids) => engineSql`SELECT id, label FROM items WHERE ${engineSql.in("id", ids)}`
          })
          const resolvers = [
            ["SqlResolver.void", voidResolver.execute],
            ["SqlResolver.void withContext", ctxResolver.execute]
          ] as const
          for (const [name, write] of resolvers) {
            for (const outcome of ["fail", "commit"] as const) {
              const [a, b] = [freshId(), freshId()]
              const unit = (id: number) =>
                Session.transact(
                  Effect.gen(function* () {
                    yield* write(id)
                    const own = yield* Effect.flatMap(
                      sql,
                      (s) => s<{ n: number }>`SELECT COUNT(*) AS n FROM items WHERE id = ${id}`
                    )
                    // a read through a resolver is in the unit too (the row is not committed yet)
                    const viaResolver = yield* finder.execute(id)
                    const seen = { own: Number(own[0]!.n), viaResolver: Option.isSome(viaResolver) }
                    if (outcome === "fail") return yield* Effect.fail(seen)
                    return seen
                  })
                )
              const exits = yield* Effect.all([Effect.exit(unit(a)), Effect.exit(unit(b))], {
                concurrency: 2,
                batching: true
              })
              const seen = exits.map((e) => (Exit.isSuccess(e) ? e.value : (failureOf(e, name) as any)))
              assert.deepStrictEqual(
                seen,
                [
                  { own: 1, viaResolver: true },
                  { own: 1, viaResolver: true }
                ],
                `${name}/${outcome}: each unit sees its own write (${exits.map(show).join(" / ")})`
              )
              const kept = [yield* countId("items", a), yield* countId("items", b)]
              assert.deepStrictEqual(
                kept,
                outcome === "fail" ? [0, 0] : [1, 1],
                `${name}/${outcome}: rows after the units`
              )
              // the caller's context is clean: its next autocommit statement works
              const after = yield* Effect.exit(Effect.flatMap(sql, (s) => s`SELECT 1 AS ok`))
              assert.isTrue(Exit.isSuccess(after), `${name}/${outcome}: the caller's next statement: ${show(after)}`)
              const x = freshId()
              yield* insert(x)
              assert.strictEqual(yield* countId("items", x), 1, `${name}/${outcome}: the caller's autocommit write`)
            }
          }
          // two requests of the same unit may be batched together; they stay in that unit
          const [c, d] = [freshId(), freshId()]
          yield* Effect.exit(
            Session.transact(
              Effect.zipRight(
                Effect.all([voidResolver.execute(c), voidResolver.execute(d)], { concurrency: 2, batching: true }),
                Effect.fail("roll back")
              )
            )
          )
          assert.deepStrictEqual(
            [yield* countId("items", c), yield* countId("items", d)],
            [0, 0],
            "a batch inside one unit"
          )
        }),
        { pool: { size: 3 } }
      )
    )

    it.effect("a read cached under withRequestCaching(true) never crosses units", () =>
      withEngine(
        Effect.gen(function* () {
          const engineSql = yield* sql
          const finder = yield* SqlResolver.findById("IsoCached", {
            Id: Schema.Number,
            Result: Schema.Struct({ id: Schema.Number, label: Schema.String }),
            ResultId: (r) => r.id,
            execute: (ids) => engineSql`SELECT id, label FROM items WHERE ${engineSql.in("id", ids)}`
          })
          yield* Effect.gen(function* () {
            // cached inside a unit that rolls back: never served to a later unit or outside
            const x = freshId()
            const inA = yield* Effect.exit(
              Session.transact(
                Effect.gen(function* () {
                  yield* insert(x, "rolled back")
                  const r = yield* finder.execute(x)
                  return yield* Effect.fail(r)
                })
              )
            )
            assert.isTrue(Option.isSome(failureOf(inA, "unit A") as Option.Option<unknown>), "unit A reads its own row")
            const inB = yield* Session.transact(finder.execute(x))
            assert.isTrue(Option.isNone(inB), "unit B was served unit A's rolled-back row from the request cache")
            assert.isTrue(Option.isNone(yield* finder.execute(x)), "outside units, the rolled-back row was served")

            // cached outside (absent), then written in a unit: the unit sees its own write
            const y = freshId()
            assert.isTrue(Option.isNone(yield* finder.execute(y)))
            const inC = yield* Session.transact(Effect.zipRight(insert(y, "mine"), finder.execute(y)))
            assert.isTrue(Option.isSome(inC), "a unit was served a read cached outside it instead of its own write")
          }).pipe(Effect.withRequestCaching(true))
        })
      )
    )

    // ---------------------------------------------------------------------------------------------------------------
    // fibers that outlive their unit
    // ---------------------------------------------------------------------------------------------------------------

    it.effect(
      "a daemon forked by a unit gets SessionClosed after the unit ended (transact, statement, layer, savepoint)",
      () =>
        withEngine(
          Effect.gen(function* () {
            const actions: ReadonlyArray<readonly [string, (id: number) => Effect.Effect<unknown, unknown, any>]> = [
              ["Session.transact(insert)", (id) => Session.transact(insert(id))],
              ["a statement", (id) => insert(id)],
              ["Effect.provide(SessionLive)", (id) => Effect.provide(insert(id), SessionLive)],
              ["Session.savepoint", (id) => Session.savepoint(insert(id))],
              ["sql.withTransaction", (id) => Effect.flatMap(sql, (s) => s.withTransaction(insert(id)))]
            ]
            const problems: Array<string> = []
            for (const [name, action] of actions) {
              for (const outcome of ["committed", "rolled back"] as const) {
                const d = freshId()
                const go = yield* Deferred.make<void>()
                const a = yield* Effect.exit(
                  Session.transact(
                    Effect.gen(function* () {
                      const fiber = yield* Effect.forkDaemon(Effect.zipRight(Deferred.await(go), action(d)))
                      return outcome === "committed" ? fiber : yield* Effect.fail(fiber)
                    })
                  )
                )
                const fiber = (Exit.isSuccess(a) ? a.value : failureOf(a, name)) as Fiber.RuntimeFiber<unknown, unknown>
                yield* Deferred.succeed(go, undefined)
                const exit = yield* Fiber.await(fiber)
                const tag = Exit.isFailure(exit) ? rootTag(Option.getOrUndefined(failureOption(exit))) : "success"
                if (tag !== "SessionClosed") problems.push(`${name} after the unit ${outcome}: ${tag} (${show(exit)})`)
                if ((yield* countId("items", d)) !== 0)
                  problems.push(`${name} after the unit ${outcome}: its write was committed`)
              }
            }
            assert.deepStrictEqual(problems, [], "fibers that outlived their unit")
          }),
          { pool: { size: 2 } }
        )
    )

    it.effect(
      "a stored Session reference or a fiber forked into an outer scope gets SessionClosed after the unit",
      () =>
        withEngine(
          Effect.gen(function* () {
            const problems: Array<string> = []
            const d = freshId()
            const go = yield* Deferred.make<void>()
            const outer = yield* Scope.make()
            const [session, forked] = yield* Session.transact(
              Effect.gen(function* () {
                const session = yield* Session.Session
                const forked = yield* Effect.forkIn(Effect.zipRight(Deferred.await(go), insert(d)), outer)
                return [session, forked] as const
              })
            )
            const uses: ReadonlyArray<readonly [string, Effect.Effect<unknown, unknown>]> = [
              ["session.sql", session.sql`INSERT INTO items (id) VALUES (${d})`],
              ["session.savepoint", session.savepoint(Effect.void)],
              ["session.afterCommit", session.afterCommit(Effect.void)]
            ]
            for (const [name, use] of uses) {
              const exit = yield* Effect.exit(use)
              const tag = Exit.isFailure(exit) ? rootTag(Option.getOrUndefined(failureOption(exit))) : "success"
              if (tag !== "SessionClosed") problems.push(`${name}: ${tag} (${show(exit)})`)
            }
            yield* Deferred.succeed(go, undefined)
            const exit = yield* Fiber.await(forked)
            const tag = Exit.isFailure(exit) ? rootTag(Option.getOrUndefined(failureOption(exit))) : "success"
            if (tag !== "SessionClosed") problems.push(`Effect.forkIn(outer scope): ${tag} (${show(exit)})`)
            yield* Scope.close(outer, Exit.void)
            assert.strictEqual(yield* countId("items", d), 0, "a write through a stale handle was committed")
            assert.deepStrictEqual(problems, [], "stale handles")
          })
        )
    )

    it.effect("SqlResolver.ordered (INSERT … RETURNING) in two batched units: each in its own unit", () =>
      withEngine(
        Effect.gen(function* () {
          const engineSql = yield* sql
          const ordered = yield* SqlResolver.ordered("IsoInsertReturning", {
            Request: Schema.Number,
            Result: Schema.Struct({ id: Schema.Number }),
            execute: (ids) =>
              engineSql`INSERT INTO items ${engineSql.insert(ids.map((id) => ({ id, label: "ordered" })))} RETURNING id`
          })
          for (const outcome of ["fail", "commit"] as const) {
            const [a, b, c] = [freshId(), freshId(), freshId()]
            const unit = (id: number) =>
              Session.transact(
                Effect.gen(function* () {
                  const r = yield* ordered.execute(id)
                  const own = yield* Effect.flatMap(
                    sql,
                    (s) => s<{ n: number }>`SELECT COUNT(*) AS n FROM items WHERE id = ${id}`
                  )
                  if (outcome === "fail") return yield* Effect.fail({ r: r.id, own: Number(own[0]!.n) })
                  return { r: r.id, own: Number(own[0]!.n) }
                })
              )
            const exits = yield* Effect.forEach([a, b, c], (id) => Effect.exit(unit(id)), {
              concurrency: 3,
              batching: true
            })
            const seen = exits.map((e) => (Exit.isSuccess(e) ? e.value : (failureOf(e, "ordered") as any)))
            assert.deepStrictEqual(
              seen,
              [a, b, c].map((id) => ({ r: id, own: 1 })),
              `${outcome}: each unit sees its own write (${exits.map(show).join(" / ")})`
            )
            const kept = [yield* countId("items", a), yield* countId("items", b), yield* countId("items", c)]
            assert.deepStrictEqual(kept, outcome === "fail" ? [0, 0, 0] : [1, 1, 1], `${outcome}: rows after the units`)
          }
        }),
        { pool: { size: 4 } }
      )
    )

    // Issue 13 #3 / issue 24 #2: a time-window data loader runs its batch on a fiber of its own, started from the
    // runtime captured when the loader was built. Started by a unit's request, that fiber's statements are refused
    // (SharedSession): they would run in autocommit, outside the unit, and be kept when it rolls back.
    it.effect(
      "Model.makeDataLoaders (a batching window) used by two concurrent units: refused with SharedSession, nothing autocommitted; outside units it still works",
      () =>
        withEngine(
          Effect.scoped(
            Effect.gen(function* () {
              const loaders = yield* Model.makeDataLoaders(LoadedItem, {
                tableName: "items",
                spanPrefix: "IsoLoaders",
                idColumn: "id",
                window: "20 millis"
              })
              for (const outcome of ["fail", "commit"] as const) {
                const [a, b] = [freshId(), freshId()]
                const unit = (id: number) =>
                  Session.transact(
                    Effect.gen(function* () {
                      yield* loaders.insertVoid(LoadedItem.insert.make({ id, label: "loader" }))
                      return outcome === "fail" ? yield* Effect.fail("give up" as const) : id
                    })
                  )
                const exits = yield* bounded(
                  Effect.all([Effect.exit(unit(a)), Effect.exit(unit(b))], { concurrency: 2 }),
                  10_000,
                  "two units using data loaders"
                )
                // the loader's requests fail as defects (its resolver's error channel is never): the unit rolls back
                for (const e of exits) {
                  assert.isTrue(Exit.isFailure(e), `${outcome}: a unit's write through a loader was not refused`)
                  assert.include(show(e), "started from inside a unit of work without it", outcome)
                }
                const kept = [yield* countId("items", a), yield* countId("items", b)]
                assert.deepStrictEqual(kept, [0, 0], `${outcome}: nothing autocommitted`)
              }
              // outside any unit the loader runs in autocommit, as before
              const outside = freshId()
              yield* loaders.insertVoid(LoadedItem.insert.make({ id: outside, label: "loader" }))
              assert.strictEqual(yield* countId("items", outside), 1)
              assert.isTrue(Option.isSome(yield* loaders.findById(outside)))
            })
          ),
          { pool: { size: 3 }, shutdownTimeout: "1 second" }
        )
    )

    // ---------------------------------------------------------------------------------------------------------------
    // SessionTest containment
    // ---------------------------------------------------------------------------------------------------------------

    it.effect(
      'SessionTest contains propagation "new" and sql.reserve: nothing committed, the code sees its writes',
      () =>
        withEngine(
          Effect.gen(function* () {
            const escapes: ReadonlyArray<readonly [string, (id: number) => Effect.Effect<unknown, unknown, any>]> = [
              ["Session.transact propagation new", (id) => Session.transact(insert(id), { propagation: "new" })],
              [
                "Session.layer propagation new",
                (id) => Effect.provide(insert(id), Session.layer({ propagation: "new" }))
              ],
              [
                "sql.reserve",
                (id) =>
                  Effect.scoped(
                    Effect.flatMap(sql, (s) =>
                      Effect.flatMap(s.reserve, (conn) =>
                        conn.execute(
                          `INSERT INTO items (id, label) VALUES (${texts.param(1)}, 'reserved')`,
                          [id],
                          undefined
                        )
                      )
                    )
                  )
              ],
              [
                "the Engine's client captured outside",
                (id) => Effect.flatMap(Engine.Engine, (e) => e.sql`INSERT INTO items (id) VALUES (${id})`)
              ],
              [
                "a keyed unit with retry",
                (id) => Session.transact(insert(id), { key: `sessiontest-${id}`, retry: true })
              ],
              [
                "propagation new with retry, in a forked fiber",
                (id) =>
                  Effect.flatMap(
                    Effect.fork(Session.transact(insert(id), { propagation: "new", retry: true })),
                    Fiber.join
                  )
              ]
            ]
            yield* Session.createKeyTable
            for (const [name, escape] of escapes) {
              const id = freshId()
              const exit = yield* Effect.exit(
                Effect.provide(
                  Effect.gen(function* () {
                    yield* escape(id)
                    const rows = yield* Effect.flatMap(
                      sql,
                      (s) => s<{ n: number }>`SELECT COUNT(*) AS n FROM items WHERE id = ${id}`
                    )
                    return Number(rows[0]!.n)
                  }),
                  SessionTest.SessionTest
                )
              )
              assert.isTrue(Exit.isSuccess(exit), `${name}: the code under test failed: ${show(exit)}`)
              if (Exit.isSuccess(exit))
                assert.strictEqual(exit.value, 1, `${name}: the code does not see its own write`)
              assert.strictEqual(yield* countId("items", id), 0, `${name}: escaped SessionTest and committed`)
              assert.strictEqual(
                yield* Session.outcome(`sessiontest-${id}`),
                "absent",
                `${name}: a key escaped SessionTest`
              )
            }
          }),
          { pool: { size: 3 } }
        )
    )

    // ---------------------------------------------------------------------------------------------------------------
    // long units
    // ---------------------------------------------------------------------------------------------------------------

    it.effect(
      "a unit open longer than longUnitThreshold is logged once (warning, where it was opened) and counted",
      () =>
        Effect.gen(function* () {
          const warned = yield* Deferred.make<string>()
          const warnings: Array<string> = []
          const capture = Logger.make(({ logLevel, message, annotations }) => {
            const text = [...(Array.isArray(message) ? message : [message])].map(String).join(" ")
            const all = `${text} ${JSON.stringify(Object.fromEntries(annotations as any))}`
            if (logLevel._tag === "Warning" && /long|open for|longUnitThreshold/i.test(all)) {
              warnings.push(all)
              Deferred.unsafeDone(warned, Exit.succeed(all))
            }
          })
          yield* withEngine(
            Effect.gen(function* () {
              const id = freshId()
              const whileOpen = yield* Session.transact(
                Effect.gen(function* () {
                  yield* insert(id)
                  // the scenario itself: a unit that stays open for 7.5x the threshold; reported while it is open
                  yield* Effect.flatMap(sql, (s) => s.unsafe(texts.sleep(1.5)))
                  return yield* Deferred.isDone(warned)
                })
              )
              assert.isTrue(whileOpen, "the long unit was not reported while it was open")
              const text = yield* Deferred.await(warned).pipe(Effect.timeout("2 seconds"))
              assert.include(
                text,
                "isolation.test",
                `the warning does not say where the unit was opened: ${text.slice(0, 400)}`
              )
              assert.strictEqual(warnings.length, 1, `logged ${warnings.length} times`)
              assert.strictEqual(yield* counter("sessionfx_session_long_units_total", `iso-long-${dbName}`), 1)
              // a short unit is not reported
              yield* Session.transact(insert(freshId()))
              assert.strictEqual(yield* counter("sessionfx_session_long_units_total", `iso-long-${dbName}`), 1)
              // a unit of 3x the threshold that ends before any periodic check is still reported (at the latest when it ends)
              yield* Session.transact(Effect.flatMap(sql, (s) => s.unsafe(texts.sleep(0.6))))
              yield* eventually(
                Effect.map(counter("sessionfx_session_long_units_total", `iso-long-${dbName}`), (n) => n === 2),
                "a 600 ms unit (threshold 200 ms) counted as long",
                2
              )
              assert.strictEqual(warnings.length, 2, `the 600 ms unit was not logged: ${warnings.length} warnings`)
              // the Layer spelling is reported with where it was provided, too
              yield* Effect.provide(
                Effect.flatMap(sql, (s) => s.unsafe(texts.sleep(1.2))),
                SessionLive
              )
              yield* eventually(
                Effect.sync(() => warnings.length === 3),
                "the Layer-spelled long unit was logged",
                2
              )
              // a Layer is built by the runtime, not at a call site of the user's: its name is the least it can say
              assert.match(
                warnings[2]!,
                /isolation\.test|Session\.layer|SessionLive/,
                `the Layer spelling's warning: ${warnings[2]!.slice(0, 300)}`
              )
            }),
            { longUnitThreshold: "200 millis", name: `iso-long-${dbName}` } as any
          ).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, capture)))
        })
    )

    it.effect(
      "a Session layer in a ManagedRuntime is refused at first use (SharedSession), nothing committed at dispose; a long unit is still reported while it is open",
      () =>
        Effect.gen(function* () {
          const db = yield* DbTag
          const warned = yield* Deferred.make<void>()
          const capture = Logger.make(({ logLevel }) => {
            if (logLevel._tag === "Warning") Deferred.unsafeDone(warned, Exit.void)
          })
          const EngineLive = engineLayer({
            longUnitThreshold: "200 millis",
            name: `iso-runtime-${dbName}`
          } as any).pipe(Layer.provide(Layer.succeed(DbTag, db)))
          const runtime = ManagedRuntime.make(SessionLive.pipe(Layer.provideMerge(EngineLive)))
          const id = freshId()
          const exit = yield* Effect.promise(() => runtime.runPromiseExit(insert(id)))
          yield* Effect.promise(() => runtime.dispose())
          const tag = Exit.isFailure(exit) ? rootTag(Option.getOrUndefined(failureOption(exit))) : "success"
          assert.strictEqual(tag, "SharedSession", "a request used the runtime's unit")
          assert.strictEqual(yield* countId("items", id), 0, "the refused request's write was committed")
          // a unit that is long on purpose is still reported while it is open, and commits
          const long = freshId()
          const reported = yield* Effect.zipRight(
            insert(long),
            Effect.either(Effect.timeout(Deferred.await(warned), "3 seconds"))
          ).pipe(
            Effect.provide(SessionLive),
            Effect.provide(EngineLive),
            Effect.provide(Logger.replace(Logger.defaultLogger, capture))
          )
          assert.isTrue(Either.isRight(reported), "no warning while a unit stayed open")
          assert.strictEqual(yield* countId("items", long), 1, "the long unit did not commit")
        })
    )

    // ---------------------------------------------------------------------------------------------------------------
    // issue 13 #9: literal COMMIT, nested retry
    // ---------------------------------------------------------------------------------------------------------------

    it.effect(
      "a literal COMMIT inside a unit: w1 kept, w2 rolled back with the failing unit; nested retry refused",
      () =>
        withEngine(
          Effect.gen(function* () {
            for (const commit of ["COMMIT", "commit", "/* c */ COMMIT"]) {
              const [w1, w2] = [freshId(), freshId()]
              const exit = yield* Effect.exit(
                Session.transact(
                  Effect.gen(function* () {
                    yield* insert(w1)
                    yield* Effect.flatMap(sql, (s) => s.unsafe(commit).unprepared)
                    yield* insert(w2)
                    return yield* Effect.fail("boom" as const)
                  })
                )
              )
              assert.deepStrictEqual(exit, Exit.fail("boom"))
              assert.deepStrictEqual([yield* countId("items", w1), yield* countId("items", w2)], [1, 0], commit)
            }
            const inner = yield* Session.transact(Effect.exit(Session.transact(insert(freshId()), { retry: true })))
            expectTag(inner, ["InvalidOption"], "nested retry")
          })
        )
    )
  })
}

class LoadedItem extends Model.Class<LoadedItem>("LoadedItem")({
  id: Schema.Number,
  label: Schema.String
}) {}

const failureOption = <A, E>(exit: Exit.Exit<A, E>) =>
  Exit.isFailure(exit)
    ? Option.fromNullable((exit.cause as any)._tag === "Fail" ? (exit.cause as any).error : undefined)
    : Option.none()

// -----------------------------------------------------------------------------------------------------------------
// the server at max_connections: interruption still stops the statement on the server
// -----------------------------------------------------------------------------------------------------------------

/** What the max_connections test needs of each database: a way to fill the server, its texts. */
interface FullServer {
  /** One more application connection; its closer, or a failure when the server refuses it. */
  readonly open: (url: string) => Promise<() => void>
  /** Statements containing the marker that the server is running now. */
  readonly running: string
  /** An UPDATE of counter `?` that sleeps 3 s on the server first, tagged with the marker. */
  readonly slowUpdate: (marker: string) => string
}

const fullServer: Record<DbName, FullServer> = {
  mariadb: {
    open: (url) => Mysql.createConnection({ uri: url, connectTimeout: 3_000 }).then((c) => () => c.destroy()),
    running:
      "SELECT COUNT(*) AS n FROM information_schema.processlist WHERE info LIKE ? AND info NOT LIKE '%processlist%'",
    slowUpdate: (marker) => `UPDATE counters SET v = v + 1 WHERE id = ? AND SLEEP(3) = 0 /* ${marker} */`
  },
  postgres: {
    open: async (url) => {
      const client = new Pg.Client({ connectionString: url, connectionTimeoutMillis: 3_000 })
      client.on("error", () => undefined)
      await client.connect()
      return () => void client.end().catch(() => undefined)
    },
    running:
      "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE ? AND query NOT LIKE '%pg_stat_activity%'",
    slowUpdate: (marker) =>
      `UPDATE counters SET v = v + 1 WHERE id = $1 AND (SELECT 1 FROM pg_sleep(3)) = 1 /* ${marker} */`
  }
}

for (const [dbName, dbLayer] of dialectsWith({
  mariadb: ["--max-connections=8"],
  postgres: ["-c", "max_connections=8"]
})) {
  const full = fullServer[dbName]
  layer(suite(dbName, dbLayer), suiteOptions)(`isolation at max_connections (${dbName})`, (it) => {
    it.scoped(
      "interrupting a long UPDATE when the server is full stops it there: never applied, gone from the processlist",
      () =>
        Effect.gen(function* () {
          const db = yield* DbTag
          const rowId = freshId()
          yield* adminQuery("INSERT INTO counters (id, v) VALUES (?, 0)", [rowId])
          // the superuser's checks run on a connection opened before the server is full
          const held = yield* Effect.orDie(db.held)
          const adminSql = <A>(statement: string, params: ReadonlyArray<unknown> = []) =>
            Effect.orDie(held<A>(statement, params))
          const stillRunning = (marker: string) =>
            Effect.map(adminSql<{ n: number }>(full.running, [`%${marker}%`]), (rows) => Number(rows[0]!.n))
          yield* withEngine(
            Effect.gen(function* () {
              yield* Session.transact(Effect.flatMap(sql, (s) => s`SELECT 1`))
              // fill every remaining slot of the server with application connections
              const fillers: Array<() => void> = []
              yield* Effect.addFinalizer(() => Effect.sync(() => fillers.forEach((close) => close())))
              let refused = false
              for (let i = 0; i < 20 && !refused; i++) {
                const r = yield* Effect.either(Effect.tryPromise(() => full.open(Redacted.value(db.url))))
                if (Either.isRight(r)) fillers.push(r.right)
                else refused = true
              }
              assert.isTrue(refused, "the server never refused a connection: the scenario did not happen")
              yield* repeat(6, (i) =>
                Effect.gen(function* () {
                  const marker = `sfx-full-${i}`
                  const inUnit = i % 2 === 0
                  const byInterrupt = i >= 4
                  const update = Effect.flatMap(sql, (s) => s.unsafe(full.slowUpdate(marker), [rowId]))
                  const t0 = Date.now()
                  const program: Effect.Effect<unknown, unknown, SqlClient.SqlClient | Engine.Engine> = inUnit
                    ? Session.transact(update)
                    : update
                  const exit = byInterrupt
                    ? yield* Effect.gen(function* () {
                        const fiber = yield* Effect.fork(program)
                        yield* eventually(
                          Effect.map(stillRunning(marker), (n) => n === 1),
                          `${marker} runs`
                        )
                        return yield* Fiber.interrupt(fiber)
                      })
                    : yield* Effect.exit(Effect.timeout(program, "200 millis"))
                  const returnedMs = Date.now() - t0
                  assert.isTrue(Exit.isFailure(exit), "the timeout / interruption did not take effect")
                  assert.isBelow(returnedMs, 1500, `returned after ${returnedMs} ms`)
                  // the 3 s sleep would keep it in the processlist / pg_stat_activity for ~2.8 s more if it was not stopped
                  yield* eventually(
                    Effect.map(stillRunning(marker), (n) => n === 0),
                    `${marker} stopped on the server`,
                    1.5
                  )
                  const v = yield* adminSql<{ v: number }>("SELECT v FROM counters WHERE id = ?", [rowId])
                  assert.strictEqual(
                    Number(v[0]!.v),
                    0,
                    `${inUnit ? "in a unit" : "autocommit"}: the interrupted UPDATE was applied`
                  )
                })
              )
              fillers.splice(0).forEach((close) => close())
              // and the engine serves units again
              const ok = yield* Effect.exit(Session.transact(Effect.flatMap(sql, (s) => s`SELECT 1`)))
              assert.isTrue(Exit.isSuccess(ok), show(ok))
              const v = yield* adminSql<{ v: number }>("SELECT v FROM counters WHERE id = ?", [rowId])
              assert.strictEqual(Number(v[0]!.v), 0, "an interrupted UPDATE was applied later")
            }),
            { pool: { size: 2 }, killGrace: "1 second" }
          )
        })
    )
  })
}
