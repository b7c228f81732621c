/**
 * Results: medians per implementation and concurrency, ratios against the suite's hand-written baseline (mysql2 on
 * MariaDB, pg on PostgreSQL) from the same run, and the JSON / Markdown / SVG files under `results/`.
 */
import * as Fs from "node:fs/promises"
import * as Path from "node:path"
import type { Suite } from "./impls/index.js"
import type { Measurement } from "./runner.js"
import type { Conservation } from "./workload.js"

export interface RunRecord extends Measurement {
  readonly impl: string
  readonly concurrency: number
  readonly rep: number
  readonly conservation: Conservation
}

export interface SummaryRow {
  readonly impl: string
  readonly concurrency: number
  readonly reps: number
  readonly throughput: number
  readonly p50Ms: number
  readonly p99Ms: number
  readonly cpuUsPerTransfer: number
  readonly retries: number
  readonly failed: number
  readonly conserved: boolean
  /** median throughput / median throughput of the baseline at the same concurrency */
  readonly throughputRatio: number
  /** median CPU per transfer / that of the baseline at the same concurrency */
  readonly cpuRatio: number
}

export interface Target {
  readonly description: string
  readonly goal: string
  /** the ratio of the medians: what `met` is judged on */
  readonly measured: number
  /** the same ratio within each repetition (the two runs were next to each other in time): the spread */
  readonly perRep: ReadonlyArray<number>
  readonly met: boolean
}

export interface BenchReport {
  readonly meta: Record<string, unknown>
  readonly runs: ReadonlyArray<RunRecord>
  readonly summary: ReadonlyArray<SummaryRow>
  readonly targets: ReadonlyArray<Target>
}

export const median = (xs: ReadonlyArray<number>): number => {
  const s = [...xs].sort((a, b) => a - b)
  if (s.length === 0) return NaN
  const m = s.length >> 1
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

export const summarize = (runs: ReadonlyArray<RunRecord>, baseline: string): Array<SummaryRow> => {
  const groups = new Map<string, Array<RunRecord>>()
  for (const r of runs) {
    const key = `${r.impl}\u0000${r.concurrency}`
    const g = groups.get(key)
    if (g === undefined) groups.set(key, [r])
    else g.push(r)
  }
  const base = (concurrency: number) => groups.get(`${baseline}\u0000${concurrency}`)
  return [...groups.values()].map((g) => {
    const { impl, concurrency } = g[0]!
    const throughput = median(g.map((r) => r.throughput))
    const cpu = median(g.map((r) => r.cpuUsPerTransfer))
    const b = base(concurrency)
    return {
      impl,
      concurrency,
      reps: g.length,
      throughput,
      p50Ms: median(g.map((r) => r.p50Ms)),
      p99Ms: median(g.map((r) => r.p99Ms)),
      cpuUsPerTransfer: cpu,
      retries: g.reduce((n, r) => n + r.retries, 0),
      failed: g.reduce((n, r) => n + r.failed, 0),
      conserved: g.every((r) => r.conservation.ok && r.failed === 0),
      throughputRatio: b ? throughput / median(b.map((r) => r.throughput)) : NaN,
      cpuRatio: b ? cpu / median(b.map((r) => r.cpuUsPerTransfer)) : NaN
    }
  })
}

/** The targets of issue #6 (MariaDB) and 22 (PostgreSQL), at concurrency 64 (or the highest concurrency run). */
export const evaluateTargets = (
  summary: ReadonlyArray<SummaryRow>,
  runs: ReadonlyArray<RunRecord>,
  suite: Suite
): Array<Target> => {
  const levels = [...new Set(summary.map((r) => r.concurrency))]
  const level = levels.includes(64) ? 64 : Math.max(...levels)
  const row = (impl: string) => summary.find((r) => r.impl === impl && r.concurrency === level)
  const paired = (impl: string, other: string, f: (r: RunRecord) => number): Array<number> => {
    const ratios: Array<number> = []
    for (const a of runs) {
      if (a.impl !== impl || a.concurrency !== level) continue
      const b = runs.find((r) => r.impl === other && r.concurrency === level && r.rep === a.rep)
      if (b !== undefined) ratios.push(f(a) / f(b))
    }
    return ratios
  }
  const sfx = row("sessionfx-transact")
  const { baseline, throughputGoal, cpuGoal } = suite
  const effectSql = suite.effectSql && row(suite.effectSql.impl)
  const targets: Array<Target> = []
  if (sfx && row(baseline)) {
    targets.push({
      description: `sessionfx-transact throughput vs ${baseline} at concurrency ${level}`,
      goal: `≥ ${throughputGoal.toFixed(1)}×`,
      measured: sfx.throughputRatio,
      perRep: paired("sessionfx-transact", baseline, (r) => r.throughput),
      met: sfx.throughputRatio >= throughputGoal
    })
    targets.push({
      description: `sessionfx-transact CPU per transfer vs ${baseline} at concurrency ${level}`,
      goal: `≤ ${cpuGoal.toFixed(1)}×`,
      measured: sfx.cpuRatio,
      perRep: paired("sessionfx-transact", baseline, (r) => r.cpuUsPerTransfer),
      met: sfx.cpuRatio <= cpuGoal
    })
  }
  if (sfx && effectSql && suite.effectSql) {
    const { impl, goal } = suite.effectSql
    const ratio = sfx.throughput / effectSql.throughput
    targets.push({
      description: `sessionfx-transact throughput vs ${impl} withTransaction at concurrency ${level}`,
      goal: `≥ ${goal.toFixed(1)}×`,
      measured: ratio,
      perRep: paired("sessionfx-transact", impl, (r) => r.throughput),
      met: ratio >= goal
    })
  }
  return targets
}

const fixed = (x: number, digits: number) => (Number.isFinite(x) ? x.toFixed(digits) : "–")

/** The report as Markdown; `order` is the suite's order of implementations. */
export const markdown = (report: BenchReport, order: ReadonlyArray<string>): string => {
  const m = report.meta
  const base = String(m["baseline"])
  const lines = [
    `# Transfer benchmark`,
    ``,
    `${String(m["date"])} · node ${String(m["node"])} · ${String(m["cpus"])} · server ${String(m["server"])} · ` +
      `${String(m["transfers"])} transfers per run, ${String(m["accounts"])} accounts, pool ${String(m["pool"])}, ` +
      `median of ${String(m["reps"])} interleaved repetitions` +
      (m["gcBeforeEachRun"] === true ? `, a full GC before each run` : ``),
    ``,
    `| implementation | concurrency | transfers/s | × ${base} | p50 ms | p99 ms | CPU µs/transfer | CPU × ${base} | retries | failed | conserved |`,
    `| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |`
  ]
  const rows = [...report.summary].sort(
    (a, b) => a.concurrency - b.concurrency || order.indexOf(a.impl) - order.indexOf(b.impl)
  )
  for (const r of rows) {
    lines.push(
      `| ${r.impl} | ${r.concurrency} | ${fixed(r.throughput, 0)} | ${fixed(r.throughputRatio, 2)} | ${fixed(r.p50Ms, 2)} | ` +
        `${fixed(r.p99Ms, 2)} | ${fixed(r.cpuUsPerTransfer, 0)} | ${fixed(r.cpuRatio, 2)} | ${r.retries} | ${r.failed} | ` +
        `${r.conserved ? "yes" : "**NO**"} |`
    )
  }
  if (report.targets.length > 0) {
    lines.push(
      ``,
      `## Targets (${m["database"] === "postgres" ? "issue 22" : "issue #6"})`,
      ``,
      `Judged on the ratio of the medians; the last column is the same ratio within each repetition, in order.`,
      ``,
      `| target | goal | measured | per repetition | met |`,
      `| --- | :---: | ---: | ---: | :---: |`
    )
    for (const t of report.targets) {
      const spread = t.perRep.map((x) => fixed(x, 2)).join(" / ")
      lines.push(`| ${t.description} | ${t.goal} | ${fixed(t.measured, 2)}× | ${spread} | ${t.met ? "yes" : "no"} |`)
    }
  }
  return lines.join("\n") + "\n"
}

const COLORS = ["#1f77b4", "#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]

const escapeXml = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")

/** Throughput by concurrency, one line per implementation; the x axis is categorical (the levels that were run). */
export const svg = (summary: ReadonlyArray<SummaryRow>, title: string): string => {
  const width = 760
  const height = 420
  const pad = { left: 70, right: 190, top: 40, bottom: 50 }
  const plotW = width - pad.left - pad.right
  const plotH = height - pad.top - pad.bottom
  const levels = [...new Set(summary.map((r) => r.concurrency))].sort((a, b) => a - b)
  const impls = [...new Set(summary.map((r) => r.impl))]
  const maxY = Math.max(1, ...summary.map((r) => r.throughput))
  const step = 10 ** Math.floor(Math.log10(maxY))
  const top = Math.ceil(maxY / step) * step
  const x = (i: number) => pad.left + (levels.length === 1 ? plotW / 2 : (i / (levels.length - 1)) * plotW)
  const y = (v: number) => pad.top + plotH - (v / top) * plotH
  const out: Array<string> = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${pad.left}" y="22" font-size="15" font-weight="bold">${escapeXml(title)}</text>`
  ]
  const ticks = Math.round(top / step)
  for (let t = 0; t <= ticks; t++) {
    const v = t * step
    out.push(
      `<line x1="${pad.left}" x2="${pad.left + plotW}" y1="${y(v)}" y2="${y(v)}" stroke="#ddd"/>`,
      `<text x="${pad.left - 8}" y="${y(v) + 4}" text-anchor="end">${v}</text>`
    )
  }
  levels.forEach((c, i) => {
    out.push(`<text x="${x(i)}" y="${pad.top + plotH + 18}" text-anchor="middle">${c}</text>`)
  })
  out.push(
    `<text x="${pad.left + plotW / 2}" y="${height - 10}" text-anchor="middle">concurrency (pool of 16)</text>`,
    `<text transform="translate(16 ${pad.top + plotH / 2}) rotate(-90)" text-anchor="middle">transfers / s (median)</text>`,
    `<line x1="${pad.left}" x2="${pad.left}" y1="${pad.top}" y2="${pad.top + plotH}" stroke="#333"/>`,
    `<line x1="${pad.left}" x2="${pad.left + plotW}" y1="${pad.top + plotH}" y2="${pad.top + plotH}" stroke="#333"/>`
  )
  impls.forEach((impl, k) => {
    const color = COLORS[k % COLORS.length]!
    const points = levels.flatMap((c, i) => {
      const r = summary.find((s) => s.impl === impl && s.concurrency === c)
      return r ? [[x(i), y(r.throughput)] as const] : []
    })
    out.push(
      `<polyline fill="none" stroke="${color}" stroke-width="2" points="${points.map(([px, py]) => `${px.toFixed(1)},${py.toFixed(1)}`).join(" ")}"/>`,
      ...points.map(([px, py]) => `<circle cx="${px.toFixed(1)}" cy="${py.toFixed(1)}" r="3.5" fill="${color}"/>`),
      `<rect x="${pad.left + plotW + 20}" y="${pad.top + k * 20}" width="14" height="4" fill="${color}"/>`,
      `<text x="${pad.left + plotW + 40}" y="${pad.top + k * 20 + 6}">${escapeXml(impl)}</text>`
    )
  })
  out.push(`</svg>`)
  return out.join("\n") + "\n"
}

export const writeFiles = async (dir: string, files: Record<string, string>): Promise<Array<string>> => {
  await Fs.mkdir(dir, { recursive: true })
  const written: Array<string> = []
  for (const [name, content] of Object.entries(files)) {
    const path = Path.join(dir, name)
    await Fs.writeFile(path, content)
    written.push(path)
  }
  return written
}

export const json = (value: unknown): string => JSON.stringify(value, null, 2) + "\n"

export const scaleMarkdown = (r: import("./stress.js").ScaleResult): string =>
  [
    `# Scale: ${r.units} units waiting at once on a pool of ${r.pool}`,
    ``,
    `Units started ${r.spawn === "fiber" ? "as a fiber each (`runtime.runFork`)" : 'by one `Effect.forEach(…, { concurrency: "unbounded" })`'}, in a process that loads only sessionfx, Effect and mysql2 (RSS ${fixed(r.rssBeforeMb, 0)} MB before the first unit).`,
    ``,
    `| completed | failed | elapsed s | transfers/s | acquire wait min / p50 / p99 / max ms | max rank displacement | in order (±pool) | peak RSS MB (target < 200) | conserved |`,
    `| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :---: |`,
    `| ${r.completed} | ${r.failed} | ${fixed(r.elapsedMs / 1000, 1)} | ${fixed(r.throughput, 0)} | ` +
      `${fixed(r.waitMs.min, 1)} / ${fixed(r.waitMs.p50, 0)} / ${fixed(r.waitMs.p99, 0)} / ${fixed(r.waitMs.max, 0)} | ` +
      `${r.maxRankDisplacement} | ${fixed(r.inOrderFraction * 100, 1)}% | ${fixed(r.peakRssMb, 0)} (max RSS ${fixed(r.maxRssMb, 0)}) | ` +
      `${r.conservation.ok ? "yes" : "**NO**"} |`
  ].join("\n") + "\n"

export const soakMarkdown = (r: import("./stress.js").SoakResult): string =>
  [
    `# Soak: ${r.sessions} sequential sessions`,
    ``,
    `| completed | failed | elapsed s | heap after GC start / middle / end MB | conserved |`,
    `| ---: | ---: | ---: | ---: | :---: |`,
    `| ${r.completed} | ${r.failed} | ${fixed(r.elapsedMs / 1000, 1)} | ${fixed(r.heapStartMb, 2)} / ${fixed(r.heapMiddleMb, 2)} / ${fixed(r.heapEndMb, 2)} | ` +
      `${r.conservation.ok ? "yes" : "**NO**"} |`,
    ``,
    `Samples (sessions → heap MB): ${r.samples.map((s) => `${s.sessions}→${fixed(s.heapUsedMb, 2)}`).join(", ")}`
  ].join("\n") + "\n"
