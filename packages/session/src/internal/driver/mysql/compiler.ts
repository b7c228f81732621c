import * as Statement from "@effect/sql/Statement"

const escape = Statement.defaultEscape("`")

/**
 * The MySQL statement compiler: `?` placeholders and backtick-quoted identifiers; no custom fragments and no
 * `RETURNING` for record updates. The same compiler `@effect/sql-mysql2` builds, kept here so sessionfx does not
 * depend on that package.
 */
export const makeCompiler = (transform?: (_: string) => string): Statement.Compiler =>
  Statement.makeCompiler({
    dialect: "mysql",
    placeholder: () => "?",
    onIdentifier: transform
      ? (value, withoutTransform) => (withoutTransform ? escape(value) : escape(transform(value)))
      : escape,
    onCustom: () => ["", []],
    onRecordUpdate: () => ["", []]
  })
