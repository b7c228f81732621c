import * as Statement from "@effect/sql/Statement"

const escape = Statement.defaultEscape("`")

/**
 * What an empty `sql.in([])` becomes: a subquery with no rows, the empty set itself — `x IN (…)` is false and
 * `x NOT IN (…)` true for every `x`, NULL included, as for an empty list — instead of `IN ()`, a syntax error.
 */
const EMPTY_LIST = Statement.unsafeFragment("(SELECT NULL FROM DUAL WHERE FALSE)").segments[0]!

const isEmptyList = (segment: Statement.Segment): boolean =>
  segment._tag === "ArrayHelper" && segment.value.length === 0

/**
 * The MySQL statement compiler: `?` placeholders and backtick-quoted identifiers; no custom fragments and no
 * `RETURNING` for record updates. The same compiler `@effect/sql-mysql2` builds, kept here so sessionfx does not
 * depend on that package — except that an empty `sql.in([])` is the empty set (see `EMPTY_LIST`).
 */
export const makeCompiler = (transform?: (_: string) => string): Statement.Compiler => {
  const base = Statement.makeCompiler({
    dialect: "mysql",
    placeholder: () => "?",
    onIdentifier: transform
      ? (value, withoutTransform) => (withoutTransform ? escape(value) : escape(transform(value)))
      : escape,
    onCustom: () => ["", []],
    onRecordUpdate: () => ["", []]
  })
  const compiler: Statement.Compiler = Object.create(base)
  Object.defineProperty(compiler, "compile", {
    // (statement, withoutTransform, placeholderOverride): the arguments after the statement are passed on as given
    value: (statement: Statement.Fragment, ...rest: Array<unknown>): unknown =>
      Reflect.apply(base.compile, base, [
        statement.segments.some(isEmptyList)
          ? { segments: statement.segments.map((s) => (isEmptyList(s) ? EMPTY_LIST : s)) }
          : statement,
        ...rest
      ])
  })
  return compiler
}
