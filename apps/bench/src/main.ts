/**
 * The benchmark CLI.
 *
 *   pnpm bench [compare] [--db mariadb|postgres] [--quick] [--transfers 20000] [--accounts 1000]
 *              [--concurrency 1,16,64,256] [--reps 3] [--impls mysql2,sessionfx-transact,...] [--seed 42]
 *              [--warmup 1000] [--out results]
 *              (--db postgres: the same workload on PostgreSQL against pg, pg-effect, sessionfx, effect-sql-pg,
 *              kysely-pg, drizzle-pg; on PG_URL's server or a private PgServer)
 *   pnpm bench scale [--units 10000] [--spawn fiber|forEach]
 *   pnpm bench soak [--sessions 200000]
 *   pnpm bench reads10 [--units 10000] [--concurrency 1,16,64] [--reps 3]   (a unit of 10 primary-key reads)
 *   pnpm bench replicas [--clients 64] [--seconds 5] [--reps 3] [--replicas 2] [--lag 1] [--accounts 1000]
 *   pnpm bench pg-clients [--transfers 3000] [--accounts 1000] [--concurrency 1,16,64] [--reps 3]   (pg vs postgres.js,
 *              hand-written, on a private PgServer or PG_URL's; not part of the default run)
 *
 * scale and soak run in a process of their own (`build/stress.mjs`, see stressMain.ts).
 *
 * Uses the server named by MYSQL_URL (PG_URL with --db postgres), or starts a private one. `replicas` always starts its own primary and replicas
 * (`MysqlCluster.replicated`).
 */
import { spawn } from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { fileURLToPath } from "node:url"
import { NodeRuntime } from "@effect/platform-node"
import { MysqlCluster, MysqlServer, PgServer } from "@sessionfx/testing"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import { type DatabaseName, type Impl, type Suite, suites } from "./impls/index.js"
import * as Report from "./report.js"
import { withProgress } from "./progress.js"
import { pgClients } from "./pgClients.js"
import { reads10 } from "./reads10.js"
import * as Replicas from "./replicas.js"
import { runOnce } from "./runner.js"
import type { ScaleResult, SoakResult, Spawn, StressJob } from "./stress.js"
import { type Conservation, createSchema, makePlan } from "./workload.js"

interface Args {
  readonly mode: "compare" | "scale" | "soak" | "replicas" | "reads10" | "pg-clients"
  readonly suite: Suite
  readonly transfers: number
  readonly accounts: number
  readonly concurrency: ReadonlyArray<number>
  readonly reps: number
  readonly impls: ReadonlyArray<string>
  readonly seed: number
  readonly warmup: number
  readonly units: number
  readonly sessions: number
  readonly spawn: Spawn
  readonly clients: number
  readonly seconds: number
  readonly replicas: number
  readonly lag: number
  readonly quick: boolean
  readonly out: string
}

const usage = `usage: bench [compare|scale|soak|replicas|reads10|pg-clients] [--db mariadb|postgres (compare)] [--quick] [--transfers N]
             [--accounts N] [--concurrency 1,16,64,256] [--reps N] [--seed N] [--warmup N]
             [--impls ${Object.keys(suites.mariadb.implementations).join(",")}
               or, with --db postgres, ${Object.keys(suites.postgres.implementations).join(",")}]
             [--units N (scale, reads10)] [--spawn fiber|forEach (scale)] [--sessions N (soak)]
             [--clients N] [--seconds N] [--replicas N] [--lag SECONDS] (replicas) [--out DIR]`

const parseArgs = (argv: ReadonlyArray<string>): Args => {
  const flags = new Map<string, string>()
  let mode: Args["mode"] = "compare"
  let quick = false
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (arg === "--quick") quick = true
    else if (arg === "--help" || arg === "-h") {
      process.stdout.write(usage + "\n")
      process.exit(0)
    } else if (arg.startsWith("--")) {
      const [key, inline] = arg.slice(2).split("=", 2) as [string, string | undefined]
      const value = inline ?? argv[++i]
      if (value === undefined) throw new Error(`--${key} needs a value\n${usage}`)
      flags.set(key, value)
    } else if (
      arg === "compare" ||
      arg === "scale" ||
      arg === "soak" ||
      arg === "replicas" ||
      arg === "reads10" ||
      arg === "pg-clients"
    ) {
      mode = arg
    } else throw new Error(`unknown argument ${arg}\n${usage}`)
  }
  const known = [
    "db",
    "transfers",
    "accounts",
    "concurrency",
    "reps",
    "impls",
    "seed",
    "warmup",
    "units",
    "sessions",
    "spawn",
    "clients",
    "seconds",
    "replicas",
    "lag",
    "out"
  ]
  for (const k of flags.keys()) if (!known.includes(k)) throw new Error(`unknown flag --${k}\n${usage}`)
  const int = (key: string, fallback: number) => {
    const v = flags.get(key)
    if (v === undefined) return fallback
    const n = Number(v.replace(/_/g, ""))
    if (!Number.isInteger(n) || n < 0) throw new Error(`--${key} must be a non-negative integer, got ${v}`)
    return n
  }
  const db = flags.get("db") ?? "mariadb"
  if (db !== "mariadb" && db !== "postgres") throw new Error(`--db must be mariadb or postgres\n${usage}`)
  if (db === "postgres" && mode !== "compare") throw new Error(`--db postgres runs compare only\n${usage}`)
  const suite = suites[db as DatabaseName]
  const { implementations } = suite
  const impls = (flags.get("impls") ?? Object.keys(implementations).join(",")).split(",").filter((s) => s !== "")
  for (const name of impls) {
    if (!(name in implementations)) throw new Error(`unknown implementation ${name} on ${db}\n${usage}`)
  }
  const spawnMode = flags.get("spawn") ?? "fiber"
  if (spawnMode !== "fiber" && spawnMode !== "forEach") throw new Error(`--spawn must be fiber or forEach\n${usage}`)
  const accounts = int("accounts", 1000)
  if (accounts < 2) throw new Error("--accounts must be at least 2")
  return {
    mode,
    suite,
    transfers: int("transfers", quick ? 400 : mode === "pg-clients" ? 3000 : 20_000),
    accounts,
    concurrency: (flags.get("concurrency") ?? (mode === "pg-clients" ? "1,16,64" : "1,16,64,256"))
      .split(",")
      .map((s) => {
        const n = Number(s)
        if (!Number.isInteger(n) || n < 1) throw new Error(`bad --concurrency ${s}`)
        return n
      }),
    reps: Math.max(1, int("reps", quick ? 1 : 3)),
    clients: Math.max(1, int("clients", 64)),
    seconds: Math.max(1, int("seconds", quick ? 2 : 5)),
    replicas: Math.max(1, int("replicas", 2)),
    lag: int("lag", 1),
    quick,
    impls,
    seed: int("seed", 42),
    warmup: int("warmup", quick ? 100 : 1000),
    units: int("units", quick ? 2000 : 10_000),
    sessions: int("sessions", quick ? 20_000 : 200_000),
    spawn: spawnMode,
    out: flags.get("out") ?? Path.join(Path.dirname(fileURLToPath(import.meta.url)), "..", "results")
  }
}

/**
 * A full GC before every run when node has `--expose-gc` (`pnpm bench` passes it), so that no run pays for the
 * garbage the one before it left behind.
 */
const collectGarbage = (globalThis as { gc?: () => void }).gc

const compare = async (url: string, server: string, args: Args) => {
  const { workload, implementations, baseline } = args.suite
  const { resetAccounts, checkConservation } = workload
  await workload.createSchema(url, args.accounts)
  const impls: Array<Impl> = args.impls.map((name) => implementations[name]!())
  for (const impl of impls) await impl.setup(url)
  const runs: Array<Report.RunRecord> = []
  try {
    if (args.warmup > 0) {
      // every implementation warms up at every concurrency it will be measured at: the JIT has then seen its
      // contended paths (waiting for a pooled connection) too, not only the uncontended ones
      const plan = makePlan(args.warmup, args.accounts, args.seed + 1)
      for (const impl of impls) {
        for (const concurrency of args.concurrency) {
          await resetAccounts(url)
          await withProgress(`warm-up ${impl.name} c=${concurrency}`, plan.size, (p) =>
            runOnce(impl, plan, concurrency, p)
          )
        }
      }
    }
    const total = args.reps * args.concurrency.length * impls.length
    let n = 0
    for (let rep = 1; rep <= args.reps; rep++) {
      // the same transfers for every implementation within a repetition, different ones across repetitions
      const plan = makePlan(args.transfers, args.accounts, args.seed + rep * 7919)
      for (const concurrency of args.concurrency) {
        // rotate the order so no implementation always runs first (or right after a heavy one)
        const order = impls.map((_, k) => impls[(k + rep + concurrency) % impls.length]!)
        for (const impl of order) {
          n++
          await resetAccounts(url)
          collectGarbage?.()
          const label = `run ${n}/${total} · rep ${rep} · c=${concurrency} · ${impl.name}`
          const m = await withProgress(label, plan.size, (p) => runOnce(impl, plan, concurrency, p))
          const conservation = await checkConservation(url, args.accounts, m.completed)
          runs.push({ impl: impl.name, concurrency, rep, ...m, conservation })
          if (!conservation.ok || m.failed > 0) {
            process.stderr.write(
              `!! ${impl.name} c=${concurrency}: conserved=${conservation.ok} failed=${m.failed} ${JSON.stringify(conservation)} ${m.errors.join(" | ")}\n`
            )
          }
        }
      }
    }
  } finally {
    for (const impl of impls) await impl.close()
  }
  const summary = Report.summarize(runs, baseline)
  const report: Report.BenchReport = {
    meta: {
      date: new Date().toISOString(),
      node: process.version,
      cpus: `${(await import("node:os")).cpus().length} cpus`,
      server,
      database: args.suite.database,
      transfers: args.transfers,
      accounts: args.accounts,
      pool: 16,
      reps: args.reps,
      concurrency: args.concurrency,
      seed: args.seed,
      baseline,
      gcBeforeEachRun: collectGarbage !== undefined
    },
    runs,
    summary,
    targets: Report.evaluateTargets(summary, runs, args.suite)
  }
  const md = Report.markdown(report, Object.keys(implementations))
  // the MariaDB figures keep their file names; PostgreSQL's sit beside them
  const prefix = args.suite.database === "postgres" ? "bench-postgres" : "bench"
  const written = await Report.writeFiles(args.out, {
    [`${prefix}.json`]: Report.json(report),
    [`${prefix}.md`]: md,
    [`${prefix}.svg`]: Report.svg(summary, `Transfer workload: throughput by concurrency (${server})`)
  })
  process.stdout.write(md + "\n" + written.map((p) => `wrote ${p}`).join("\n") + "\n")
  if (summary.some((r) => !r.conserved)) process.exitCode = 1
}

/** Runs a scale or soak job in the stress process and returns its result. */
const runStress = <A>(url: string, job: StressJob): Promise<A> => {
  const entry = Path.join(Path.dirname(fileURLToPath(import.meta.url)), "stress.mjs")
  if (!Fs.existsSync(entry)) {
    return Promise.reject(new Error(`${entry} is missing: run the benchmark as \`pnpm bench\`, which builds it`))
  }
  // the soak samples the heap after a full GC, which needs global.gc
  const flags = job.mode === "soak" ? ["--expose-gc"] : []
  return new Promise<A>((resolve, reject) => {
    const child = spawn(process.execPath, [...flags, entry, JSON.stringify(job)], {
      stdio: ["ignore", "pipe", "inherit"],
      env: { ...process.env, MYSQL_URL: url }
    })
    const out: Array<Buffer> = []
    child.stdout.on("data", (chunk: Buffer) => out.push(chunk))
    child.on("error", reject)
    child.on("close", (code, signal) => {
      if (code !== 0) {
        reject(new Error(`the ${job.mode} process failed (exit ${code ?? signal}); its error is printed above`))
        return
      }
      try {
        resolve(JSON.parse(Buffer.concat(out).toString("utf8")) as A)
      } catch (e) {
        reject(new Error(`the ${job.mode} process printed no result: ${String(e)}`))
      }
    })
  })
}

/** Runs a scale or soak job in the stress process, writes `<mode>.json` and `<mode>.md`, fails on lost money. */
const stress = async <R extends { readonly failed: number; readonly conservation: Conservation }>(
  url: string,
  args: Args,
  job: StressJob,
  markdown: (result: R) => string
) => {
  await createSchema(url, args.accounts)
  const result = await runStress<R>(url, job)
  const md = markdown(result)
  const written = await Report.writeFiles(args.out, {
    [`${job.mode}.json`]: Report.json(result),
    [`${job.mode}.md`]: md
  })
  process.stdout.write(md + "\n" + written.map((p) => `wrote ${p}`).join("\n") + "\n")
  if (!result.conservation.ok || result.failed > 0) process.exitCode = 1
}

const scale = (url: string, args: Args) =>
  stress<ScaleResult>(
    url,
    args,
    { mode: "scale", accounts: args.accounts, units: args.units, seed: args.seed, spawn: args.spawn },
    Report.scaleMarkdown
  )

const soak = (url: string, args: Args) =>
  stress<SoakResult>(
    url,
    args,
    { mode: "soak", accounts: args.accounts, sessions: args.sessions, seed: args.seed },
    Report.soakMarkdown
  )

/** `replicas`: the read-heavy mix against one server, and against a primary + replicas with and without waits. */
const replicas = async (servers: MysqlCluster.Replicated, args: Args) => {
  const options: Replicas.ReplicasOptions = {
    clients: args.clients,
    seconds: args.seconds,
    warmupSeconds: 1,
    reps: args.reps,
    sharedAccounts: args.accounts,
    ownAccounts: 4,
    readPercent: 90,
    ownReadPercent: 50,
    lagSeconds: args.lag,
    seed: args.seed
  }
  const result = await Replicas.runReplicas(Replicas.clusterOf(servers), options)
  const md = Replicas.markdown(result)
  const written = await Report.writeFiles(args.out, {
    "replicas.json": Report.json(result),
    "replicas.md": md
  })
  process.stdout.write(md + "\n" + written.map((p) => `wrote ${p}`).join("\n") + "\n")
  if (!result.ok) process.exitCode = 1
}

const args = parseArgs(process.argv.slice(2))

const single = Effect.gen(function* () {
  const server = yield* MysqlServer.MysqlServer
  const url = Redacted.value(server.url)
  const label = `${server.flavor} ${server.version}`
  yield* Effect.logInfo(`server: ${label} (${server.kind}) at ${server.host}:${server.port}`)
  const run =
    args.mode === "scale"
      ? scale(url, args)
      : args.mode === "soak"
        ? soak(url, args)
        : args.mode === "reads10"
          ? createSchema(url, args.accounts).then(() =>
              reads10(url, {
                units: args.units,
                accounts: args.accounts,
                concurrency: args.concurrency,
                reps: args.reps,
                seed: args.seed
              })
            )
          : compare(url, label, args)
  yield* Effect.promise(() => run)
}).pipe(Effect.provide(MysqlServer.layer()))

const cluster = Effect.scoped(
  Effect.gen(function* () {
    const started = Date.now()
    const servers = yield* MysqlCluster.replicated({ replicas: args.replicas })
    yield* Effect.logInfo(
      `cluster: ${servers.primary.flavor} ${servers.primary.version}, primary at ${servers.primary.host}:${servers.primary.port} + replicas at ${servers.replicas.map((r) => `${r.host}:${r.port}`).join(", ")} (started in ${((Date.now() - started) / 1000).toFixed(1)} s)`
    )
    yield* Effect.promise(() => replicas(servers, args))
  })
)

/** `compare --db postgres`: the transfer workload on PG_URL's server or a private PgServer. */
const onPostgres = Effect.scoped(
  Effect.gen(function* () {
    const server = yield* PgServer.make()
    const label = `PostgreSQL ${server.version}`
    yield* Effect.logInfo(`server: ${label} (${server.kind}) at ${server.host}:${server.port}`)
    yield* Effect.promise(() => compare(Redacted.value(server.url), label, args))
  })
)

const program: Effect.Effect<void, unknown> =
  args.suite.database === "postgres"
    ? onPostgres
    : args.mode === "replicas"
      ? cluster
      : args.mode === "pg-clients"
        ? pgClients({
            transfers: args.transfers,
            accounts: args.accounts,
            concurrency: args.concurrency,
            reps: args.reps,
            seed: args.seed
          })
        : single

NodeRuntime.runMain(program)
