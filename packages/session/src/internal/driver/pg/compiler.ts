import * as Statement from "@effect/sql/Statement"

const escape = Statement.defaultEscape('"')

/** `@effect/sql-pg`'s custom fragments (`sql.json`, `sql.array` of its client), by their kind. */
interface PgCustom extends Statement.Custom<"PgJson" | "PgArray", unknown> {}

/**
 * The PostgreSQL statement compiler: `$1 … $n` placeholders, double-quoted identifiers, `(values …) AS alias(cols)`
 * for record updates — the compiler `@effect/sql-pg` builds, so `@effect/sql` code written for it runs unchanged
 * inside a unit. Its custom fragments are bound as values: `PgJson` as its JSON text, `PgArray` as the array (the
 * driver sends it as a PostgreSQL array).
 */
export const makeCompiler = (transform?: (_: string) => string): Statement.Compiler =>
  Statement.makeCompiler<PgCustom>({
    dialect: "pg",
    placeholder: (i) => `$${i}`,
    onIdentifier: transform
      ? (value, withoutTransform) => (withoutTransform ? escape(value) : escape(transform(value)))
      : escape,
    // (placeholders, valueAlias, valueColumns, values, returning): @effect/sql's signature, taken as one list
    onRecordUpdate: (...args) => {
      const [placeholders, valueAlias, valueColumns, values, returning] = args
      return [
        `(values ${placeholders}) AS ${valueAlias}${valueColumns}${returning ? ` RETURNING ${returning[0]}` : ""}`,
        returning ? values.flat().concat(returning[1]) : values.flat()
      ]
    },
    onCustom: (type, placeholder) => {
      const value = type.i0
      return [placeholder(undefined), [(type.kind === "PgJson" ? JSON.stringify(value) : value) as never]]
    }
  })
