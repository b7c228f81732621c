/**
 * What every input is checked against before anything else looks at it, shared by both transports: a bounded
 * nesting depth (a request is a few levels deep; a value thousands of levels deep would overflow the stack of any
 * recursive code that meets it), text that is valid Unicode (never re-encoded), and validation errors described in
 * bounded size and cost — the first few problems and a count, whatever the input.
 */
import * as ParseResult from "effect/ParseResult"
import { isUtf8 } from "node:buffer"

/** The deepest JSON nesting a request may have (the deepest valid request, a batch, is 3 levels deep). */
export const MAX_DEPTH = 16

/** How many problems an error answer describes (the others are only counted). */
export const MAX_PROBLEMS = 5

/** The longest text of one described problem. */
const MAX_PROBLEM_CHARS = 200

/** Whether `value` nests deeper than `max` levels (objects and arrays); iterative, so any depth is safe to ask. */
export const tooDeep = (value: unknown, max: number = MAX_DEPTH): boolean => {
  if (typeof value !== "object" || value === null) return false
  const stack: Array<unknown> = [value]
  const depths: Array<number> = [1]
  while (stack.length > 0) {
    const v = stack.pop() as object
    const depth = depths.pop()!
    if (depth > max) return true
    for (const child of Array.isArray(v) ? v : Object.values(v)) {
      if (typeof child === "object" && child !== null) {
        stack.push(child)
        depths.push(depth + 1)
      }
    }
  }
  return false
}

/** A string holding an unpaired UTF-16 surrogate: it has no UTF-8 form (it would be stored as U+FFFD). */
const loneSurrogate = /\p{Cs}/u

/** Whether `s` is well-formed Unicode text (no unpaired surrogate). */
export const isWellFormed = (s: string): boolean => !loneSurrogate.test(s)

/** Whether `bytes` are valid UTF-8 (decoding them loses nothing). */
export const isValidUtf8 = (bytes: Uint8Array): boolean => isUtf8(bytes)

const clip = (s: string, max: number) => (s.length <= max ? s : s.slice(0, max - 1) + "…")

/** A short, bounded picture of a value for an error message (never the value's own size). */
const picture = (u: unknown): unknown => {
  if (typeof u === "string") return u.length <= 40 ? u : { toString: () => `a string of ${u.length} characters` }
  if (Array.isArray(u)) return { toString: () => `an array of ${u.length} items` }
  if (typeof u === "object" && u !== null) return { toString: () => "an object" }
  return u
}

/** One problem of an invalid request: where (`path`, e.g. `ops[3].amount`) and what. */
export interface Problem {
  readonly path: string
  readonly message: string
}

export interface Description {
  /** One line: the first problem, and how many there are. */
  readonly message: string
  /** The first `MAX_PROBLEMS` problems. */
  readonly problems: ReadonlyArray<Problem>
  /** How many problems there are in all. */
  readonly count: number
}

const pathText = (path: ReadonlyArray<PropertyKey>) =>
  clip(path.map((k, i) => (typeof k === "number" ? `[${k}]` : i === 0 ? String(k) : `.${String(k)}`)).join(""), 80)

const leafText = (leaf: ParseResult.ParseIssue): string => {
  switch (leaf._tag) {
    case "Missing":
      return leaf.message ?? "is missing"
    case "Unexpected":
      return leaf.message ?? "is unexpected"
    case "Type":
      return ParseResult.TreeFormatter.formatIssueSync(
        new ParseResult.Type(leaf.ast, picture(leaf.actual), leaf.message)
      )
    case "Forbidden":
      return ParseResult.TreeFormatter.formatIssueSync(
        new ParseResult.Forbidden(leaf.ast, picture(leaf.actual), leaf.message)
      )
    default:
      return "is invalid"
  }
}

/**
 * Describes a validation failure in bounded size: the first `MAX_PROBLEMS` problems (each at most a couple of hundred
 * characters, values pictured, not printed) and the count of all of them. Iterative: any shape of issue tree is safe.
 */
export const describe = (issue: ParseResult.ParseIssue): Description => {
  const problems: Array<Problem> = []
  let count = 0
  const stack: Array<{ readonly issue: ParseResult.ParseIssue; readonly path: ReadonlyArray<PropertyKey> }> = [
    { issue, path: [] }
  ]
  while (stack.length > 0) {
    const { issue: i, path } = stack.pop()!
    switch (i._tag) {
      case "Pointer":
        stack.push({ issue: i.issue, path: path.concat(Array.isArray(i.path) ? i.path : [i.path as PropertyKey]) })
        break
      case "Refinement":
      case "Transformation":
        stack.push({ issue: i.issue, path })
        break
      case "Composite": {
        const children = Array.isArray(i.issues) ? i.issues : [i.issues as ParseResult.ParseIssue]
        for (let k = children.length - 1; k >= 0; k--) stack.push({ issue: children[k]!, path })
        break
      }
      default:
        count++
        if (problems.length < MAX_PROBLEMS) {
          problems.push({ path: pathText(path), message: clip(leafText(i), MAX_PROBLEM_CHARS) })
        }
    }
  }
  const first = problems[0]
  const where = first === undefined || first.path === "" ? "" : `at ${first.path}: `
  const message =
    first === undefined
      ? "invalid request"
      : `invalid request: ${where}${first.message}` +
        (count > 1 ? ` (${count} problems in all; the first ${problems.length} are listed in \`problems\`)` : "")
  return { message, problems, count }
}

/** At most `max` UTF-16 units of `s` (never half of a surrogate pair), marked with "…" when cut. */
export const truncate = (s: string, max: number): string => {
  if (s.length <= max) return s
  const end = /[\uD800-\uDBFF]/.test(s[max - 1]!) ? max - 1 : max
  return s.slice(0, end) + "…"
}
