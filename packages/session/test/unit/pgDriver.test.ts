/**
 * The PostgreSQL driver's pure parts, without a server: SQLSTATE classes, the error description `SessionError`
 * builds from, binding, the per-unit settings' statement, the baseline, and the compiler's text.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Statement from "@effect/sql/Statement"
import * as SessionError from "../../src/SessionError.js"
import * as describeAny from "../../src/internal/driver/errors.js"
import { makeCompiler } from "../../src/internal/driver/pg/compiler.js"
import { baselineOf, dialect, millisOf } from "../../src/internal/driver/pg/dialect.js"
import * as errors from "../../src/internal/driver/pg/errors.js"
import { maybeUnflagged } from "../../src/internal/driver/pg/server.js"
import { bindValues } from "../../src/internal/driver/pg/values.js"

/** A server error as node-postgres gives it, marked by the driver. */
const pgError = (code: string, extra: Record<string, unknown> = {}) =>
  errors.mark(Object.assign(new Error(`error ${code}`), { code, severity: "ERROR", ...extra }))

describe("pg errors", () => {
  it.each([
    ["40P01", "Deadlock"],
    ["40001", "SerializationFailure"],
    ["55P03", "LockWaitTimeout"],
    ["57014", "StatementTimeout"],
    ["23505", "DuplicateKey"],
    ["23503", "ForeignKeyViolation"],
    ["23514", "CheckViolation"],
    ["23502", "NotNullViolation"],
    ["25006", "ReadOnlyTransaction"],
    ["57P01", "ConnectionLost"],
    ["08006", "ConnectionLost"],
    ["25P03", "ConnectionLost"],
    ["28P01", "ConnectionError"],
    ["42P01", undefined]
  ])("%s is %s", (code, kind) => {
    expect(errors.describe(pgError(code)).kind).toBe(kind)
    // the same through the one door above the seam
    expect(describeAny.describe(pgError(code)).kind).toBe(kind)
  })

  it("classifies through SessionError, with the key, constraint and column", () => {
    const dup = SessionError.classify(
      pgError("23505", { detail: "Key (id)=(7) already exists.", constraint: "t_pkey" })
    )
    expect(dup._tag).toBe("DuplicateKey")
    expect((dup as SessionError.DuplicateKey).key).toBe("id=7")
    const retryable = (e: unknown) => (e as { readonly retryable?: boolean }).retryable
    expect(retryable(dup)).toBe(false)
    expect(retryable(SessionError.classify(pgError("40001")))).toBe(true)
    expect(retryable(SessionError.classify(pgError("40P01")))).toBe(true)
    const fk = errors.describe(pgError("23503", { constraint: "child_parent_fk" }))
    expect(fk.constraint).toBe("child_parent_fk")
    expect(errors.describe(pgError("23502", { column: "v" })).column).toBe("v")
  })

  it("a closed connection is fatal; a statement's error is not; ECONNREFUSED is a connection error", () => {
    expect(errors.isFatal(errors.mark(new Error("Connection terminated unexpectedly")))).toBe(true)
    expect(errors.isFatal(errors.mark(Object.assign(new Error("reset"), { code: "ECONNRESET" })))).toBe(true)
    expect(errors.isFatal(pgError("23505"))).toBe(false)
    expect(errors.isFatal(pgError("57P01"))).toBe(true)
    const refused = errors.mark(Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" }))
    expect(errors.describe(refused).kind).toBe("ConnectionError")
    expect(errors.connectAdvice(refused)?.retryable).toBe(true)
    expect(errors.connectAdvice(pgError("28P01"))?.retryable).toBe(false)
    expect(errors.isNoSuchTable(pgError("42P01"))).toBe(true)
  })

  it("an unmarked error is MySQL's (the door picks the driver by the mark)", () => {
    expect(describeAny.describe({ errno: 1213, code: "ER_LOCK_DEADLOCK", message: "deadlock" }).kind).toBe("Deadlock")
    expect(errors.isPgError({ code: "40001" })).toBe(false)
  })
})

describe("pg values", () => {
  it("integers as digits, bigints exact, bytes as a Buffer, null as null", () => {
    const bytes = new Uint8Array([1, 2, 3])
    const bound = bindValues([1, -(2n ** 63n), 2n ** 70n, 1.5, true, null, "x", bytes, [1, 2]])
    expect(bound).toEqual([
      "1",
      "-9223372036854775808",
      "1180591620717411303424",
      "1.5",
      "true",
      null,
      "x",
      Buffer.from(bytes),
      [1, 2]
    ])
    expect(bindValues([new Date(Date.UTC(2026, 0, 2, 3, 4, 5, 6))])).toEqual(["2026-01-02T03:04:05.006Z"])
    expect(bindValues([{ a: 1 }])).toEqual(['{"a":1}'])
  })

  it.each([
    ["undefined", undefined, "undefined"],
    ["2^60", 2 ** 60, "beyond"],
    ["NaN", NaN, "NaN"],
    ["Infinity", Infinity, "Infinity"],
    ["an invalid Date", new Date(NaN), "invalid Date"],
    ["a function", () => 1, "function"],
    ["a Map", new Map(), "instance of Map"],
    ["an array holding a symbol", [1, null, Symbol("s")], "symbol"]
  ])("%s is a BindError before anything is sent", (_name, value, what) => {
    const bound = bindValues(["ok", value])
    expect(bound).toBeInstanceOf(SessionError.BindError)
    expect((bound as SessionError.BindError).message).toContain("#2")
    expect((bound as SessionError.BindError).message).toContain(what)
  })
})

describe("pg dialect", () => {
  const base = { lockWait: 0, statementTime: 0, isolation: "READ COMMITTED", autocommit: true }

  it("no statement when the settings are already there; one set_config statement otherwise", () => {
    expect(dialect.settingsSql(base, base)).toBeUndefined()
    expect(dialect.settingsSql(base, { ...base, lockWait: 2, statementTime: 1500, isolation: "SERIALIZABLE" })).toBe(
      "SELECT set_config('lock_timeout', '2000', false), set_config('statement_timeout', '1500', false), set_config('default_transaction_isolation', 'serializable', false)"
    )
  })

  it("BEGIN, savepoints, cancel and terminate", () => {
    expect(dialect.autocommitOff).toBe(false)
    expect(dialect.begin({ readOnly: false, consistentSnapshot: false, deferrable: false })).toBe("BEGIN")
    expect(dialect.begin({ readOnly: true, consistentSnapshot: false, deferrable: false })).toBe("BEGIN READ ONLY")
    expect(dialect.begin({ readOnly: true, consistentSnapshot: true, deferrable: false })).toBe(
      "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
    )
    expect(dialect.begin({ readOnly: true, consistentSnapshot: false, deferrable: true })).toBe(
      "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE"
    )
    expect(dialect.rollbackToSavepoint("sp_1")).toBe("ROLLBACK TO SAVEPOINT sp_1")
    expect(dialect.killQuery(42)).toBe("SELECT pg_cancel_backend(42)")
    expect(dialect.killConnection(42)).toBe("SELECT pg_terminate_backend(42, 5000)")
  })

  it("the baseline from current_setting's texts, lock waits in seconds", () => {
    expect(millisOf("0")).toBe(0)
    expect(millisOf("1500ms")).toBe(1500)
    expect(millisOf("5s")).toBe(5000)
    expect(millisOf("2min")).toBe(120_000)
    expect(baselineOf({ lw: "5s", st: "250ms", iso: "repeatable read" })).toEqual({
      lockWait: 5,
      statementTime: 250,
      isolation: "REPEATABLE READ",
      autocommit: true
    })
  })
})

describe("pg session state", () => {
  it("a statement that may change the session marks its connection, after leading comments too", () => {
    for (const text of [
      "SET search_path = pg_catalog",
      "/* x */ SET statement_timeout = 1234",
      "-- tag\nset sfx.w = '2'",
      "/* a */ /* b */\n  PREPARE p AS SELECT 1",
      "/* x */ LISTEN ch",
      "/* x */ RESET ALL",
      "SELECT set_config('sfx.v', '1', false)",
      "CREATE TEMPORARY TABLE t (x INT)",
      "SELECT pg_advisory_lock(1)",
      "SELECT pg_try_advisory_lock(1)",
      "SELECT pg_try_advisory_lock_shared(1)",
      "DECLARE c CURSOR WITH HOLD FOR SELECT 1"
    ]) {
      expect(maybeUnflagged(text), text).toBe(true)
    }
    for (const text of [
      "SET LOCAL statement_timeout = 5",
      "/* x */ SET LOCAL lock_timeout = 5",
      "SELECT 1 /* SET */"
    ]) {
      expect(maybeUnflagged(text), text).toBe(false)
    }
  })
})

describe("pg compiler", () => {
  it("$n placeholders, double-quoted identifiers, as @effect/sql-pg", () => {
    const compiler = makeCompiler()
    const s = Statement.make({} as never, compiler, [], undefined)
    const [text, params] = compiler.compile(
      s`SELECT * FROM ${s('a"b')} WHERE id IN ${s.in([1, 2])} AND v = ${"x"}`,
      false
    )
    expect(text).toBe(`SELECT * FROM "a""b" WHERE id IN ($1,$2) AND v = $3`)
    expect(params).toEqual([1, 2, "x"])
  })
})
