// Checks packed tarballs of the workspace's packages as a consumer's Node and TypeScript will read them:
//   node scripts/check-tarball.mjs <package.tgz> ...
// - no workspace-only version spec (workspace:, link:, file:) in any dependency field;
// - every export resolves, without the workspace's @sessionfx/source condition, to built JavaScript and
//   declarations in dist/ that are in the tarball (never to src/*.ts: Node 20 refuses to load .ts files);
// - every public module (src/<Capitalised>.ts) is a subpath export, and internal/* is not exported.
/* global console, process */
import { execFileSync } from "node:child_process"

const sourceCondition = "@sessionfx/source"
const problems = []

for (const tarball of process.argv.slice(2)) {
  const files = new Set(
    execFileSync("tar", ["-tzf", tarball], { encoding: "utf8" })
      .split("\n")
      .filter((line) => line.startsWith("package/"))
      .map((line) => line.slice("package/".length))
  )
  const manifest = JSON.parse(execFileSync("tar", ["-xzOf", tarball, "package/package.json"], { encoding: "utf8" }))
  const fail = (message) => problems.push(`${tarball}: ${message}`)

  for (const field of ["dependencies", "peerDependencies", "optionalDependencies", "devDependencies"]) {
    for (const [name, spec] of Object.entries(manifest[field] ?? {})) {
      if (/^(workspace|link|file):/.test(spec))
        fail(`${field}.${name} is "${spec}", which only the workspace understands`)
    }
  }

  const target = (path, what) => {
    if (typeof path !== "string" || !path.startsWith("./")) return fail(`${what}: "${path}" is not a relative path`)
    const [prefix, suffix] = path.slice(2).split("*")
    const found =
      suffix === undefined
        ? files.has(prefix)
        : [...files].some((f) => f.startsWith(prefix) && f.endsWith(suffix) && f.length > prefix.length + suffix.length)
    if (!found) fail(`${what}: ${path} is not in the tarball`)
  }
  for (const field of ["main", "types"]) if (manifest[field] !== undefined) target(manifest[field], field)

  const exports = manifest.exports ?? {}
  if (typeof exports !== "object" || Array.isArray(exports)) fail("exports is not a map of subpaths")
  for (const [subpath, entry] of Object.entries(exports)) {
    if (entry === null) continue
    if (typeof entry === "string") {
      target(entry, `exports["${subpath}"]`)
      if (entry.endsWith(".ts")) fail(`exports["${subpath}"] is TypeScript source: ${entry}`)
      continue
    }
    for (const [condition, path] of Object.entries(entry)) target(path, `exports["${subpath}"]["${condition}"]`)
    const { [sourceCondition]: _source, ...published } = entry
    const keys = Object.keys(published)
    if (keys.at(-1) !== "default" || !/^\.\/dist\/.*\.js$/.test(published.default)) {
      fail(`exports["${subpath}"] must end with "default": "./dist/….js" (has ${JSON.stringify(published)})`)
    }
    if (!/^\.\/dist\/.*\.d\.ts$/.test(published.types ?? "") || keys[0] !== "types") {
      fail(`exports["${subpath}"] must start with "types": "./dist/….d.ts" (has ${JSON.stringify(published)})`)
    }
  }
  if (exports["./internal/*"] !== null) fail(`exports["./internal/*"] must be null (internal modules are not public)`)

  for (const file of files) {
    const module = /^src\/([A-Z][A-Za-z0-9]*)\.ts$/.exec(file)?.[1]
    if (module !== undefined && !exports[`./${module}`])
      fail(`the public module src/${module}.ts has no export "./${module}"`)
  }
  if (!exports["."]) fail(`no export "."`)
}

if (problems.length > 0) {
  for (const problem of problems) console.error(`check-tarball: ${problem}`)
  process.exit(1)
}
