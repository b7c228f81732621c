/**
 * What the embedded servers' start failures say (`MysqlServerStartFailed`, `PgServerStartFailed`): one wording.
 *
 * @internal
 */

/** @internal */
export interface StartFailure {
  readonly phase: string
  readonly reason: string
  readonly exitCode: number | null
  readonly signal: string | null
  readonly logFile: string | undefined
  readonly logTail: ReadonlyArray<string>
}

/** The message of a start failure of `product`'s server: what failed, how the process ended, its log's tail. @internal */
export const startFailureMessage = (product: string, f: StartFailure): string => {
  const exit = f.exitCode !== null ? ` (exit code ${f.exitCode})` : f.signal !== null ? ` (killed by ${f.signal})` : ""
  const head = `${product} server ${f.phase} failed${exit}: ${f.reason}`
  if (f.logTail.length === 0) return head
  return `${head}\n--- last ${f.logTail.length} lines of ${f.logFile ?? "the server log"} ---\n${f.logTail.join("\n")}`
}
