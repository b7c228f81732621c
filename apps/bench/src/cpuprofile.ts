/**
 * Summarises a V8 `.cpuprofile`: the functions with the most self time, and self time grouped by package.
 *
 *   node --cpu-prof --cpu-prof-dir=prof --conditions=@sessionfx/source --import tsx src/main.ts --impls sessionfx-transact --concurrency 64 --reps 1
 *   pnpm exec tsx src/cpuprofile.ts prof/<file>.cpuprofile [top]
 */
import * as Fs from "node:fs"

interface Node {
  readonly id: number
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number }
  readonly children?: ReadonlyArray<number>
}

interface Profile {
  readonly nodes: ReadonlyArray<Node>
  readonly samples: ReadonlyArray<number>
  readonly timeDeltas: ReadonlyArray<number>
}

const packageOf = (url: string): string => {
  if (url === "") return "(native / vm)"
  const pnpm = url.match(/node_modules\/\.pnpm\/[^/]+\/node_modules\/((?:@[^/]+\/)?[^/]+)/)
  if (pnpm) return pnpm[1]!
  const nm = url.match(/node_modules\/((?:@[^/]+\/)?[^/]+)/)
  if (nm) return nm[1]!
  const pkg = url.match(/\/(packages|apps)\/([^/]+)\//)
  if (pkg) return `${pkg[1]}/${pkg[2]}`
  if (url.startsWith("node:")) return "node:internal"
  return url
}

const [file, topArg] = process.argv.slice(2)
if (file === undefined) {
  process.stderr.write("usage: cpuprofile.ts <file.cpuprofile> [top]\n")
  process.exit(2)
}
const profile = JSON.parse(Fs.readFileSync(file, "utf8")) as Profile
const byId = new Map(profile.nodes.map((n) => [n.id, n]))
const self = new Map<number, number>()
let total = 0
profile.samples.forEach((id, i) => {
  const dt = profile.timeDeltas[i] ?? 0
  self.set(id, (self.get(id) ?? 0) + dt)
  total += dt
})

const fnSelf = new Map<string, number>()
const pkgSelf = new Map<string, number>()
for (const [id, us] of self) {
  const { functionName, url, lineNumber } = byId.get(id)!.callFrame
  const short = url
    .replace(/^.*node_modules\/\.pnpm\/[^/]+\/node_modules\//, "")
    .replace(/^file:\/\/.*?\/work\/main\//, "")
  const key = `${functionName || "(anonymous)"}  ${short}:${lineNumber + 1}`
  fnSelf.set(key, (fnSelf.get(key) ?? 0) + us)
  const pkg = packageOf(url)
  pkgSelf.set(pkg, (pkgSelf.get(pkg) ?? 0) + us)
}

const pct = (us: number) => `${((us / total) * 100).toFixed(1).padStart(5)}%`
const print = (title: string, m: Map<string, number>, top: number) => {
  process.stdout.write(`\n${title}\n`)
  for (const [k, us] of [...m].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    process.stdout.write(`${pct(us)}  ${(us / 1000).toFixed(0).padStart(7)} ms  ${k}\n`)
  }
}
process.stdout.write(`total sampled: ${(total / 1000).toFixed(0)} ms\n`)
print("self time by package", pkgSelf, 15)
print("top self-time functions", fnSelf, Number(topArg ?? 40))
