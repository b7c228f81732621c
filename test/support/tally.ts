/** The module-level tally of the reliability suite: each scenario adds one row; the suite prints and asserts it. */
import type { Verdict } from "./bank.js"

export interface Row extends Verdict {
  readonly scenario: string
  readonly faults: Record<string, number>
  readonly errors: Record<string, number>
  readonly reads: number
  readonly readViolations: number
  readonly leaks: number
  readonly maxUnitMs: number
  readonly durationMs: number
}

export const rows: Array<Row> = []

export const add = (row: Row) => {
  rows.push(row)
}

const sum = (f: (r: Row) => number) => rows.reduce((s, r) => s + f(r), 0)

export const totals = () => {
  const faults: Record<string, number> = {}
  for (const r of rows) for (const [k, n] of Object.entries(r.faults)) faults[k] = (faults[k] ?? 0) + n
  return {
    scenarios: rows.length,
    units: sum((r) => r.units),
    faults,
    acked: sum((r) => r.acked),
    unknown: sum((r) => r.unknown),
    unknownResolvedCommitted: sum((r) => r.unknownCommitted),
    unknownResolvedAborted: sum((r) => r.unknownAborted),
    indeterminate: sum((r) => r.indeterminate),
    indeterminateCommitted: sum((r) => r.indeterminateCommitted),
    failed: sum((r) => r.failed),
    lost: sum((r) => r.lost),
    duplicated: sum((r) => r.duplicated),
    phantom: sum((r) => r.phantom),
    readViolations: sum((r) => r.readViolations),
    reads: sum((r) => r.reads),
    leaks: sum((r) => r.leaks),
    durationMs: sum((r) => r.durationMs)
  }
}

export const render = () => {
  const lines = [
    "| scenario | units | faults | acked | unknown (committed/aborted) | indeterminate (committed) | failed | lost | dup | phantom | reads | leaks | max unit ms | ms |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
  ]
  for (const r of rows) {
    const faults = Object.entries(r.faults)
      .map(([k, n]) => `${k} ${n}`)
      .join(", ")
    lines.push(
      `| ${r.scenario} | ${r.units} | ${faults || "—"} | ${r.acked} | ${r.unknown} (${r.unknownCommitted}/${r.unknownAborted}) | ${r.indeterminate} (${r.indeterminateCommitted}) | ${r.failed} | ${r.lost} | ${r.duplicated} | ${r.phantom} | ${r.reads} | ${r.leaks} | ${r.maxUnitMs} | ${r.durationMs} |`
    )
  }
  return lines.join("\n")
}
