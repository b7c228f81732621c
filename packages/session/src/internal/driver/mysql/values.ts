/**
 * How a JavaScript value is bound: one rule for every statement, in and out of a unit, in any position. Every value
 * travels as a typed parameter of the binary protocol (never formatted into SQL text), so no `sql_mode` can change
 * what it means, and integers never pass through a double.
 */
import * as Mysql from "mysql2"
import * as SessionError from "../../../SessionError.js"
import { bindEach } from "../shared.js"

const MIN_BIGINT = -(2n ** 63n)
const MAX_SIGNED = 2n ** 63n - 1n
const MAX_UNSIGNED = 2n ** 64n - 1n

const refuse = (index: number, what: string, hint: string): SessionError.BindError =>
  new SessionError.BindError({
    index,
    message: `bind value #${index + 1} ${what} cannot be sent exactly; ${hint}. Nothing was sent to the server`
  })

type Typed = typeof Mysql.TypedParameter

let typed: Typed | undefined

/** mysql2 defines `TypedParameter` with a getter: under Node's ESM loader it is only on the default export. */
const types = (): Typed =>
  (typed ??=
    (Mysql as unknown as { TypedParameter?: Typed }).TypedParameter ??
    (Mysql as unknown as { default: { TypedParameter: Typed } }).default.TypedParameter)

/** mysql2's TypedParameter class, to build a checked BIGINT without its factory's second range check. */
let TypedParameterClass: (new (type: number, value: bigint, unsigned: boolean) => unknown) | undefined
const LONGLONG = 0x08

/** A BIGINT parameter for a value already known to be in range. */
const longlong = (v: bigint): unknown => {
  TypedParameterClass ??= (types().LONGLONG(0) as object).constructor as unknown as typeof TypedParameterClass
  return new TypedParameterClass!(LONGLONG, v, false)
}

/** mysql2's BIGINT parameter (signed or unsigned) for a value in range: what `bindValues` sends for an integer. */
export const bigintParameter = (v: bigint, unsigned: boolean): unknown =>
  unsigned ? types().LONGLONG.unsigned(v) : longlong(v)

/**
 * The value as mysql2 must send it, or a `BindError`. Strings, finite non-integer numbers, booleans, `null`, valid
 * Dates and Buffers go as they are; safe integers and bigints as BIGINT (unsigned above 2^63 − 1); other
 * `Uint8Array`s as a Buffer over the same memory; plain objects (any prototype of `Object` or `null`) and arrays as
 * their JSON text.
 */
const bindOne = (v: unknown, index: number): unknown => {
  switch (typeof v) {
    case "string":
    case "boolean":
      return v
    case "number":
      if (Number.isSafeInteger(v)) return longlong(BigInt(v))
      if (Number.isFinite(v)) {
        if (Number.isInteger(v)) {
          return refuse(index, `(the integer ${v}, beyond ±(2^53 − 1))`, "it has already lost precision: pass a bigint")
        }
        return v
      }
      return refuse(index, `(${v})`, "SQL has no such number: pass null or a finite number")
    case "bigint":
      if (v >= MIN_BIGINT && v <= MAX_SIGNED) return longlong(v)
      if (v > MAX_SIGNED && v <= MAX_UNSIGNED) return types().LONGLONG.unsigned(v)
      return refuse(index, `(the bigint ${v}, outside BIGINT's range)`, "pass it as a string for a DECIMAL column")
    case "undefined":
      return refuse(index, "(undefined)", "pass null for SQL NULL")
    case "function":
    case "symbol":
      return refuse(index, `(a ${typeof v})`, "pass a string, number, bigint, boolean, Date, Uint8Array or null")
    case "object": {
      if (v === null) return null
      if (v instanceof Date) {
        return Number.isNaN(v.getTime()) ? refuse(index, "(an invalid Date)", "pass a valid Date or null") : v
      }
      if (Buffer.isBuffer(v)) return v
      if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength)
      if (typeof (v as { toSqlString?: unknown }).toSqlString === "function") {
        return refuse(
          index,
          "(an object with toSqlString)",
          "sessionfx never splices a value into SQL text: build SQL fragments with sql.unsafe or sql.literal"
        )
      }
      const proto = Object.getPrototypeOf(v)
      if (Array.isArray(v) || proto === null || proto === Object.prototype) {
        try {
          return JSON.stringify(v)
        } catch (e) {
          return refuse(
            index,
            `(an ${Array.isArray(v) ? "array" : "object"} without a JSON text: ${(e as Error).message})`,
            "convert what it holds (bigints, cycles) first"
          )
        }
      }
      return refuse(
        index,
        `(an instance of ${(v as object).constructor?.name ?? "a class"})`,
        "convert it to a string, number, bigint, boolean, Date, Uint8Array, plain object or array first"
      )
    }
  }
  return v
}

/**
 * The bind values of one statement as they will be sent, or the `BindError` of the first that cannot be. Returns
 * `values` itself when nothing needs converting (no allocation on statements without integers).
 *
 * @internal
 */
export const bindValues = (values: ReadonlyArray<unknown>): ReadonlyArray<unknown> | SessionError.BindError =>
  bindEach(values, bindOne)

/** One statement of a multi-statement text, and how many of the text's bind values are its own. @internal */
export interface Part {
  readonly sql: string
  readonly count: number
}

const partsCache = new Map<string, ReadonlyArray<Part> | undefined>()

/**
 * The statements of a text that holds several (`insert …; select … LAST_INSERT_ID()`, as `@effect/sql`'s Model
 * repositories send on MySQL), split at the semicolons outside quotes and comments, or `undefined` for one
 * statement. Each part is sent as a statement of its own with its own values: connections never run
 * multi-statement text, so no value can ever end one statement and start another.
 *
 * @internal
 */
export const splitStatements = (sql: string): ReadonlyArray<Part> | undefined => {
  if (partsCache.has(sql)) return partsCache.get(sql)
  const parts: Array<Part> = []
  let start = 0
  let count = 0
  let i = 0
  const n = sql.length
  const push = (end: number) => {
    const text = sql.slice(start, end).trim()
    if (text.length > 0) parts.push({ sql: text, count })
    count = 0
  }
  while (i < n) {
    const c = sql[i]!
    if (c === "'" || c === '"' || c === "`") {
      i++
      while (i < n && sql[i] !== c) i += sql[i] === "\\" && c !== "`" ? 2 : 1
      i++
    } else if (c === "-" && sql[i + 1] === "-" && (i + 2 >= n || /\s/.test(sql[i + 2]!))) {
      while (i < n && sql[i] !== "\n") i++
    } else if (c === "#") {
      while (i < n && sql[i] !== "\n") i++
    } else if (c === "/" && sql[i + 1] === "*") {
      const end = sql.indexOf("*/", i + 2)
      i = end === -1 ? n : end + 2
    } else if (c === "?") {
      count++
      i++
    } else if (c === ";") {
      push(i)
      start = ++i
    } else i++
  }
  push(n)
  const result = parts.length > 1 ? parts : undefined
  if (partsCache.size > 10_000) partsCache.clear()
  partsCache.set(sql, result)
  return result
}
