/**
 * Adversarial tests of atomicity (issue 12, guarantees 10–15 and 17): a unit's statements run inside its
 * transaction or the unit fails with nothing kept; values are bound one way everywhere and never become SQL; the
 * server's truth decides whether the transaction is still open; an interrupted statement never leaves its effect in
 * a committed unit and affects only itself; nested units honour their options or refuse them; a unit's settings
 * last as long as the unit and cost the next one nothing. Every check reads the server's state from a connection of
 * its own (superuser), never through the code under test.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type * as Statement from "@effect/sql/Statement"
import * as MysqlMigrator from "@effect/sql-mysql2/MysqlMigrator"
import { assert, layer } from "@effect/vitest"
import { Engine, Session, SessionError, SessionLive } from "@sessionfx/session"
import { FaultProxy } from "@sessionfx/testing"
import * as Cause from "effect/Cause"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import * as Querystring from "node:querystring"
import * as Admin from "./support/admin.js"
import {
  adminQuery,
  bounded,
  count,
  countId,
  eventually,
  expectTag,
  failureOf,
  freshId,
  globalStatus,
  repeat,
  rootError,
  rootTag,
  running,
  serverLayer,
  show,
  sql,
  suiteOptions,
  tagOf,
  theServer,
  trxPoll,
  withEngine
} from "./support/unit.js"

// -----------------------------------------------------------------------------------------------------------------
// schema and small statements
// -----------------------------------------------------------------------------------------------------------------

const schema = [
  `CREATE TABLE IF NOT EXISTS items (id INT PRIMARY KEY, label VARCHAR(200) NOT NULL DEFAULT 'x', qty INT NOT NULL DEFAULT 0, CONSTRAINT qty_nonneg CHECK (qty >= 0))`,
  `CREATE TABLE IF NOT EXISTS vals (id INT PRIMARY KEY, s TEXT NULL, b BIGINT NULL, u BIGINT UNSIGNED NULL, d DOUBLE NULL, f FLOAT NULL, dt DATETIME NULL, bl BLOB NULL, dc DECIMAL(30,0) NULL)`,
  `CREATE TABLE IF NOT EXISTS pwned (x INT)`
]

/** The suite's server with the schema in place (created by the superuser, not by the code under test). */
const suite = (args: ReadonlyArray<string>) =>
  Layer.effectDiscard(Effect.forEach(schema, (s) => adminQuery(s), { discard: true })).pipe(
    Layer.provideMerge(serverLayer(args))
  )

/** The general log as a table: lets a test prove that a statement never reached the server. */
const generalLog = ["--general-log=ON", "--log-output=TABLE"]

/** Statements the server received (prepared, executed or queried) whose text holds `marker`. */
const received = (marker: string) =>
  Effect.map(
    adminQuery<{ argument: Buffer | string }>(
      "SELECT argument FROM mysql.general_log WHERE argument LIKE ? AND argument NOT LIKE '%general_log%'",
      [`%${marker}%`]
    ),
    (rows) => rows.map((r) => String(r.argument))
  )

const insert = (id: number, label = "x") =>
  Effect.flatMap(sql, (s) => s`INSERT INTO items (id, label) VALUES (${id}, ${label})`)

const connectionId = Session.connectionId

/**
 * Whether the server has a transaction open on the unit's connection (`@@in_transaction`, MariaDB): read on that
 * connection, because `information_schema.innodb_trx` is a cache refreshed at most every 100 ms.
 */
const openOnServer = Effect.flatMap(sql, (s) =>
  Effect.map(s<{ t: number }>`SELECT @@in_transaction AS t`, (rows) => Number(rows[0]!.t) === 1)
)

type Position = "first" | "later" | "savepoint" | "outside" | "layer"
const allPositions: ReadonlyArray<Position> = ["first", "later", "savepoint", "outside"]
/** Also the Layer spelling of a unit (`Effect.provide(SessionLive)`), where it is cheap enough to add. */
const withLayer: ReadonlyArray<Position> = [...allPositions, "layer"]

/** Runs `stmt` as a unit's first statement, a later one, the first one in a savepoint, or outside any unit. */
const at = <A, E, R>(position: Position, stmt: Effect.Effect<A, E, R>): Effect.Effect<A, unknown, any> =>
  bounded(atUnbounded(position, stmt), 10_000, `a statement @ ${position}`)

const atUnbounded = <A, E, R>(position: Position, stmt: Effect.Effect<A, E, R>): Effect.Effect<A, unknown, any> => {
  switch (position) {
    case "first":
      return Session.transact(stmt)
    case "later":
      return Session.transact(
        Effect.zipRight(
          Effect.flatMap(sql, (s) => s`SELECT 1 AS warm`),
          stmt
        )
      )
    case "savepoint":
      return Session.transact(Session.savepoint(stmt))
    case "outside":
      return stmt
    case "layer":
      return Effect.provide(stmt, SessionLive)
  }
}

type Mode = "execute" | "unprepared" | "values" | "raw"
const modes: ReadonlyArray<Mode> = ["execute", "unprepared", "values", "raw"]

const runAs = (stmt: Statement.Statement<any>, mode: Mode): Effect.Effect<unknown, unknown> =>
  mode === "execute" ? stmt : mode === "unprepared" ? stmt.unprepared : mode === "values" ? stmt.values : stmt.raw

// -----------------------------------------------------------------------------------------------------------------
// binding: shared by the default server and the one with NO_BACKSLASH_ESCAPES,ANSI_QUOTES
// -----------------------------------------------------------------------------------------------------------------

class Money {
  constructor(readonly cents = 1) {}
}

/** Values that cannot be sent exactly: each must be a BindError before anything reaches the server. */
const unbindable: ReadonlyArray<readonly [string, () => unknown]> = [
  ["undefined", () => undefined],
  ["a function", () => () => 1],
  ["a symbol", () => Symbol("s")],
  ["NaN", () => NaN],
  ["Infinity", () => Infinity],
  ["-Infinity", () => -Infinity],
  ["2^53 (number)", () => 2 ** 53],
  ["-(2^53) (number)", () => -(2 ** 53)],
  ["2^60 (number)", () => 2 ** 60],
  ["bigint 2^64", () => 2n ** 64n],
  ["bigint -(2^63)-1", () => -(2n ** 63n) - 1n],
  ["an invalid Date", () => new Date(Number.NaN)],
  ["an object with toSqlString", () => ({ toSqlString: () => "1); INSERT INTO pwned VALUES (66); -- " })],
  ["a class instance", () => new Money(5)],
  ["a Map", () => new Map([[1, 2]])],
  ["1e300 (an integer number beyond 2^53)", () => 1e300],
  ["-1e20 (number)", () => -1e20],
  ["an Int16Array", () => new Int16Array([1, 2])],
  ["an ArrayBuffer", () => new ArrayBuffer(4)]
]

/** Values and what the server must hold for them (read back by the superuser as text). */
const bindable: ReadonlyArray<{
  readonly name: string
  readonly column: "s" | "b" | "u" | "d" | "bl"
  readonly value: () => unknown
  /** The column read back with `HEX(bl)` for blobs, `CAST(x AS CHAR)` otherwise; null for SQL NULL. */
  readonly stored: string | null
}> = [
  { name: "a string", column: "s", value: () => "héllo ✓ 😀 Ωμέγα", stored: "héllo ✓ 😀 Ωμέγα" },
  { name: "an empty string", column: "s", value: () => "", stored: "" },
  { name: "max safe integer", column: "b", value: () => Number.MAX_SAFE_INTEGER, stored: "9007199254740991" },
  { name: "min safe integer", column: "b", value: () => Number.MIN_SAFE_INTEGER, stored: "-9007199254740991" },
  { name: "a double", column: "d", value: () => 1.5, stored: "1.5" },
  { name: "0.1", column: "d", value: () => 0.1, stored: "0.1" },
  { name: "a large non-integer double", column: "d", value: () => 1500000000000000.5, stored: "1500000000000000.5" },
  { name: "-0", column: "b", value: () => -0, stored: "0" },
  {
    name: "bigint BIGINT UNSIGNED max",
    column: "u",
    value: () => 18446744073709551615n,
    stored: "18446744073709551615"
  },
  { name: "bigint BIGINT min", column: "b", value: () => -(2n ** 63n), stored: "-9223372036854775808" },
  { name: "bigint 2^53+1", column: "b", value: () => 2n ** 53n + 1n, stored: "9007199254740993" },
  { name: "true", column: "b", value: () => true, stored: "1" },
  { name: "false", column: "b", value: () => false, stored: "0" },
  { name: "a Buffer", column: "bl", value: () => Buffer.from([0, 1, 2, 0x27, 0x5c, 255]), stored: "000102275CFF" },
  { name: "a Uint8Array", column: "bl", value: () => new Uint8Array([0x27, 0x22, 0x5c, 0]), stored: "27225C00" },
  { name: "null", column: "s", value: () => null, stored: null },
  { name: "a plain object", column: "s", value: () => ({ a: 1 }), stored: '{"a":1}' },
  { name: "an array", column: "s", value: () => [1, 2], stored: "[1,2]" },
  {
    name: "a null-prototype object (querystring.parse)",
    column: "s",
    value: () => Querystring.parse("a=1&b=x&b=y"),
    stored: '{"a":"1","b":["x","y"]}'
  },
  {
    name: "a nested object with quotes",
    column: "s",
    value: () => ({ q: 'it\'s "x" \\ y', n: [1, { z: null }] }),
    stored: JSON.stringify({ q: 'it\'s "x" \\ y', n: [1, { z: null }] })
  }
]

/** Strings that would become SQL if interpolated (for the default mode, NO_BACKSLASH_ESCAPES or ANSI_QUOTES). */
const hostile: ReadonlyArray<string> = [
  "x'; INSERT INTO pwned VALUES (1); -- ",
  "C:\\dir",
  "\\",
  "\\'; INSERT INTO pwned VALUES (2); -- ",
  '"; INSERT INTO pwned VALUES (3); -- ',
  'a\\\\\'b" OR "1"="1',
  "?",
  "/* ? */ ' ; -- ",
  "nul\u0000byte"
]

const bindingTests = (it: any, label: string) => {
  it.effect(`[${label}] BindError for every unbindable value, in every position, before anything is sent`, () =>
    withEngine(
      Effect.gen(function* () {
        const problems: Array<string> = []
        const written: Array<number> = []
        let n = 0
        for (const [name, make] of unbindable) {
          for (const position of allPositions) {
            // every mode where the unit's transaction starts (first) and outside units; execute/unprepared elsewhere
            for (const mode of position === "first" || position === "outside" ? modes : modes.slice(0, 2)) {
              const id = freshId()
              const marker = `sfxbind${label.length}m${++n}x`
              const stmt = Effect.flatMap(sql, (s) =>
                runAs(s`INSERT INTO vals (id, s) VALUES (${id}, ${make()}) /* ${s.literal(marker)} */`, mode)
              )
              const exit = yield* Effect.exit(at(position, stmt))
              if (Exit.isSuccess(exit)) {
                problems.push(`${name} @ ${position}/${mode}: succeeded`)
                continue
              }
              const e = failureOf(exit, `${name} @ ${position}/${mode}`)
              // at the Session.transact boundary it arrives unwrapped; outside units it may be wrapped in SqlError
              const tag = position === "outside" ? rootTag(e) : tagOf(e)
              if (tag !== "BindError") problems.push(`${name} @ ${position}/${mode}: ${tag} (${(e as any)?.message})`)
              else if (rootError(e).retryable !== false) problems.push(`${name} @ ${position}/${mode}: retryable`)
              written.push(id)
            }
          }
        }
        const kept = yield* count("vals", `id IN (${written.join(",")})`)
        if (kept !== 0) problems.push(`${kept} row(s) written with an unbindable value`)
        // inside a unit the statement itself fails with SqlError whose cause is the BindError
        for (const [name, make] of unbindable) {
          const inside = yield* Session.transact(
            Effect.flip(Effect.flatMap(sql, (s) => s`SELECT ${make()} AS v /* sfxbindinside */`))
          )
          if (tagOf(inside) !== "SqlError" || tagOf((inside as any).cause) !== "BindError") {
            problems.push(`${name} inside a unit: ${tagOf(inside)} / cause ${tagOf((inside as any).cause)}`)
          }
        }
        const sent = yield* received(`sfxbind${label.length}m`)
        const inside = yield* received("sfxbindinside")
        assert.deepStrictEqual(problems, [], "unbindable values")
        assert.deepStrictEqual([...sent, ...inside], [], "statements with an unbindable value reached the server")
        assert.strictEqual(yield* count("pwned"), 0, "a toSqlString object was spliced in as SQL")
      })
    )
  )

  it.effect(
    `[${label}] plain objects without an exact JSON text (a bigint inside, a cycle) are BindError, not defects`,
    () =>
      withEngine(
        Effect.gen(function* () {
          const cyclic: Record<string, unknown> = { a: 1 }
          cyclic.self = cyclic
          const cases: ReadonlyArray<readonly [string, () => unknown]> = [
            ["{ a: 1n }", () => ({ a: 1n })],
            ["[1n]", () => [1n]],
            ["a cyclic object", () => cyclic]
          ]
          const problems: Array<string> = []
          for (const [name, make] of cases) {
            for (const position of allPositions) {
              const id = freshId()
              const exit = yield* Effect.exit(
                bounded(
                  at(
                    position,
                    Effect.flatMap(sql, (s) => s`INSERT INTO vals (id, s) VALUES (${id}, ${make()})`)
                  ),
                  5_000,
                  `${name} @ ${position}`
                )
              )
              if (Exit.isSuccess(exit)) problems.push(`${name} @ ${position}: succeeded`)
              else if (Option.isNone(Cause.failureOption(exit.cause)))
                problems.push(`${name} @ ${position}: a defect: ${show(exit)}`)
              else if (rootTag(failureOf(exit, name)) !== "BindError")
                problems.push(`${name} @ ${position}: ${show(exit)}`)
              if ((yield* countId("vals", id)) !== 0) problems.push(`${name} @ ${position}: a row was written`)
            }
          }
          assert.deepStrictEqual(problems, [], "objects without a JSON text")
        }),
        { shutdownTimeout: "1 second" }
      )
  )

  it.effect(`[${label}] every value is bound one way in every position and mode`, () =>
    withEngine(
      Effect.gen(function* () {
        const written: Array<{ id: number; what: string; column: string; stored: string | null }> = []
        const failures: Array<string> = []
        for (const v of bindable) {
          for (const position of allPositions) {
            for (const mode of modes) {
              const id = freshId()
              const stmt = Effect.flatMap(sql, (s) =>
                runAs(s`INSERT INTO vals (id, ${s(v.column)}) VALUES (${id}, ${v.value()})`, mode)
              )
              const exit = yield* Effect.exit(at(position, stmt))
              if (Exit.isFailure(exit)) failures.push(`${v.name} @ ${position}/${mode}: ${show(exit)}`)
              else written.push({ id, what: `${v.name} @ ${position}/${mode}`, column: v.column, stored: v.stored })
            }
          }
        }
        assert.deepStrictEqual(failures, [], "binding a valid value failed")
        const rows = yield* adminQuery<{
          id: number
          s: string | null
          b: string | null
          u: string | null
          d: string | null
          bl: string | null
        }>(
          `SELECT id, s, CAST(b AS CHAR) AS b, CAST(u AS CHAR) AS u, CAST(d AS CHAR) AS d, HEX(bl) AS bl FROM vals WHERE id IN (${written.map((w) => w.id).join(",")})`
        )
        const byId = new Map(rows.map((r) => [Number(r.id), r]))
        const wrong: Array<string> = []
        for (const w of written) {
          const row = byId.get(w.id) as Record<string, unknown> | undefined
          if (row === undefined) {
            wrong.push(`${w.what}: row missing`)
            continue
          }
          const got = row[w.column] === null || row[w.column] === undefined ? null : String(row[w.column])
          if (got !== w.stored)
            wrong.push(`${w.what}: stored ${JSON.stringify(got)}, expected ${JSON.stringify(w.stored)}`)
        }
        assert.deepStrictEqual(wrong, [], "a value was stored differently than bound")

        // a Date is a DATETIME, the same in every position and mode
        const date = new Date(Date.UTC(2024, 1, 3, 4, 5, 6))
        const dates: Array<{ id: number; what: string }> = []
        for (const position of allPositions) {
          for (const mode of modes) {
            const id = freshId()
            yield* at(
              position,
              Effect.flatMap(sql, (s) => runAs(s`INSERT INTO vals (id, dt) VALUES (${id}, ${date})`, mode))
            )
            dates.push({ id, what: `${position}/${mode}` })
          }
        }
        const stored = yield* adminQuery<{ id: number; dt: string }>(
          `SELECT id, DATE_FORMAT(dt, '%Y-%m-%d %H:%i:%s') AS dt FROM vals WHERE id IN (${dates.map((d) => d.id).join(",")})`
        )
        const distinct = new Set(stored.map((r) => r.dt))
        assert.strictEqual(stored.length, dates.length, "every Date row written")
        assert.strictEqual(distinct.size, 1, `a Date is stored differently by position/mode: ${JSON.stringify(stored)}`)
      })
    )
  )

  it.effect(`[${label}] values never become SQL: hostile strings stored and compared exactly, everywhere`, () =>
    withEngine(
      Effect.gen(function* () {
        const wrong: Array<string> = []
        const expected: Array<{ id: number; s: string; what: string }> = []
        for (const [i, value] of hostile.entries()) {
          for (const position of withLayer) {
            for (const mode of modes) {
              const id = freshId()
              const exit = yield* Effect.exit(
                at(
                  position,
                  Effect.flatMap(sql, (s) => runAs(s`INSERT INTO vals (id, s) VALUES (${id}, ${value})`, mode))
                )
              )
              if (Exit.isFailure(exit)) {
                wrong.push(`#${i} insert @ ${position}/${mode}: ${show(exit)}`)
                continue
              }
              expected.push({ id, s: value, what: `#${i} @ ${position}/${mode}` })
              // the same value in a WHERE clause matches exactly that row (as a unit's first statement, too)
              const found = yield* Effect.exit(
                at(
                  position,
                  Effect.flatMap(sql, (s) =>
                    Effect.map(
                      s<{ n: number }>`SELECT COUNT(*) AS n FROM vals WHERE id = ${id} AND s = ${value}`,
                      (r) => Number(r[0]!.n)
                    )
                  )
                )
              )
              if (!Exit.isSuccess(found) || found.value !== 1) {
                wrong.push(`#${i} compare @ ${position}: ${show(found)}`)
              }
            }
            // the statement helpers bind the same way: sql.insert, sql.in, sql.update
            const hid = freshId()
            const helpers = yield* Effect.exit(
              at(
                position,
                Effect.gen(function* () {
                  const s = yield* sql
                  yield* s`INSERT INTO vals ${s.insert({ id: hid, s: value })}`
                  const n = yield* s<{
                    n: number
                  }>`SELECT COUNT(*) AS n FROM vals WHERE id = ${hid} AND ${s.in("s", [value, "other"])}`
                  yield* s`UPDATE vals SET ${s.update({ s: `${value}!` })} WHERE id = ${hid}`
                  return Number(n[0]!.n)
                })
              )
            )
            if (!Exit.isSuccess(helpers) || helpers.value !== 1)
              wrong.push(`#${i} helpers @ ${position}: ${show(helpers)}`)
            if (Exit.isSuccess(helpers))
              expected.push({ id: hid, s: `${value}!`, what: `#${i} sql.update @ ${position}` })
          }
        }
        // what the server holds, read once by the superuser
        const stored = yield* adminQuery<{ id: number; s: string }>(
          `SELECT id, s FROM vals WHERE id IN (${expected.map((e) => e.id).join(",")})`
        )
        const byId = new Map(stored.map((r) => [Number(r.id), r.s]))
        for (const e of expected) {
          if (byId.get(e.id) !== e.s) {
            wrong.push(`${e.what}: stored ${JSON.stringify(byId.get(e.id))}, bound ${JSON.stringify(e.s)}`)
          }
        }
        assert.deepStrictEqual(wrong, [], "hostile strings")
        assert.strictEqual(yield* count("pwned"), 0, "a bound value was executed as SQL")
      })
    )
  )

  it.effect(`[${label}] integers keep their value: BIGINT arithmetic is exact in every position`, () =>
    withEngine(
      Effect.gen(function* () {
        const id = freshId()
        yield* adminQuery("INSERT INTO vals (id, b, u) VALUES (?, 10000000000000000, 18446744073709551614)", [id])
        let expected = 10n ** 16n
        for (const position of allPositions) {
          for (const mode of ["execute", "unprepared"] as const) {
            yield* at(
              position,
              Effect.flatMap(sql, (s) => runAs(s`UPDATE vals SET b = b + ${1} WHERE id = ${id}`, mode))
            )
            expected += 1n
            const rows = yield* adminQuery<{ b: string }>("SELECT CAST(b AS CHAR) AS b FROM vals WHERE id = ?", [id])
            assert.strictEqual(rows[0]!.b, String(expected), `b + 1 @ ${position}/${mode} computed in floating point`)
          }
        }
        // the ceiling: BIGINT UNSIGNED max - 1 + 1 with a bigint and with a number
        yield* Session.transact(Effect.flatMap(sql, (s) => s`UPDATE vals SET u = u + ${1} WHERE id = ${id}`))
        const top = yield* adminQuery<{ u: string }>("SELECT CAST(u AS CHAR) AS u FROM vals WHERE id = ?", [id])
        assert.strictEqual(top[0]!.u, "18446744073709551615")
      })
    )
  )

  it.effect(`[${label}] BIGINT / DECIMAL beyond 2^53 read back as exact strings; FLOAT reads the same everywhere`, () =>
    withEngine(
      Effect.gen(function* () {
        const id = freshId()
        yield* adminQuery(
          "INSERT INTO vals (id, b, u, dc, f) VALUES (?, 9007199254740993, 18446744073709551615, 123456789012345678901234567890, 1.1)",
          [id]
        )
        const readings: Array<{ where: string; row: Record<string, unknown> }> = []
        for (const position of allPositions) {
          for (const mode of ["execute", "unprepared"] as const) {
            const rows = (yield* at(
              position,
              Effect.flatMap(sql, (s) => runAs(s`SELECT b, u, dc, f FROM vals WHERE id = ${id}`, mode))
            )) as ReadonlyArray<Record<string, unknown>>
            readings.push({ where: `${position}/${mode}`, row: rows[0]! })
          }
        }
        for (const { where, row } of readings) {
          assert.strictEqual(row.b, "9007199254740993", `BIGINT 2^53+1 @ ${where}: ${typeof row.b} ${String(row.b)}`)
          assert.strictEqual(row.u, "18446744073709551615", `BIGINT UNSIGNED max @ ${where}: ${String(row.u)}`)
          assert.strictEqual(row.dc, "123456789012345678901234567890", `DECIMAL(30) @ ${where}: ${String(row.dc)}`)
        }
        const floats = readings.map((r) => `${r.where}=${String(r.row.f)}`)
        assert.strictEqual(
          new Set(readings.map((r) => String(r.row.f))).size,
          1,
          `FLOAT differs by position: ${floats}`
        )
      })
    )
  )
}

// -----------------------------------------------------------------------------------------------------------------
// default server (with the general log, to prove that nothing was sent)
// -----------------------------------------------------------------------------------------------------------------

layer(suite(generalLog), suiteOptions)("atomicity", (it) => {
  bindingTests(it, "default sql_mode")

  it.effect("options are validated before anything is sent: InvalidOption, nothing kept", () =>
    withEngine(
      Effect.gen(function* () {
        const cases: ReadonlyArray<readonly [string, Session.Options]> = [
          ["lockWaitTimeout", { lockWaitTimeout: 0 }],
          ["lockWaitTimeout", { lockWaitTimeout: -1 }],
          ["lockWaitTimeout", { lockWaitTimeout: Number.NaN }],
          ["lockWaitTimeout", { lockWaitTimeout: "0 millis" }],
          ["lockWaitTimeout", { lockWaitTimeout: Duration.zero }],
          ["statementTimeout", { statementTimeout: 0 }],
          ["statementTimeout", { statementTimeout: -5 }],
          ["statementTimeout", { statementTimeout: Number.NaN }],
          ["timeout", { timeout: 0 }],
          ["timeout", { timeout: -1 }],
          ["isolation", { isolation: "CHAOS" as any }]
        ]
        const problems: Array<string> = []
        for (const [i, [option, options]] of cases.entries()) {
          for (const spelling of ["transact", "layer"] as const) {
            const id = freshId()
            const marker = `sfxopt${i}${spelling}x`
            const body = Effect.flatMap(
              sql,
              (s) => s`INSERT INTO items (id, label) VALUES (${id}, 'opt') /* ${s.literal(marker)} */`
            )
            const exit = yield* Effect.exit(
              spelling === "transact" ? Session.transact(body, options) : Effect.provide(body, Session.layer(options))
            )
            const what = `${JSON.stringify(options)} via ${spelling}`
            if (Exit.isSuccess(exit)) {
              problems.push(`${what}: succeeded`)
            } else {
              const e = failureOf(exit, what) as any
              if (tagOf(e) !== "InvalidOption") problems.push(`${what}: ${tagOf(e)} ${e?.message}`)
              else if (e.option !== option) problems.push(`${what}: option = ${e.option}`)
              else if (e.retryable !== false) problems.push(`${what}: retryable`)
            }
            if ((yield* countId("items", id)) !== 0) problems.push(`${what}: the body's write was kept`)
            if ((yield* received(marker)).length !== 0) problems.push(`${what}: the body reached the server`)
          }
        }
        assert.deepStrictEqual(problems, [], "invalid options")
      })
    )
  )

  it.effect("Duration.infinity: lockWaitTimeout is the server maximum, statementTimeout no limit; the unit works", () =>
    withEngine(
      Effect.gen(function* () {
        const a = freshId()
        const lock = yield* Session.transact(
          Effect.gen(function* () {
            yield* insert(a)
            const s = yield* sql
            const rows = yield* s<{ v: number }>`SELECT @@innodb_lock_wait_timeout AS v`
            return { v: Number(rows[0]!.v), open: yield* openOnServer }
          }),
          { lockWaitTimeout: Duration.infinity }
        )
        assert.isAtLeast(lock.v, 100_000_000, "lockWaitTimeout: infinity is the server's maximum")
        assert.isTrue(lock.open, "the insert ran inside the unit's transaction")
        assert.strictEqual(yield* countId("items", a), 1)

        const b = freshId()
        const st = yield* Session.transact(
          Effect.gen(function* () {
            yield* insert(b)
            const s = yield* sql
            const rows = yield* s<{ v: number }>`SELECT @@max_statement_time AS v`
            return Number(rows[0]!.v)
          }),
          { statementTimeout: Duration.infinity }
        )
        assert.strictEqual(st, 0, "statementTimeout: infinity is no limit")
        assert.strictEqual(yield* countId("items", b), 1)

        // issue 12 #1: with these options, a caught failure and a failing unit keep nothing
        for (const options of [{ lockWaitTimeout: Duration.infinity }, { statementTimeout: Duration.infinity }]) {
          const w = freshId()
          const exit = yield* Effect.exit(
            Session.transact(
              Effect.gen(function* () {
                yield* Effect.either(Effect.flatMap(sql, (s) => s`SELEC broken`))
                yield* insert(w)
                assert.isTrue(yield* openOnServer, "the write after the caught failure is in a transaction")
                return yield* Effect.fail("boom" as const)
              }),
              options
            )
          )
          assert.deepStrictEqual(exit, Exit.fail("boom"))
          assert.strictEqual(
            yield* countId("items", w),
            0,
            `${JSON.stringify(Object.keys(options))}: the write was kept`
          )
        }
      })
    )
  )

  it.scoped(
    "the transaction's start lost on the wire (reset, delivered or not): the unit fails with nothing kept",
    () =>
      Effect.gen(function* () {
        const server = yield* theServer
        const proxy = yield* FaultProxy.make({ target: { host: server.host, port: server.port } })
        yield* withEngine(
          Effect.gen(function* () {
            yield* Session.transact(Effect.flatMap(sql, (s) => s`SELECT 1`))
            for (const [i, forward] of [false, true, false, true].entries()) {
              const [a, b] = [freshId(), freshId()]
              const marker = `sfx-start-${i}`
              const triggered0 = (yield* proxy.counters).triggered
              // the first packet of the unit: START TRANSACTION / BEGIN, or its first statement when it opens the
              // transaction by itself
              yield* proxy.resetNextAfter({
                match: (chunk) => {
                  const text = chunk.toString("latin1")
                  return /START TRANSACTION|\bBEGIN\b/i.test(text) || text.includes(marker)
                },
                forward
              })
              const exit = yield* Effect.exit(
                Session.transact(
                  Effect.gen(function* () {
                    yield* Effect.flatMap(sql, (s) =>
                      s.unsafe(`INSERT INTO items (id, label) VALUES (?, 'start') /* ${marker} */`, [a])
                    )
                    yield* insert(b)
                  })
                )
              )
              yield* proxy.resetNextAfter({ bytesFromClient: Number.MAX_SAFE_INTEGER })
              assert.isAbove((yield* proxy.counters).triggered, triggered0, "the fault never fired")
              const rows = [yield* countId("items", a), yield* countId("items", b)]
              if (Exit.isSuccess(exit)) {
                // only if it started again from scratch on a new connection, all of it in one transaction
                assert.deepStrictEqual(rows, [1, 1], `forward ${forward}: the unit succeeded with rows ${rows}`)
              } else {
                expectTag(exit, ["ConnectionLost", "ConnectionError"], `forward ${forward}`)
                assert.deepStrictEqual(rows, [0, 0], `forward ${forward}: a failed unit kept rows`)
              }
            }
          }),
          { url: proxy.urlFor(server), pool: { size: 1 } }
        )
      })
  )

  it.effect("a caught failure, then more work, then the unit fails: nothing is kept (every kind, first or later)", () =>
    withEngine(
      Effect.gen(function* () {
        const existing = freshId()
        yield* adminQuery("INSERT INTO items (id, label) VALUES (?, 'existing')", [existing])
        const failing: ReadonlyArray<
          readonly [string, Effect.Effect<unknown, unknown, SqlClient.SqlClient>, Session.Options]
        > = [
          ["bind undefined", Effect.flatMap(sql, (s) => s`INSERT INTO items (id) VALUES (${undefined})`), {}],
          ["bind NaN", Effect.flatMap(sql, (s) => s`SELECT ${NaN} AS v`), {}],
          ["bind toSqlString", Effect.flatMap(sql, (s) => s`SELECT ${{ toSqlString: () => "1" }} AS v`), {}],
          ["bind class instance", Effect.flatMap(sql, (s) => s`SELECT ${new Money()} AS v`), {}],
          ["duplicate key", insert(existing), {}],
          ["syntax error", Effect.flatMap(sql, (s) => s`SELEC 1`), {}],
          ["check violation", Effect.flatMap(sql, (s) => s`UPDATE items SET qty = -1 WHERE id = ${existing}`), {}],
          ["statement timeout", Effect.flatMap(sql, (s) => s`SELECT SLEEP(2)`), { statementTimeout: "100 millis" }],
          ["unknown table", Effect.flatMap(sql, (s) => s`SELECT * FROM no_such_table`), {}]
        ]
        const problems: Array<string> = []
        for (const [name, fail, options] of failing) {
          for (const where of ["first", "later"] as const) {
            for (const end of ["fails", "succeeds"] as const) {
              const before = freshId()
              const after = freshId()
              const what = `${name} as the ${where} statement, unit ${end}`
              const exit = yield* Effect.exit(
                Session.transact(
                  Effect.gen(function* () {
                    if (where === "later") yield* insert(before)
                    const r = yield* Effect.either(fail)
                    if (Either.isRight(r)) problems.push(`${what}: the failing statement succeeded`)
                    yield* insert(after)
                    if (!(yield* openOnServer)) problems.push(`${what}: later write in autocommit`)
                    if (end === "fails") return yield* Effect.fail("boom" as const)
                  }),
                  options
                )
              )
              const kept = (yield* countId("items", before)) + (yield* countId("items", after))
              if (end === "fails") {
                if (!Exit.isFailure(exit)) problems.push(`${what}: succeeded`)
                if (kept !== 0) problems.push(`${what}: ${kept} row(s) kept after the unit failed`)
              } else {
                if (!Exit.isSuccess(exit)) problems.push(`${what}: ${show(exit)}`)
                else if (kept !== (where === "later" ? 2 : 1)) problems.push(`${what}: ${kept} row(s) committed`)
              }
            }
          }
        }
        assert.deepStrictEqual(problems, [], "caught failures")
      })
    )
  )

  it.effect(
    "caught LockWaitTimeout without innodb_rollback_on_timeout: only the statement failed, the unit goes on",
    () =>
      Effect.scoped(
        withEngine(
          Effect.gen(function* () {
            const locked = freshId()
            yield* adminQuery("INSERT INTO items (id) VALUES (?)", [locked])
            const holder = yield* Admin.connection(yield* theServer)
            yield* Effect.promise(() => holder.query("START TRANSACTION"))
            yield* Effect.promise(() => holder.query("SELECT * FROM items WHERE id = ? FOR UPDATE", [locked]))
            const w1 = freshId()
            const w2 = freshId()
            const caught = yield* Session.transact(
              Effect.gen(function* () {
                yield* insert(w1)
                const r = yield* Effect.flip(
                  Effect.flatMap(sql, (s) => s`SELECT * FROM items WHERE id = ${locked} FOR UPDATE`)
                )
                yield* insert(w2)
                return r
              }),
              { lockWaitTimeout: "1 second" }
            )
            assert.strictEqual(SessionError.classify(caught)._tag, "LockWaitTimeout")
            assert.strictEqual(yield* countId("items", w1), 1)
            assert.strictEqual(yield* countId("items", w2), 1)
          })
        )
      )
  )

  it.effect(
    "server truth: a caught deadlock aborts the unit (also inside a savepoint); later statements fail (x4)",
    () =>
      withEngine(
        repeat(4, (rep) =>
          Effect.gen(function* () {
            const inSavepoint = rep >= 2
            const seen = yield* Ref.make<Record<string, { lockFailed: boolean; laterFailed: boolean }>>({})
            const r1 = freshId()
            const r2 = freshId()
            yield* adminQuery("INSERT INTO items (id) VALUES (?), (?)", [r1, r2])
            const aLocked = yield* Deferred.make<number>()
            const bLocked = yield* Deferred.make<void>()
            const aWaits = yield* Deferred.make<void>()
            const wA = freshId()
            const wB = freshId()
            const unit = (
              first: number,
              second: number,
              w: number,
              mine: Effect.Effect<void, never, Session.Session>,
              before: Effect.Effect<void>
            ) =>
              Session.transact(
                Effect.gen(function* () {
                  const s = yield* sql
                  yield* s`UPDATE items SET qty = qty + 1 WHERE id = ${first}`
                  yield* mine
                  yield* before
                  const update = s`UPDATE items SET qty = qty + 1 WHERE id = ${second}`
                  const lock = yield* Effect.either(inSavepoint ? Session.savepoint(update) : update)
                  const later = yield* Effect.either(insert(w))
                  yield* Ref.update(seen, (m) => ({
                    ...m,
                    [w]: { lockFailed: Either.isLeft(lock), laterFailed: Either.isLeft(later) }
                  }))
                  return { lock, later }
                })
              )
            const a = yield* Effect.fork(
              unit(
                r1,
                r2,
                wA,
                Effect.flatMap(connectionId, (id) => Deferred.succeed(aLocked, id)),
                Deferred.await(bLocked)
              )
            )
            const b = yield* Effect.fork(unit(r2, r1, wB, Deferred.succeed(bLocked, undefined), Deferred.await(aWaits)))
            const aId = yield* Deferred.await(aLocked)
            yield* eventually(
              Effect.map(
                adminQuery<{ n: string }>(
                  "SELECT COUNT(*) AS n FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = ? AND trx_state = 'LOCK WAIT'",
                  [aId]
                ),
                (r) => Number(r[0]!.n) === 1
              ),
              "unit A waits for B's row lock",
              10,
              trxPoll
            )
            yield* Deferred.succeed(aWaits, undefined)
            const exits = [yield* Fiber.await(a), yield* Fiber.await(b)] as const
            const failed = exits.map((e) => Exit.isFailure(e))
            assert.strictEqual(
              failed.filter(Boolean).length,
              1,
              `exactly one unit fails: ${exits.map(show).join(" / ")}`
            )
            const victim = failed[0] ? 0 : 1
            expectTag(exits[victim]!, ["Deadlock"], "the victim fails with Deadlock although it caught it")
            const winner = exits[1 - victim]!
            assert.isTrue(Exit.isSuccess(winner) && Either.isRight(winner.value.lock), "the other unit got its lock")
            assert.deepStrictEqual(
              (yield* Ref.get(seen))[victim === 0 ? wA : wB],
              { lockFailed: true, laterFailed: true },
              "the victim's statement after the deadlock did not fail"
            )
            assert.strictEqual(yield* countId("items", victim === 0 ? wA : wB), 0, "the victim's later write was kept")
            assert.strictEqual(yield* countId("items", victim === 0 ? wB : wA), 1, "the winner's write was lost")
            const qty = yield* adminQuery<{ id: number; qty: number }>("SELECT id, qty FROM items WHERE id IN (?, ?)", [
              r1,
              r2
            ])
            assert.deepStrictEqual(
              qty.map((r) => Number(r.qty)).sort(),
              [1, 1],
              "only the winner's two updates are committed"
            )
          })
        )
      )
  )

  it.effect("server truth: a lost connection, caught, aborts the unit: later statements fail, nothing kept", () =>
    withEngine(
      Effect.gen(function* () {
        const server = yield* theServer
        for (const variant of ["ignore", "catch-and-write"] as const) {
          const a = freshId()
          const b = freshId()
          const laterResults: Array<boolean> = []
          const exit = yield* Effect.exit(
            Session.transact(
              Effect.gen(function* () {
                yield* insert(a)
                yield* Admin.kill(server, "CONNECTION", yield* connectionId)
                yield* Effect.either(Effect.flatMap(sql, (s) => s`SELECT 1`))
                if (variant === "catch-and-write") {
                  laterResults.push(Either.isLeft(yield* Effect.either(insert(b))))
                  laterResults.push(Either.isLeft(yield* Effect.either(Effect.flatMap(sql, (s) => s`SELECT 2`))))
                }
              })
            )
          )
          expectTag(exit, ["ConnectionLost"], `${variant}: the unit fails with the lost connection`)
          assert.deepStrictEqual(laterResults, variant === "ignore" ? [] : [true, true], "later statements fail")
          assert.strictEqual((yield* countId("items", a)) + (yield* countId("items", b)), 0)
        }
      })
    )
  )

  it.effect("server truth: DDL or a literal COMMIT ends the transaction; the unit goes on in a new one", () =>
    withEngine(
      Effect.gen(function* () {
        const enders: ReadonlyArray<
          readonly [string, (n: number) => Effect.Effect<unknown, unknown, SqlClient.SqlClient>]
        > = [
          ["CREATE TABLE", (n) => Effect.flatMap(sql, (s) => s.unsafe(`CREATE TABLE ddl_${n} (x INT)`))],
          ["ALTER TABLE", (n) => Effect.flatMap(sql, (s) => s.unsafe(`ALTER TABLE items COMMENT = 'c${n}'`))],
          ["TRUNCATE", () => Effect.flatMap(sql, (s) => s`TRUNCATE TABLE pwned`)],
          ["COMMIT", () => Effect.flatMap(sql, (s) => s`COMMIT`)],
          ["commit (unprepared)", () => Effect.flatMap(sql, (s) => s`commit`.unprepared)],
          ["/* c */ COMMIT", () => Effect.flatMap(sql, (s) => s.unsafe("/* c */ COMMIT"))],
          ["COMMIT WORK", () => Effect.flatMap(sql, (s) => s.unsafe("COMMIT WORK"))],
          // these end the open transaction implicitly; the unit must still be one transaction afterwards
          ["BEGIN", () => Effect.flatMap(sql, (s) => s.unsafe("BEGIN").unprepared)],
          ["START TRANSACTION", () => Effect.flatMap(sql, (s) => s.unsafe("START TRANSACTION").unprepared)],
          ["SET autocommit = 1", () => Effect.flatMap(sql, (s) => s.unsafe("SET autocommit = 1").unprepared)]
        ]
        const problems: Array<string> = []
        for (const [name, end] of enders) {
          for (const outcome of ["fails", "succeeds"] as const) {
            const w1 = freshId()
            const w2 = freshId()
            // SET autocommit = 1 commits only when autocommit was 0 (MySQL's rule): ask the server which it was
            let ends = true
            const exit = yield* Effect.exit(
              Session.transact(
                Effect.gen(function* () {
                  yield* insert(w1)
                  if (name.startsWith("SET autocommit")) {
                    ends =
                      Number(
                        yield* Effect.flatMap(sql, (s) =>
                          Effect.map(s<{ a: number }>`SELECT @@autocommit AS a`, (r) => r[0]!.a)
                        )
                      ) === 0
                  }
                  yield* end(w1)
                  yield* insert(w2)
                  if (!(yield* openOnServer)) problems.push(`${name}: the write after it is in autocommit`)
                  if (outcome.startsWith("fails")) return yield* Effect.fail("boom" as const)
                })
              )
            )
            const got = [yield* countId("items", w1), yield* countId("items", w2)]
            if (outcome === "fails") {
              if (!Exit.isFailure(exit) || tagOf(failureOf(exit, name)) !== "boom")
                problems.push(`${name}/fails: ${show(exit)}`)
              const expected = ends ? [1, 0] : [0, 0]
              if (got[0] !== expected[0] || got[1] !== expected[1]) {
                problems.push(`${name}/fails: w1,w2 = ${got} (expected ${expected})`)
              }
            } else {
              if (!Exit.isSuccess(exit)) problems.push(`${name}/succeeds: ${show(exit)}`)
              if (got[0] !== 1 || got[1] !== 1) problems.push(`${name}/succeeds: w1,w2 = ${got} (expected 1,1)`)
            }
          }
        }
        // a literal ROLLBACK ends it too: what came before is gone, what comes after is a new transaction
        const r1 = freshId()
        const r2 = freshId()
        const exit = yield* Effect.exit(
          Session.transact(
            Effect.gen(function* () {
              yield* insert(r1)
              yield* Effect.flatMap(sql, (s) => s`ROLLBACK`)
              yield* insert(r2)
            })
          )
        )
        if (!Exit.isSuccess(exit)) problems.push(`ROLLBACK: ${show(exit)}`)
        const got = [yield* countId("items", r1), yield* countId("items", r2)]
        if (got[0] !== 0 || got[1] !== 1) problems.push(`ROLLBACK: r1,r2 = ${got} (expected 0,1)`)
        assert.deepStrictEqual(problems, [], "statements that end the transaction")
      })
    )
  )

  it.effect("after DDL or COMMIT, savepoints and sql.withTransaction work (commit and rollback of the rest)", () =>
    withEngine(
      Effect.gen(function* () {
        for (const outcome of ["succeeds", "fails", "succeeds after COMMIT", "fails after COMMIT"] as const) {
          const [a, b, c, d] = [freshId(), freshId(), freshId(), freshId()]
          const table = `after_ddl_${a}`
          const exit = yield* Effect.exit(
            Session.transact(
              Effect.gen(function* () {
                const s = yield* sql
                yield* s.unsafe(`CREATE TABLE ${table} (x INT)`)
                if (outcome.endsWith("after COMMIT")) yield* s`COMMIT`
                yield* s.withTransaction(insert(a))
                yield* Session.savepoint(insert(b))
                const inner = yield* Effect.either(
                  Session.transact(Effect.zipRight(insert(c), Effect.fail("inner" as const)))
                )
                assert.isTrue(Either.isLeft(inner))
                yield* s.withTransaction(s.withTransaction(insert(d)))
                if (outcome.startsWith("fails")) return yield* Effect.fail("boom" as const)
              })
            )
          )
          const counts: Array<number> = []
          for (const id of [a, b, c, d]) counts.push(yield* countId("items", id))
          assert.strictEqual(
            yield* count("information_schema.tables", "table_name = ?", [table]),
            1,
            "the DDL is committed"
          )
          if (outcome.startsWith("succeeds")) {
            assert.isTrue(Exit.isSuccess(exit), `${outcome}: ${show(exit)}`)
            assert.deepStrictEqual(
              counts,
              [1, 1, 0, 1],
              `${outcome}: a, b, d committed; c rolled back to its savepoint`
            )
          } else {
            assert.deepStrictEqual(exit, Exit.fail("boom"))
            assert.deepStrictEqual(counts, [0, 0, 0, 0], `${outcome}: the work after the DDL is rolled back`)
          }
        }
      })
    )
  )

  it.effect("DDL inside a savepoint or sql.withTransaction: the unit goes on and commits what follows", () =>
    withEngine(
      Effect.gen(function* () {
        for (const spelling of ["Session.savepoint", "sql.withTransaction", "nested Session.transact"] as const) {
          const [a, b, c] = [freshId(), freshId(), freshId()]
          const table = `ddl_sp_${a}`
          const inner = Effect.gen(function* () {
            yield* insert(a)
            yield* Effect.flatMap(sql, (s) => s.unsafe(`CREATE TABLE ${table} (x INT)`))
            yield* insert(b)
          })
          const exit = yield* Effect.exit(
            Session.transact(
              Effect.gen(function* () {
                if (spelling === "Session.savepoint") yield* Session.savepoint(inner)
                else if (spelling === "sql.withTransaction") yield* Effect.flatMap(sql, (s) => s.withTransaction(inner))
                else yield* Session.transact(inner)
                yield* insert(c)
              })
            )
          )
          assert.isTrue(Exit.isSuccess(exit), `${spelling} around DDL: ${show(exit)}`)
          assert.deepStrictEqual(
            [yield* countId("items", a), yield* countId("items", b), yield* countId("items", c)],
            [1, 1, 1],
            `${spelling} around DDL`
          )
        }
      })
    )
  )

  it.effect(
    "MysqlMigrator: a CREATE TABLE migration then one using sql.withTransaction succeeds (in a unit and not)",
    () =>
      withEngine(
        Effect.gen(function* () {
          for (const where of ["inside Session.transact", "engine client"] as const) {
            const n = freshId()
            const migrations = {
              [`1_create_widgets_${n}`]: Effect.flatMap(sql, (s) =>
                s.unsafe(`CREATE TABLE widgets_${n} (id INT PRIMARY KEY)`)
              ),
              [`2_fill_widgets_${n}`]: Effect.flatMap(sql, (s) =>
                s.withTransaction(
                  Effect.zipRight(
                    s.unsafe(`INSERT INTO widgets_${n} VALUES (1)`),
                    s.unsafe(`INSERT INTO widgets_${n} VALUES (2)`)
                  )
                )
              )
            }
            const run = MysqlMigrator.run({
              loader: MysqlMigrator.fromRecord(migrations),
              table: `migrations_${n}`
            }) as unknown as Effect.Effect<ReadonlyArray<readonly [number, string]>, unknown, SqlClient.SqlClient>
            const program: Effect.Effect<
              ReadonlyArray<readonly [number, string]>,
              unknown,
              SqlClient.SqlClient | Engine.Engine
            > = where === "engine client" ? run : Session.transact(run)
            const exit = yield* Effect.exit(program)
            assert.isTrue(Exit.isSuccess(exit), `${where}: ${show(exit)}`)
            if (Exit.isSuccess(exit)) assert.strictEqual(exit.value.length, 2, `${where}: both migrations ran`)
            assert.strictEqual(yield* count(`widgets_${n}`), 2, `${where}: the data`)
            assert.strictEqual(yield* count(`migrations_${n}`), 2, `${where}: both migrations recorded`)
          }
        })
      )
  )

  // ---------------------------------------------------------------------------------------------------------------
  // nested units
  // ---------------------------------------------------------------------------------------------------------------

  it.effect(
    "nested rollbackOnly (transact and layer): the nested write is rolled back, the outer commits the rest",
    () =>
      withEngine(
        Effect.gen(function* () {
          for (const spelling of ["transact", "layer"] as const) {
            const [a, b, c] = [freshId(), freshId(), freshId()]
            const value = yield* Session.transact(
              Effect.gen(function* () {
                yield* insert(a)
                const v =
                  spelling === "transact"
                    ? yield* Session.transact(Effect.as(insert(b), "inner done"), { rollbackOnly: true })
                    : yield* Effect.provide(Effect.as(insert(b), "inner done"), Session.layer({ rollbackOnly: true }))
                yield* insert(c)
                return v
              })
            )
            assert.strictEqual(value, "inner done")
            assert.deepStrictEqual(
              [yield* countId("items", a), yield* countId("items", b), yield* countId("items", c)],
              [1, 0, 1],
              `${spelling}: outer a, c committed; nested rollbackOnly b rolled back`
            )
          }
        })
      )
  )

  it.effect('nested readOnly / consistentSnapshot / other isolation: InvalidOption naming propagation "new"', () =>
    withEngine(
      Effect.gen(function* () {
        const cases: ReadonlyArray<readonly [string, Session.Options, Session.Options]> = [
          ["readOnly", {}, { readOnly: true }],
          ["consistentSnapshot", {}, { consistentSnapshot: true }],
          ["isolation", {}, { isolation: "SERIALIZABLE" }],
          ["isolation", { isolation: "READ COMMITTED" }, { isolation: "REPEATABLE READ" }]
        ]
        for (const [option, outer, nested] of cases) {
          for (const spelling of ["transact", "layer"] as const) {
            const [a, b, c] = [freshId(), freshId(), freshId()]
            const what = `nested ${JSON.stringify(nested)} in ${JSON.stringify(outer)} via ${spelling}`
            const inner = yield* Session.transact(
              Effect.gen(function* () {
                yield* insert(a)
                const r = yield* Effect.exit(
                  spelling === "transact"
                    ? Session.transact(insert(b), nested)
                    : Effect.provide(insert(b), Session.layer(nested))
                )
                yield* insert(c)
                return r
              }),
              outer
            )
            const e = expectTag(inner, ["InvalidOption"], what)
            assert.strictEqual(e.option, option, what)
            assert.match(String(e.message), /propagation:\s*["']new["']/, `${what}: the message says what to do`)
            assert.deepStrictEqual(
              [yield* countId("items", a), yield* countId("items", b), yield* countId("items", c)],
              [1, 0, 1],
              `${what}: the refused unit wrote nothing, the outer went on`
            )
          }
        }
        // honourable nested options are honoured: the same isolation, readOnly inside readOnly
        const same = yield* Effect.exit(
          Session.transact(
            Session.transact(
              Effect.flatMap(sql, (s) => s`SELECT 1`),
              { isolation: "SERIALIZABLE" }
            ),
            {
              isolation: "SERIALIZABLE"
            }
          )
        )
        assert.isTrue(Exit.isSuccess(same), `same isolation nested: ${show(same)}`)
        const ro = yield* Effect.exit(
          Session.transact(
            Session.transact(
              Effect.flatMap(sql, (s) => s`SELECT 1`),
              { readOnly: true }
            ),
            { readOnly: true }
          )
        )
        assert.isTrue(Exit.isSuccess(ro), `readOnly inside readOnly: ${show(ro)}`)
      })
    )
  )

  it.effect(
    "nested timeout / statementTimeout are honoured: typed failure well before the 2 s statement ends, the outer goes on",
    () =>
      withEngine(
        Effect.gen(function* () {
          for (const [option, tag] of [
            ["timeout", "TransactionTimeout"],
            ["statementTimeout", "StatementTimeout"]
          ] as const) {
            const [a, b, c] = [freshId(), freshId(), freshId()]
            const { exit, ms } = yield* Session.transact(
              Effect.gen(function* () {
                yield* insert(a)
                const t0 = Date.now()
                const exit = yield* Effect.exit(
                  Session.transact(
                    Effect.zipRight(
                      insert(b),
                      Effect.flatMap(sql, (s) => s`SELECT SLEEP(2) AS slept`)
                    ),
                    { [option]: "200 millis" }
                  )
                )
                const ms = Date.now() - t0
                yield* insert(c)
                return { exit, ms }
              })
            )
            expectTag(exit, [tag], `nested ${option}`)
            assert.isBelow(ms, 1200, `nested ${option}: took ${ms} ms`)
            assert.deepStrictEqual(
              [yield* countId("items", a), yield* countId("items", b), yield* countId("items", c)],
              [1, 0, 1],
              `nested ${option}: its savepoint rolled back, the outer committed`
            )
          }
        })
      )
  )

  it.effect("nested retry / key: InvalidOption before the body runs; the outer goes on", () =>
    withEngine(
      Effect.gen(function* () {
        for (const [option, nested] of [
          ["retry", { retry: true }],
          ["key", { key: "nested-key-1" }]
        ] as const) {
          const [a, b] = [freshId(), freshId()]
          const ran = yield* Ref.make(false)
          const exit = yield* Session.transact(
            Effect.gen(function* () {
              yield* insert(a)
              return yield* Effect.exit(
                Session.transact(Effect.zipRight(Ref.set(ran, true), insert(b)), nested as Session.Options)
              )
            })
          )
          const e = expectTag(exit, ["InvalidOption"], `nested ${option}`)
          assert.strictEqual(e.option, option)
          assert.isFalse(yield* Ref.get(ran), `nested ${option}: the body ran`)
          assert.deepStrictEqual([yield* countId("items", a), yield* countId("items", b)], [1, 0])
        }
      })
    )
  )

  it.effect(
    "nested retry: true inside a unit that retries defers to it: the whole unit runs again, once committed",
    () =>
      withEngine(
        Effect.gen(function* () {
          const [a, b] = [freshId(), freshId()]
          const attempts = yield* Ref.make(0)
          // a repository function written with retry: true, reused inside a bigger unit
          const repository = Session.transact(
            Effect.gen(function* () {
              yield* insert(b)
              if ((yield* Ref.getAndUpdate(attempts, (n) => n + 1)) === 0) {
                return yield* new SessionError.Deadlock({ message: "deadlock (scripted)" })
              }
            }),
            { retry: true }
          )
          yield* Session.transact(Effect.zipRight(insert(a), repository), { retry: true })
          assert.strictEqual(yield* Ref.get(attempts), 2, "the nested body ran again with the whole unit")
          assert.deepStrictEqual([yield* countId("items", a), yield* countId("items", b)], [1, 1])
          // a schedule of its own cannot be honoured inside the outer unit's transaction: refused before it runs
          const own = yield* Effect.exit(
            Session.transact(
              Session.transact(insert(freshId()), { retry: Schedule.recurs(1) as Session.Options["retry"] }),
              { retry: true }
            )
          )
          assert.strictEqual(expectTag(own, ["InvalidOption"], "own schedule").option, "retry")
        })
      )
  )

  // ---------------------------------------------------------------------------------------------------------------
  // afterCommit
  // ---------------------------------------------------------------------------------------------------------------

  it.effect("afterCommit registered in a savepoint that rolled back never runs; in a released one, once", () =>
    withEngine(
      Effect.gen(function* () {
        const ran = yield* Ref.make<ReadonlyArray<string>>([])
        const hook = (name: string) => Session.afterCommit(Ref.update(ran, (l) => [...l, name]))
        yield* Session.transact(
          Effect.gen(function* () {
            yield* insert(freshId())
            yield* Effect.either(Session.savepoint(Effect.zipRight(hook("failed savepoint"), Effect.fail("x"))))
            yield* Effect.either(Session.transact(Effect.zipRight(hook("failed nested transact"), Effect.fail("x"))))
            yield* Session.transact(hook("rollbackOnly nested"), { rollbackOnly: true })
            // released inner savepoint inside an outer savepoint that rolls back
            yield* Effect.either(
              Session.savepoint(Effect.zipRight(Session.savepoint(hook("inner of rolled-back")), Effect.fail("x")))
            )
            yield* Session.savepoint(hook("released savepoint"))
            yield* hook("unit")
          })
        )
        assert.deepStrictEqual([...(yield* Ref.get(ran))].sort(), ["released savepoint", "unit"])
      })
    )
  )

  it.effect(
    "the new API's types: afterCommit can fail with SessionClosed or SharedSession; BindError / InvalidOption / StatementInterrupted",
    () =>
      Effect.sync(() => {
        const hook: Effect.Effect<void, SessionError.SessionClosed | SessionError.SharedSession, Session.Session> =
          Session.afterCommit(Effect.void)
        const bind = new SessionError.BindError({ message: "m", index: 0 })
        const option = new SessionError.InvalidOption({ message: "m", option: "lockWaitTimeout" })
        const interrupted = new SessionError.StatementInterrupted({ message: "m" })
        const all: ReadonlyArray<SessionError.SessionError> = [bind, option, interrupted]
        assert.isTrue(Effect.isEffect(hook))
        assert.deepStrictEqual(
          all.map((e) => [e._tag, SessionError.isRetryable(e), SessionError.isSessionError(e)]),
          [
            ["BindError", false, true],
            ["InvalidOption", false, true],
            ["StatementInterrupted", true, true]
          ]
        )
      })
  )

  it.effect("afterCommit from a fiber that outlived its unit fails with SessionClosed (typed, not a defect)", () =>
    withEngine(
      Effect.gen(function* () {
        for (const outcome of ["commit", "rollback"] as const) {
          const go = yield* Deferred.make<void>()
          const ran = yield* Ref.make(0)
          const daemon = yield* Effect.exit(
            Session.transact(
              Effect.gen(function* () {
                const f = yield* Effect.forkDaemon(
                  Effect.zipRight(Deferred.await(go), Session.afterCommit(Ref.update(ran, (n) => n + 1)))
                )
                if (outcome === "rollback") return yield* Effect.fail(f)
                return f
              })
            )
          )
          const fiber = Exit.isSuccess(daemon)
            ? daemon.value
            : (failureOf(daemon, "unit") as Fiber.RuntimeFiber<void, unknown>)
          yield* Deferred.succeed(go, undefined)
          const exit = yield* Fiber.await(fiber)
          expectTag(exit, ["SessionClosed"], `afterCommit after the unit's ${outcome}`)
          assert.strictEqual(yield* Ref.get(ran), 0)
        }
      })
    )
  )

  // ---------------------------------------------------------------------------------------------------------------
  // interruption
  // ---------------------------------------------------------------------------------------------------------------

  it.effect("Effect.race of two writes in one unit never commits the loser's row (x6)", () =>
    withEngine(
      repeat(6, (i) =>
        Effect.gen(function* () {
          const a = freshId()
          const b = freshId()
          const slowA = i % 2 === 1
          const writeA = slowA
            ? Effect.flatMap(
                sql,
                (s) => s`INSERT INTO items (id, label) SELECT ${a}, IF(SLEEP(0.1) = 0, 'a', 'killed')`
              )
            : insert(a, "a")
          const exit = yield* Effect.exit(
            Session.transact(Effect.race(Effect.as(writeA, "a" as const), Effect.as(insert(b, "b"), "b" as const)))
          )
          const [ca, cb] = [yield* countId("items", a), yield* countId("items", b)]
          if (Exit.isSuccess(exit)) {
            const winner = exit.value
            assert.deepStrictEqual(
              [ca, cb],
              winner === "a" ? [1, 0] : [0, 1],
              `winner ${winner}: the loser's row was committed`
            )
          } else {
            expectTag(exit, ["StatementInterrupted"], "a unit poisoned by the loser")
            assert.deepStrictEqual([ca, cb], [0, 0], "a failed unit kept a row")
          }
        })
      )
    )
  )

  it.effect("Effect.timeout around a slow INSERT, caught inside the unit: its row is never committed (x4)", () =>
    withEngine(
      repeat(4, () =>
        Effect.gen(function* () {
          const x = freshId()
          const y = freshId()
          const exit = yield* Effect.exit(
            Session.transact(
              Effect.gen(function* () {
                yield* Effect.either(
                  Effect.timeout(
                    Effect.flatMap(
                      sql,
                      (s) => s`INSERT INTO items (id, label) SELECT ${x}, IF(SLEEP(0.3) = 0, 'slow', 'killed')`
                    ),
                    "50 millis"
                  )
                )
                yield* insert(y)
              })
            )
          )
          assert.strictEqual(yield* countId("items", x), 0, "the timed-out INSERT's row was committed")
          if (Exit.isSuccess(exit)) assert.strictEqual(yield* countId("items", y), 1)
          else {
            expectTag(exit, ["StatementInterrupted"], "the unit")
            assert.strictEqual(yield* countId("items", y), 0)
          }
        })
      )
    )
  )

  it.effect("a sent statement stopped by KILL QUERY leaves nothing and does not poison the unit (x3)", () =>
    withEngine(
      repeat(3, (i) =>
        Effect.gen(function* () {
          const [x, y] = [freshId(), freshId()]
          const marker = `sfx-killed-${i}`
          const exit = yield* Effect.exit(
            Session.transact(
              Effect.gen(function* () {
                const s = yield* sql
                const r = yield* Effect.either(
                  Effect.timeout(
                    s.unsafe(
                      `INSERT INTO items (id, label) SELECT ?, IF(SLEEP(3) = 0, 'slow', 'killed') /* ${marker} */`,
                      [x]
                    ),
                    "150 millis"
                  )
                )
                assert.isTrue(Either.isLeft(r), "the 3 s statement was not timed out")
                // stopped on the server before the unit goes on
                yield* eventually(
                  Effect.map(running(marker), (n) => n === 0),
                  "the interrupted statement stopped on the server (it would run 3 s)",
                  1
                )
                yield* insert(y)
              })
            )
          )
          assert.isTrue(Exit.isSuccess(exit), `a statement the server stopped poisoned the unit: ${show(exit)}`)
          assert.deepStrictEqual([yield* countId("items", x), yield* countId("items", y)], [0, 1])
        })
      )
    )
  )

  it.effect("Effect.all fail-fast inside a unit: the interrupted sibling's write is never committed (x20)", () =>
    withEngine(
      repeat(20, (i) =>
        Effect.gen(function* () {
          const [a, b] = [freshId(), freshId()]
          const sibling =
            i % 2 === 0
              ? insert(a)
              : Effect.flatMap(sql, (s) => s`INSERT INTO items (id, label) SELECT ${a}, IF(SLEEP(0.1) = 0, 'a', 'k')`)
          const exit = yield* Effect.exit(
            Session.transact(
              Effect.gen(function* () {
                const r = yield* Effect.either(
                  Effect.all([sibling, Effect.zipRight(Effect.yieldNow(), Effect.fail("sibling failed" as const))], {
                    concurrency: 2
                  })
                )
                assert.isTrue(Either.isLeft(r))
                yield* insert(b)
              })
            )
          )
          const [ca, cb] = [yield* countId("items", a), yield* countId("items", b)]
          if (Exit.isSuccess(exit)) {
            assert.strictEqual(cb, 1)
            assert.strictEqual(ca, 0, "the interrupted sibling's row was committed")
          } else {
            // a SqlError 1317 here is the sibling's KILL landing on the unit's next statement (insert b)
            expectTag(exit, ["StatementInterrupted"], "the unit (an interruption must not hit its next statement)")
            assert.deepStrictEqual([ca, cb], [0, 0])
          }
        })
      )
    )
  )

  it.effect("a late KILL never hits the unit's next statement (no latency, x20)", () =>
    withEngine(
      repeat(20, (i) =>
        Effect.gen(function* () {
          const [x, y] = [freshId(), freshId()]
          let timedOut = false
          const exit = yield* Effect.exit(
            Session.transact(
              Effect.gen(function* () {
                // interrupted while in flight (when the timeout fires first); it may complete before its KILL lands
                timedOut = Either.isLeft(yield* Effect.either(Effect.timeout(insert(x), `${i % 3} millis`)))
                // the next statement runs long enough for a late KILL to land on it
                yield* Effect.flatMap(
                  sql,
                  (s) => s`INSERT INTO items (id, label) SELECT ${y}, IF(SLEEP(0.05) = 0, 'next', 'killed')`
                )
              })
            )
          )
          if (Exit.isSuccess(exit)) {
            assert.strictEqual(
              yield* count("items", "id = ? AND label = 'next'", [y]),
              1,
              "the next statement was killed"
            )
            if (timedOut) assert.strictEqual(yield* countId("items", x), 0, "the interrupted INSERT was committed")
          } else {
            expectTag(
              exit,
              ["StatementInterrupted"],
              "the unit (a SqlError 1317 means the KILL hit the next statement)"
            )
            assert.deepStrictEqual([yield* countId("items", x), yield* countId("items", y)], [0, 0])
          }
        })
      )
    )
  )

  it.scoped(
    "interrupted after it completed (50 ms latency): the innermost level is poisoned, never committed (x4)",
    () =>
      Effect.gen(function* () {
        const server = yield* theServer
        const proxy = yield* FaultProxy.make({ target: { host: server.host, port: server.port } })
        yield* withEngine(
          Effect.gen(function* () {
            yield* Session.transact(Effect.flatMap(sql, (s) => s`SELECT 1`)) // warm
            yield* proxy.setLatency(40)
            yield* repeat(4, (i) =>
              Effect.gen(function* () {
                const [x, y, z] = [freshId(), freshId(), freshId()]
                const inSavepoint = i % 2 === 1
                const timedOut = Effect.gen(function* () {
                  yield* Effect.either(Effect.timeout(insert(x), "20 millis"))
                  yield* insert(y)
                })
                const exit = yield* Effect.exit(
                  Session.transact(
                    inSavepoint
                      ? Effect.gen(function* () {
                          const sp = yield* Effect.exit(Session.savepoint(timedOut))
                          yield* insert(z)
                          return sp
                        })
                      : timedOut
                  )
                )
                assert.strictEqual(yield* countId("items", x), 0, "the interrupted INSERT's row was committed")
                if (!inSavepoint) {
                  if (Exit.isFailure(exit)) {
                    expectTag(exit, ["StatementInterrupted"], "the poisoned unit")
                    assert.strictEqual(yield* countId("items", y), 0)
                  } else assert.strictEqual(yield* countId("items", y), 1)
                } else {
                  assert.isTrue(Exit.isSuccess(exit), `the outer unit goes on: ${show(exit)}`)
                  if (Exit.isSuccess(exit)) {
                    const sp = exit.value as unknown as Exit.Exit<void, unknown>
                    if (Exit.isFailure(sp)) {
                      expectTag(sp, ["StatementInterrupted"], "the poisoned savepoint")
                      assert.strictEqual(yield* countId("items", y), 0, "the poisoned savepoint kept a row")
                    } else assert.strictEqual(yield* countId("items", y), 1)
                  }
                  assert.strictEqual(yield* countId("items", z), 1, "the outer unit's write")
                }
              })
            )
            yield* proxy.setLatency(0)
          }),
          { url: proxy.urlFor(server), pool: { size: 1 } }
        )
      })
  )

  it.effect(
    "interrupting a statement that is waiting (not yet sent) withdraws it: nothing runs, the unit commits",
    () =>
      withEngine(
        repeat(3, (i) =>
          Effect.gen(function* () {
            const [x, y] = [freshId(), freshId()]
            const marker = `sfx-withdraw-${i}`
            const stillRunning = yield* Session.transact(
              Effect.gen(function* () {
                const s = yield* sql
                const slow = yield* Effect.fork(s.unsafe(`SELECT SLEEP(0.6) AS z /* ${marker} */`))
                yield* eventually(
                  Effect.map(running(marker), (n) => n === 1),
                  "the slow statement runs"
                )
                const waiting = yield* Effect.fork(insert(x))
                yield* Effect.yieldNow()
                yield* Effect.yieldNow()
                yield* Fiber.interrupt(waiting)
                // the session runs one statement at a time: while the slow one runs, the INSERT cannot have been sent
                const n = yield* running(marker)
                yield* Fiber.join(slow)
                yield* insert(y)
                return n
              })
            )
            assert.strictEqual(
              stillRunning,
              1,
              "the slow statement ended before the interruption: the case did not happen"
            )
            assert.strictEqual(yield* countId("items", x), 0, "the withdrawn INSERT ran")
            assert.strictEqual(yield* countId("items", y), 1)
          })
        )
      )
  )

  it.scoped(
    "an interruption affects only its own statement: never a later one, never another unit's (pool 1, 50 ms latency)",
    () =>
      Effect.gen(function* () {
        const server = yield* theServer
        const proxy = yield* FaultProxy.make({ target: { host: server.host, port: server.port } })
        // a fresh Engine per repetition: nothing that stops a statement is warm (a KILL may need a new connection,
        // slow through the proxy), so a late KILL has every chance to land on whatever runs next
        yield* repeat(4, (i) =>
          withEngine(
            Effect.gen(function* () {
              yield* proxy.setLatency(0)
              yield* Session.transact(Effect.flatMap(sql, (s) => s`SELECT 1`))
              yield* proxy.setLatency(50)
              const [a, b] = [freshId(), freshId()]
              const laterInA = i % 2 === 1
              // unit A: its statement times out in flight and finishes by itself before the KILL can land
              const aExit = yield* Effect.exit(
                Session.transact(
                  Effect.gen(function* () {
                    yield* Effect.either(
                      Effect.timeout(
                        Effect.flatMap(sql, (s) => s`SELECT SLEEP(0.02) AS a`),
                        "30 millis"
                      )
                    )
                    if (laterInA) {
                      // a later statement of the same unit, running when a late KILL would land, is not hit by it
                      // (a SLEEP alone returns 1 without an error when killed: make a kill visible)
                      const later = yield* Effect.either(
                        Effect.flatMap(
                          sql,
                          (s) => s<{ later: number }>`SELECT 7 AS later FROM DUAL WHERE SLEEP(0.6) = 0`
                        )
                      )
                      assert.isTrue(
                        Either.isRight(later) && later.right.length === 1,
                        `A's later statement was hit: ${Either.isLeft(later) ? later.left.message : "no row (killed)"}`
                      )
                      yield* insert(a)
                    }
                    // otherwise A ends at once: B's statement runs when a late KILL would land
                  })
                )
              )
              if (Exit.isFailure(aExit)) expectTag(aExit, ["StatementInterrupted"], "unit A")
              // unit B, next on the same connection, runs fine
              const bExit = yield* Effect.exit(
                Session.transact(
                  Effect.flatMap(
                    sql,
                    (s) => s`INSERT INTO items (id, label) SELECT ${b}, IF(SLEEP(0.6) = 0, 'b', 'killed')`
                  )
                )
              )
              assert.isTrue(Exit.isSuccess(bExit), `unit B was hit by A's interruption: ${show(bExit)}`)
              assert.strictEqual(yield* count("items", "id = ? AND label = 'b'", [b]), 1, "B's statement was killed")
              yield* proxy.setLatency(0)
            }),
            { url: proxy.urlFor(server), pool: { size: 1 }, killGrace: "3 seconds" }
          )
        )
      })
  )

  // ---------------------------------------------------------------------------------------------------------------
  // per-unit settings
  // ---------------------------------------------------------------------------------------------------------------

  it.effect("a unit's lockWaitTimeout / statementTimeout / isolation last as long as the unit (pool 1)", () =>
    Effect.gen(function* () {
      for (const engineDefault of [undefined, "3 seconds"] as const) {
        yield* withEngine(
          Effect.gen(function* () {
            const read = Effect.flatMap(sql, (s) =>
              Effect.map(
                s<{ l: number; m: number }>`SELECT @@innodb_lock_wait_timeout AS l, @@max_statement_time AS m`,
                (r) => ({ l: Number(r[0]!.l), m: Number(r[0]!.m) })
              )
            )
            const baseline = yield* Session.transact(read)
            assert.strictEqual(baseline.l, engineDefault === undefined ? 50 : 3, "the engine default applies")
            const inside = yield* Session.transact(read, {
              lockWaitTimeout: "7 seconds",
              statementTimeout: "9 seconds"
            })
            assert.deepStrictEqual(inside, { l: 7, m: 9 }, "the unit's settings apply inside it")
            for (const next of ["after a committed unit", "after a failed unit"] as const) {
              if (next === "after a failed unit") {
                yield* Effect.exit(
                  Session.transact(Effect.zipRight(read, Effect.fail("x")), {
                    lockWaitTimeout: "8 seconds",
                    statementTimeout: "4 seconds"
                  })
                )
              }
              const after = yield* Session.transact(read)
              assert.deepStrictEqual(
                after,
                baseline,
                `${next}: the next unit sees the defaults (engine ${engineDefault})`
              )
              // outside units too
              const outside = yield* read
              assert.deepStrictEqual(outside, baseline, `${next}: the autocommit client sees the defaults`)
            }
            // isolation is per unit as well
            yield* Session.transact(
              Effect.flatMap(sql, (s) => s`SELECT COUNT(*) FROM items FOR UPDATE`),
              { isolation: "SERIALIZABLE" }
            )
            const level = yield* Session.transact(
              Effect.gen(function* () {
                yield* Effect.flatMap(sql, (s) => s`SELECT COUNT(*) FROM items FOR UPDATE`)
                const id = yield* connectionId
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
                return level
              })
            )
            assert.strictEqual(level, "REPEATABLE READ", "the next unit's isolation is the default")
          }),
          { pool: { size: 1 }, ...(engineDefault ? { lockWaitTimeout: engineDefault } : {}) }
        )
      }
    })
  )

  it.effect("per-unit isolation / readOnly on every unit: no prepares after warm-up, no reset, same connection", () =>
    withEngine(
      Effect.gen(function* () {
        const id = freshId()
        yield* adminQuery("INSERT INTO items (id) VALUES (?)", [id])
        for (const options of [
          { isolation: "READ COMMITTED" },
          { readOnly: true },
          { isolation: "SERIALIZABLE", lockWaitTimeout: "2 seconds" },
          { consistentSnapshot: true }
        ] as ReadonlyArray<Session.Options>) {
          const unit = Session.transact(
            Effect.gen(function* () {
              yield* Effect.flatMap(sql, (s) => s`SELECT qty FROM items WHERE id = ${id}`)
              return yield* connectionId
            }),
            options
          )
          yield* unit
          yield* unit
          const prepares0 = yield* globalStatus("Com_stmt_prepare")
          const destroyed0 = (yield* Engine.stats).destroyed
          const ids = new Set<number>()
          for (let i = 0; i < 8; i++) ids.add(yield* unit)
          const prepares = (yield* globalStatus("Com_stmt_prepare")) - prepares0
          assert.strictEqual(prepares, 0, `${JSON.stringify(options)}: ${prepares} prepares over 8 units`)
          assert.strictEqual((yield* Engine.stats).destroyed - destroyed0, 0, `${JSON.stringify(options)}: destroyed`)
          assert.strictEqual(ids.size, 1, `${JSON.stringify(options)}: not the pool's one connection`)
        }
      }),
      { pool: { size: 1 } }
    )
  )

  it.effect("per-unit settings cost the next unit nothing: no prepares after warm-up, no reset, same connection", () =>
    withEngine(
      Effect.gen(function* () {
        const id = freshId()
        yield* adminQuery("INSERT INTO items (id) VALUES (?)", [id])
        const unit = Session.transact(
          Effect.gen(function* () {
            const s = yield* sql
            yield* s`SELECT qty FROM items WHERE id = ${id} FOR UPDATE`
            yield* s`UPDATE items SET qty = qty + ${1} WHERE id = ${id}`
            return yield* connectionId
          }),
          { lockWaitTimeout: "5 seconds", statementTimeout: "30 seconds" }
        )
        const first = yield* unit
        yield* unit
        yield* unit
        const prepares0 = yield* globalStatus("Com_stmt_prepare")
        const destroyed0 = (yield* Engine.stats).destroyed
        const ids = new Set<number>([first])
        for (let i = 0; i < 10; i++) ids.add(yield* unit)
        const prepares = (yield* globalStatus("Com_stmt_prepare")) - prepares0
        assert.strictEqual(prepares, 0, `${prepares} statements prepared again over 10 units with per-unit settings`)
        assert.strictEqual((yield* Engine.stats).destroyed - destroyed0, 0, "connections destroyed")
        assert.strictEqual(ids.size, 1, "the units did not all run on the pool's one connection")
        const qty = yield* adminQuery<{ qty: number }>("SELECT qty FROM items WHERE id = ?", [id])
        assert.strictEqual(Number(qty[0]!.qty), 13)
      }),
      { pool: { size: 1 } }
    )
  )
})

// -----------------------------------------------------------------------------------------------------------------
// sql_mode NO_BACKSLASH_ESCAPES, ANSI_QUOTES: the same binding guarantees
// -----------------------------------------------------------------------------------------------------------------

layer(suite([...generalLog, "--sql-mode=NO_BACKSLASH_ESCAPES,ANSI_QUOTES,STRICT_TRANS_TABLES"]), suiteOptions)(
  "atomicity under sql_mode NO_BACKSLASH_ESCAPES,ANSI_QUOTES",
  (it) => {
    it.effect("the server runs with that sql_mode", () =>
      Effect.gen(function* () {
        const rows = yield* adminQuery<{ m: string }>("SELECT @@GLOBAL.sql_mode AS m")
        assert.include(rows[0]!.m, "NO_BACKSLASH_ESCAPES")
        assert.include(rows[0]!.m, "ANSI_QUOTES")
      })
    )
    bindingTests(it, "NO_BACKSLASH_ESCAPES,ANSI_QUOTES")

    it.effect(
      "issue 12 #2: injection through a unit's first statement does not run, the unit commits nothing else",
      () =>
        withEngine(
          Effect.gen(function* () {
            const id = freshId()
            yield* adminQuery("INSERT INTO vals (id, s) VALUES (?, 'name')", [id])
            const rows = yield* Session.transact(
              Effect.flatMap(
                sql,
                (s) => s`SELECT id FROM vals WHERE id = ${id} AND s = ${"x'; INSERT INTO pwned VALUES (1); -- "}`
              )
            )
            assert.strictEqual(rows.length, 0)
            const named = yield* Session.transact(
              Effect.flatMap(sql, (s) => s`SELECT id FROM vals WHERE id = ${id} AND s = ${"name"}`)
            )
            assert.strictEqual(named.length, 1)
            assert.strictEqual(yield* count("pwned"), 0, "the injected statement ran")
            const dir = freshId()
            yield* Session.transact(
              Effect.flatMap(sql, (s) => s`INSERT INTO vals (id, s) VALUES (${dir}, ${"C:\\dir"})`)
            )
            const stored = yield* adminQuery<{ s: string }>("SELECT s FROM vals WHERE id = ?", [dir])
            assert.strictEqual(stored[0]!.s, "C:\\dir", "a backslash was doubled")
          })
        )
    )
  }
)

// -----------------------------------------------------------------------------------------------------------------
// innodb_rollback_on_timeout=ON: a lock wait timeout ends the whole transaction
// -----------------------------------------------------------------------------------------------------------------

layer(suite(["--innodb-rollback-on-timeout=ON"]), suiteOptions)(
  "atomicity with innodb_rollback_on_timeout=ON",
  (it) => {
    it.scoped("a caught LockWaitTimeout aborts the unit: later statements fail, it fails, nothing is kept", () =>
      Effect.gen(function* () {
        const locked = freshId()
        yield* adminQuery("INSERT INTO items (id) VALUES (?)", [locked])
        const holder = yield* Admin.connection(yield* theServer)
        yield* Effect.promise(() => holder.query("START TRANSACTION"))
        yield* Effect.promise(() => holder.query("SELECT * FROM items WHERE id = ? FOR UPDATE", [locked]))
        yield* withEngine(
          Effect.gen(function* () {
            const variants = ["later statement", "first statement", "inside a savepoint"] as const
            for (const variant of variants) {
              const [w1, w2] = [freshId(), freshId()]
              const later: Array<boolean> = []
              const exit = yield* Effect.exit(
                Session.transact(
                  Effect.gen(function* () {
                    const s = yield* sql
                    if (variant !== "first statement") yield* insert(w1)
                    const lock = s`SELECT * FROM items WHERE id = ${locked} FOR UPDATE`
                    yield* Effect.either(variant === "inside a savepoint" ? Session.savepoint(lock) : lock)
                    later.push(Either.isLeft(yield* Effect.either(insert(w2))))
                  }),
                  { lockWaitTimeout: "1 second" }
                )
              )
              expectTag(exit, ["LockWaitTimeout"], `${variant}: the unit fails with the timeout it caught`)
              assert.deepStrictEqual(later, [true], `${variant}: the statement after the server's rollback succeeded`)
              assert.deepStrictEqual(
                [yield* countId("items", w1), yield* countId("items", w2)],
                [0, 0],
                `${variant}: rows kept`
              )
            }
          }),
          { pool: { size: 1 } }
        )
      })
    )
  }
)
