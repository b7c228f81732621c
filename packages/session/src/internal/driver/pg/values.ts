/**
 * How a JavaScript value is bound on PostgreSQL: one rule for every statement, in and out of a unit. Every value
 * travels as a parameter of the extended protocol (never formatted into SQL text), in text form, typed by the
 * server from its place in the statement; integers as their decimal digits (never through a double), bytes in
 * binary form.
 */
import * as SessionError from "../../../SessionError.js"
import { bindEach } from "../shared.js"

const refuse = (index: number, what: string, hint: string): SessionError.BindError =>
  new SessionError.BindError({
    index,
    message: `bind value #${index + 1} ${what} cannot be sent exactly; ${hint}. Nothing was sent to the server`
  })

const ANY = "pass a string, number, bigint, boolean, Date, Uint8Array, array or null"

const bindNumber = (v: number, index: number): unknown => {
  if (Number.isSafeInteger(v)) return String(v)
  if (Number.isFinite(v)) {
    if (Number.isInteger(v)) {
      return refuse(index, `(the integer ${v}, beyond ±(2^53 − 1))`, "it has already lost precision: pass a bigint")
    }
    // the shortest text that reads back as the same double
    return String(v)
  }
  return refuse(index, `(${v})`, "pass null, a finite number, or the string 'NaN' / 'Infinity' for a float column")
}

const bindObject = (v: object, index: number): unknown => {
  if (v instanceof Date) {
    return Number.isNaN(v.getTime()) ? refuse(index, "(an invalid Date)", "pass a valid Date or null") : v.toISOString()
  }
  if (Buffer.isBuffer(v)) return v
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength)
  if (Array.isArray(v)) {
    // a PostgreSQL array (node-postgres writes its literal): every element must be bindable itself
    for (const element of v) {
      const b = bindOne(element === undefined ? null : element, index)
      if (b instanceof SessionError.BindError) return b
    }
    return v
  }
  if (typeof (v as { toPostgres?: unknown }).toPostgres === "function") {
    return refuse(index, "(an object with toPostgres)", "convert it to a string first")
  }
  const proto = Object.getPrototypeOf(v)
  if (proto === null || proto === Object.prototype) {
    try {
      return JSON.stringify(v)
    } catch (e) {
      return refuse(
        index,
        `(an object without a JSON text: ${(e as Error).message})`,
        "convert what it holds (bigints, cycles) first"
      )
    }
  }
  return refuse(index, `(an instance of ${(v as object).constructor?.name ?? "a class"})`, `${ANY} first`)
}

/** The value as node-postgres must send it, or a `BindError`. */
const bindOne = (v: unknown, index: number): unknown => {
  switch (typeof v) {
    case "string":
      return v
    case "boolean":
      return v ? "true" : "false"
    case "number":
      return bindNumber(v, index)
    case "bigint":
      return v.toString()
    case "undefined":
      return refuse(index, "(undefined)", "pass null for SQL NULL")
    case "function":
    case "symbol":
      return refuse(index, `(a ${typeof v})`, ANY)
    case "object":
      return v === null ? null : bindObject(v, index)
  }
  return v
}

/**
 * The bind values of one statement as they will be sent, or the `BindError` of the first that cannot be. Returns
 * `values` itself when nothing needs converting.
 *
 * @internal
 */
export const bindValues = (values: ReadonlyArray<unknown>): ReadonlyArray<unknown> | SessionError.BindError =>
  bindEach(values, bindOne)
