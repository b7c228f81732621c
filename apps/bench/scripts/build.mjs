/**
 * Builds the benchmark the way an application ships: the workspace's TypeScript (this app, @sessionfx/session,
 * @sessionfx/testing) compiled into one ES module, every npm dependency left to Node as published. Running the
 * benchmark from this build instead of through tsx keeps tsx's `keepNames` helper (`__name`, an
 * `Object.defineProperty` on every closure the TypeScript creates) out of sessionfx's figures; the other
 * implementations are published JavaScript and never paid it.
 */
import * as esbuild from "esbuild"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"

const root = Path.join(Path.dirname(fileURLToPath(import.meta.url)), "..")

await esbuild.build({
  // bench.mjs: the CLI; stress.mjs: the process the scale and soak runs are measured in (sessionfx only)
  entryPoints: { bench: Path.join(root, "src/main.ts"), stress: Path.join(root, "src/stressMain.ts") },
  outdir: Path.join(root, "build"),
  outExtension: { ".js": ".mjs" },
  bundle: true,
  platform: "node",
  // the workspace's packages from their source (their published exports point at dist/)
  conditions: ["@sessionfx/source"],
  format: "esm",
  target: "node20",
  sourcemap: "linked",
  logLevel: "warning",
  plugins: [
    {
      name: "external-npm-packages",
      setup(build) {
        // bare specifiers other than the workspace's own packages stay imports, of the file the importing package
        // itself resolves to (pnpm gives each workspace package only its own dependencies)
        build.onResolve({ filter: /^[^./]/ }, async (args) => {
          if (args.path.startsWith("@sessionfx/") || args.pluginData === "resolving") return undefined
          if (args.path.startsWith("node:")) return { path: args.path, external: true }
          const found = await build.resolve(args.path, {
            kind: args.kind,
            resolveDir: args.resolveDir,
            importer: args.importer,
            pluginData: "resolving"
          })
          if (found.errors.length > 0) return { errors: found.errors }
          return { path: found.path, external: true }
        })
      }
    }
  ]
})
