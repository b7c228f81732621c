/**
 * What every driver does the same way: binding a statement's values one by one, and a per-text cache of a regular
 * expression's answer.
 *
 * @internal
 */
import * as SessionError from "../../SessionError.js"

/**
 * The bind values of one statement as they will be sent (`bindOne` for each), or the `BindError` of the first that
 * cannot be. Returns `values` itself when nothing needs converting (no allocation).
 *
 * @internal
 */
export const bindEach = (
  values: ReadonlyArray<unknown>,
  bindOne: (v: unknown, index: number) => unknown
): ReadonlyArray<unknown> | SessionError.BindError => {
  let out: Array<unknown> | undefined
  for (let i = 0; i < values.length; i++) {
    const v = values[i]
    const b = bindOne(v, i)
    if (b instanceof SessionError.BindError) return b
    if (b !== v) {
      if (out === undefined) out = values.slice(0, i)
      out.push(b)
    } else if (out !== undefined) out.push(b)
  }
  return out ?? values
}

/** `re.test`, cached per SQL text (bounded: cleared past 10,000 texts). @internal */
export const cachedTest = (re: RegExp): ((sql: string) => boolean) => {
  const cache = new Map<string, boolean>()
  return (sql) => {
    let v = cache.get(sql)
    if (v === undefined) {
      v = re.test(sql)
      if (cache.size > 10_000) cache.clear()
      cache.set(sql, v)
    }
    return v
  }
}
