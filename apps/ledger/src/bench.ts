/**
 * The ledger against the reference server (bench/reference_server.py: the seed's design in Python with SQLAlchemy
 * 1.4 `scoped_session`, a QueuePool of 10, PyMySQL, a thread per connection), both as processes of their own on one
 * MariaDB, both driven by the ledger's demo client in this process. Runs are interleaved pairs (the order alternates),
 * figures are medians; CPU is read from /proc (all threads of the server process; the database server's likewise),
 * between the start and the end of the transfers.
 *
 *   pnpm --filter @sessionfx/ledger bench [--reps 5] [--transfers 4000] [--connections 16] [--accounts 32,1000]
 *                                         [--noop 20000] [--profile <dir>] [--socket] [--variant name:VAR=value,…]
 *                                         [--no-floor] [--fast-unsafe] [--db mariadb|postgres]
 *
 * `--db postgres` runs the ledger (and its variants) on an embedded PostgreSQL instead (`DATABASE_URL=postgres://…`),
 * durable likewise (`fsync`, `synchronous_commit`, `full_page_writes` on; `--fast-unsafe`: the last two off). The
 * reference and the floor speak MariaDB only (PyMySQL, mysql2): they are left out, and so are the ratios to them; the
 * database's CPU is that of all its processes (the postmaster and its backends); PostgreSQL keeps no count of
 * statements, so that column is empty.
 *
 * The ledger and the floor run as they ship: built JavaScript (`pnpm build`: dist/main.js, dist/floor.js) run by
 * `node`; `pnpm bench` builds first. The database is durable (`innodb_flush_log_at_trx_commit=1`, doublewrite on: the
 * ledger's embedded default) for every server alike; `--fast-unsafe` runs it with the fast, unsafe settings instead.
 *
 * `--noop` also measures a request that never reaches the database (an unknown operation, one connection, one
 * request at a time). `--profile <dir>` runs the ledger, its variants and the floor under `node --cpu-prof` and writes
 * their profiles there, one per server (ledger.cpuprofile, floor.cpuprofile, <variant>.cpuprofile).
 * The floor (bench/floor.ts; `--no-floor` leaves it out) runs in the same rounds: the transfer path alone on `net` and
 * `mysql2` callbacks with the ledger's statements, no Effect — what a transfer costs a Node process at least.
 */
import * as Effect from "effect/Effect"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Path from "node:path"
import * as BenchDatabase from "./benchDatabase.js"
import * as Client from "./Client.js"
import * as Demo from "./Demo.js"

const argv = process.argv.slice(2)
const arg = (name: string, fallback: string) => {
  const i = argv.indexOf(`--${name}`)
  return i === -1 ? fallback : argv[i + 1]!
}
const reps = Number(arg("reps", "5"))
const transfers = Number(arg("transfers", "4000"))
const connections = Number(arg("connections", "16"))
const accountSets = arg("accounts", "32,1000")
  .split(",")
  .map(Number)
  .filter((n) => n > 1)
const noop = Number(arg("noop", "20000"))
const profileDir = arg("profile", "")
/** `--socket`: both servers reach MariaDB over its unix socket instead of TCP loopback. */
const overSocket = argv.includes("--socket")
/**
 * `--no-floor`: leave out the floor (bench/floor.ts: the transfer path alone on `net` + `mysql2` callbacks, no
 * Effect, the same statements), which otherwise runs in the same rounds as a third server.
 */
const withFloor = !argv.includes("--no-floor")
/** `--fast-unsafe`: the database flushes its log about once a second instead of at every commit (not durable). */
const fastUnsafe = argv.includes("--fast-unsafe")
/** `--db postgres`: the ledger on PostgreSQL (no reference, no floor: they speak MariaDB only). */
const dbKind = arg("db", "mariadb")
if (dbKind !== "mariadb" && dbKind !== "postgres") throw new Error(`--db ${dbKind}: mariadb or postgres`)
/**
 * `--variant name:VAR=value,VAR=value` (repeatable): another ledger process with those environment variables.
 * `LEDGER_BENCH_MAIN=<file>` among them runs that bundle instead of dist/main.js (an A/B of two builds in the same
 * rounds, e.g. a bundle of the previous commit copied to dist/base/main.js).
 */
const variants = argv
  .flatMap((a, i) => (a === "--variant" ? [argv[i + 1]!] : []))
  .map((spec) => {
    const [name, vars = ""] = spec.split(":")
    const env = Object.fromEntries(
      vars
        .split(",")
        .filter((v) => v.includes("="))
        .map((v) => v.split("=") as [string, string])
    )
    return { name: name!, env }
  })

const here = Path.dirname(new URL(import.meta.url).pathname)
const appDir = Path.resolve(here, "..")
const TOKEN = "bench-token-0123456789"
const CLK_TCK = 100

/** CPU seconds of a process, all threads, user + system (clock ticks of /proc/<pid>/stat). */
const cpuOf = (pid: number): number => {
  const stat = Fs.readFileSync(`/proc/${pid}/stat`, "utf8")
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK
}

/** CPU seconds of a process and its children (PostgreSQL: the postmaster and its backends). */
const treeCpuOf = (pid: number): number => {
  let total = cpuOf(pid)
  for (const entry of Fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(entry) || Number(entry) === pid) continue
    try {
      const stat = Fs.readFileSync(`/proc/${entry}/stat`, "utf8")
      if (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === pid) total += cpuOf(Number(entry))
    } catch {
      // a process that just exited
    }
  }
  return total
}

/** Seconds the threads of a process spent runnable but waiting for a CPU (field 2 of each task's schedstat). */
const waitOf = (pid: number): number => {
  let ns = 0
  for (const task of Fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(Fs.readFileSync(`/proc/${pid}/task/${task}/schedstat`, "utf8").split(" ")[1])
    } catch {
      // a thread that just exited
    }
  }
  return ns / 1e9
}

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = Net.createServer()
    s.once("error", reject)
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as Net.AddressInfo).port
      s.close(() => resolve(port))
    })
  })

const python = () => {
  for (const candidate of ["/usr/bin/python3", "python3"]) {
    const r = ChildProcess.spawnSync(candidate, ["-c", "import sqlalchemy, pymysql"], { stdio: "ignore" })
    if (r.status === 0) return candidate
  }
  throw new Error(
    "no python3 with sqlalchemy and pymysql: run scripts/setup.sh (Debian python3-sqlalchemy python3-pymysql)"
  )
}

interface Server {
  /** `ledger`, `reference`, `floor`, or a `--variant` of the ledger */
  readonly name: string
  readonly port: number
  readonly pid: number
  readonly stop: () => Promise<void>
}

/** Starts a server process and waits until its port answers. */
const start = (name: string, command: string, args: Array<string>, env: Record<string, string>, port: number) =>
  Effect.promise(async (): Promise<Server> => {
    const child = ChildProcess.spawn(command, args, {
      cwd: appDir,
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let log = ""
    const keep = (d: Buffer) => {
      log = (log + d.toString()).slice(-4000)
    }
    child.stdout!.on("data", keep)
    child.stderr!.on("data", keep)
    const deadline = Date.now() + 60_000
    while (true) {
      if (child.exitCode !== null) throw new Error(`${name} exited (${child.exitCode}): ${log}`)
      const up = await new Promise<boolean>((resolve) => {
        const s = Net.connect({ host: "127.0.0.1", port }, () => {
          s.destroy()
          resolve(true)
        })
        s.on("error", () => resolve(false))
      })
      if (up) break
      if (Date.now() > deadline) throw new Error(`${name} did not listen on ${port}: ${log}`)
      await new Promise((r) => setTimeout(r, 100))
    }
    const stop = () =>
      new Promise<void>((resolve) => {
        if (child.exitCode !== null) return resolve()
        child.once("exit", () => resolve())
        child.kill("SIGTERM")
        setTimeout(() => child.kill("SIGKILL"), 15_000).unref()
      })
    return { name, port, pid: child.pid!, stop }
  })

interface Sample {
  readonly server: string
  readonly accounts: number
  readonly perSecond: number
  readonly p50: number
  readonly p99: number
  /** µs of server CPU per request */
  readonly serverCpu: number
  /** µs the server's threads waited for a CPU (runnable, not running) per request */
  readonly serverWait: number
  /** µs of database CPU per request */
  readonly dbCpu: number
  /** statements the database received per request (`Questions`: BEGIN, COMMIT and pool resets included) */
  readonly statements: number
  readonly conserved: boolean
  /** the round (0-based) */
  readonly rep: number
}

/** The database's `Questions` counter, read over a connection of its own (each read counts 1, subtracted below). */
let questions: () => number = () => 0
const lastStatus: Array<Record<string, number>> = []
const statusDelta = (requests: number) => {
  const [a, b] = lastStatus.slice(-2)
  if (a === undefined || b === undefined) return ""
  return Object.keys(b)
    .filter((k) => k !== "Questions" && b[k]! !== a[k]!)
    .map((k) => `${k} ${((b[k]! - a[k]!) / requests).toFixed(2)}`)
    .join(", ")
}

const runDemo = (server: Server, dbPid: number, accounts: number, seed: number, rep = -1) =>
  Effect.gen(function* () {
    let q0 = 0
    let q1 = 0
    let s0 = 0
    let d0 = 0
    let w0 = 0
    let w1 = 0
    let s1 = 0
    let d1 = 0
    const report = yield* Demo.run({
      host: "127.0.0.1",
      port: server.port,
      token: TOKEN,
      connections,
      transfers,
      accounts,
      seed,
      quiet: true,
      onTransfers: {
        start: () => {
          s0 = cpuOf(server.pid)
          d0 = treeCpuOf(dbPid)
          w0 = waitOf(server.pid)
          q0 = questions()
        },
        end: () => {
          s1 = cpuOf(server.pid)
          d1 = treeCpuOf(dbPid)
          w1 = waitOf(server.pid)
          q1 = questions()
        }
      }
    })
    const sample: Sample = {
      server: server.name,
      accounts,
      perSecond: report.perSecond,
      p50: report.p50,
      p99: report.p99,
      serverCpu: ((s1 - s0) / report.requests) * 1e6,
      serverWait: ((w1 - w0) / report.requests) * 1e6,
      dbCpu: ((d1 - d0) / report.requests) * 1e6,
      statements: (q1 - q0 - 1) / report.requests,
      conserved: report.conserved,
      rep
    }
    return sample
  })

/** Server CPU of a request that never reaches the database: `op` unknown, one connection, one at a time. */
const runNoop = (server: Server) =>
  Effect.scoped(
    Effect.gen(function* () {
      const client = yield* Client.connect({ host: "127.0.0.1", port: server.port, token: TOKEN })
      for (let i = 0; i < 500; i++) yield* client.request({ id: i, op: "no_such_op" })
      const c0 = cpuOf(server.pid)
      for (let i = 0; i < noop; i++) {
        const r = yield* client.request({ id: i, op: "no_such_op" })
        if (r.error?.code !== "unknown_operation") return yield* Effect.dieMessage(`unexpected: ${JSON.stringify(r)}`)
      }
      return ((cpuOf(server.pid) - c0) / noop) * 1e6
    })
  )

const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

const fmt = (n: number, digits = 0) => (Number.isNaN(n) ? "–" : n.toFixed(digits))

const program = Effect.gen(function* () {
  for (const built of ["dist/main.js", "dist/floor.js"]) {
    if (!Fs.existsSync(Path.join(appDir, built))) {
      return yield* Effect.dieMessage(`${built} is missing: run pnpm build (pnpm bench does) first`)
    }
  }
  const options = { fastUnsafe, overSocket, appDir }
  const { dbPid, label, pyUrl, status, url } = yield* dbKind === "postgres"
    ? BenchDatabase.postgres(options)
    : BenchDatabase.mariadb(options)
  questions = () => {
    const counters = status()
    if (counters === undefined) return NaN
    lastStatus.push(counters)
    return counters.Questions!
  }
  const ledgerEnv = {
    DATABASE_URL: url,
    LEDGER_TOKEN: TOKEN,
    LEDGER_POOL_SIZE: "10",
    LEDGER_LOG_LEVEL: "WARN",
    LEDGER_MAX_CONNECTIONS: "1024"
  }
  const startLedger = (name: string, env: Record<string, string>, profile: boolean) =>
    Effect.gen(function* () {
      const [tcpPort, httpPort] = yield* Effect.promise(() => Promise.all([freePort(), freePort()]))
      const { LEDGER_BENCH_MAIN: main = "dist/main.js", ...serverEnv } = env
      const args = [
        ...(profile && profileDir !== ""
          ? ["--cpu-prof", `--cpu-prof-dir=${Path.resolve(profileDir)}`, `--cpu-prof-name=${name}.cpuprofile`]
          : []),
        "--enable-source-maps",
        main,
        "serve"
      ]
      return yield* Effect.acquireRelease(
        start(
          name,
          process.execPath,
          args,
          { ...ledgerEnv, ...serverEnv, LEDGER_TCP_PORT: String(tcpPort), LEDGER_HTTP_PORT: String(httpPort) },
          tcpPort
        ),
        (s) => Effect.promise(s.stop)
      )
    })
  const ledger = yield* startLedger("ledger", {}, true)
  // the ledger's migrations have run: the reference uses the same tables (MariaDB only)
  const references: Array<Server> = []
  if (pyUrl !== undefined) {
    const refPort = yield* Effect.promise(freePort)
    references.push(
      yield* Effect.acquireRelease(
        start(
          "reference",
          python(),
          ["bench/reference_server.py", "--url", pyUrl, "--port", String(refPort), "--token", TOKEN],
          {},
          refPort
        ),
        (s) => Effect.promise(s.stop)
      )
    )
  }
  const others: Array<Server> = []
  for (const v of variants) others.push(yield* startLedger(v.name, v.env, true))
  if (withFloor && dbKind === "mariadb") {
    const floorPort = yield* Effect.promise(freePort)
    others.push(
      yield* Effect.acquireRelease(
        start(
          "floor",
          process.execPath,
          [
            ...(profileDir !== ""
              ? ["--cpu-prof", `--cpu-prof-dir=${Path.resolve(profileDir)}`, "--cpu-prof-name=floor.cpuprofile"]
              : []),
            "dist/floor.js",
            "--url",
            url,
            "--port",
            String(floorPort),
            "--token",
            TOKEN
          ],
          {},
          floorPort
        ),
        (s) => Effect.promise(s.stop)
      )
    )
  }
  const servers = [ledger, ...references, ...others]
  const names = servers.map((s) => s.name)
  /** The servers in a different order each repetition (a rotation): no server always runs first or last. */
  const rotation = (rep: number) => servers.map((_, i) => servers[(i + rep) % servers.length]!)
  process.stderr.write(
    `${references.length > 0 ? "ledger vs reference" : "ledger"}: ${label} (${fastUnsafe ? "fast-unsafe" : "durable"}) over ${overSocket ? "its unix socket" : "TCP"}, ${connections} connections, ${transfers} transfers per run, ` +
      `${reps} interleaved rounds per account set${others.length > 0 ? `, variants: ${others.map((o) => o.name).join(", ")}` : ""}\n`
  )
  // warm-up: JIT, pools, prepared statements
  if (accountSets.length > 0) for (const server of servers) yield* runDemo(server, dbPid, 32, 1)
  // what each server costs with nothing to do (timers, pool upkeep), per second
  const idle: Record<string, number> = {}
  for (const server of servers) {
    const c0 = cpuOf(server.pid)
    yield* Effect.sleep("2 seconds")
    idle[server.name] = ((cpuOf(server.pid) - c0) / 2) * 1e3
  }
  const samples: Array<Sample> = []
  for (let rep = 0; rep < reps; rep++) {
    for (const accounts of accountSets) {
      for (const server of rotation(rep)) {
        const s = yield* runDemo(server, dbPid, accounts, 100 + rep, rep)
        samples.push(s)
        process.stderr.write(
          `  rep ${rep + 1} ${accounts} accounts ${s.server.padEnd(9)} ${fmt(s.perSecond)}/s  p50 ${fmt(s.p50, 2)} ms  ` +
            `p99 ${fmt(s.p99, 2)} ms  server ${fmt(s.serverCpu)} µs/req (waited for a CPU ${fmt(s.serverWait)})  ` +
            `db ${fmt(s.dbCpu)} µs/req  ` +
            `${fmt(s.statements, 2)} statements/req` +
            (process.env.LEDGER_BENCH_STATUS ? `  [${statusDelta(transfers)}]` : "") +
            (s.conserved ? "" : "  NOT CONSERVED") +
            "\n"
        )
      }
    }
  }
  const noops: Record<string, Array<number>> = Object.fromEntries(names.map((n) => [n, []]))
  if (noop > 0) {
    for (let rep = 0; rep < Math.max(3, Math.min(reps, 5)); rep++) {
      for (const server of rotation(rep)) noops[server.name]!.push(yield* runNoop(server))
    }
  }

  const lines: Array<string> = []
  lines.push(
    `| accounts | server | transfers/s | p50 ms | p99 ms | server CPU µs/req | server waited for a CPU µs/req | DB CPU µs/req | DB statements/req |`,
    `| -------: | ------ | ----------: | -----: | -----: | ----------------: | -----------------------------: | ------------: | ----------------: |`
  )
  const ratios: Array<string> = []
  for (const accounts of accountSets) {
    const med = (server: string, f: (s: Sample) => number) =>
      median(samples.filter((s) => s.server === server && s.accounts === accounts).map(f))
    for (const server of names) {
      lines.push(
        `| ${accounts} | ${server} | ${fmt(med(server, (s) => s.perSecond))} | ${fmt(
          med(server, (s) => s.p50),
          2
        )} | ` +
          `${fmt(
            med(server, (s) => s.p99),
            2
          )} | ${fmt(med(server, (s) => s.serverCpu))} | ` +
          `${fmt(med(server, (s) => s.serverWait))} | ${fmt(med(server, (s) => s.dbCpu))} | ` +
          `${fmt(
            med(server, (s) => s.statements),
            2
          )} |`
      )
    }
    for (const server of references.length > 0 ? names.filter((n) => n !== "reference") : []) {
      const r = (f: (s: Sample) => number) => med(server, f) / med("reference", f)
      ratios.push(
        `${accounts} accounts, ${server} / reference: throughput ${fmt(
          r((s) => s.perSecond),
          2
        )}x, ` +
          `p50 ${fmt(
            r((s) => s.p50),
            2
          )}x, p99 ${fmt(
            r((s) => s.p99),
            2
          )}x, ` +
          `server CPU per request ${fmt(
            r((s) => s.serverCpu),
            2
          )}x, database CPU per request ${fmt(
            r((s) => s.dbCpu),
            2
          )}x`
      )
    }
  }
  // the same ratios taken round by round (each server against the ledger measured in the same round), then the
  // median: a busy machine moves every server of a round together, so these vary much less than the medians above
  const paired: Array<string> = []
  for (const accounts of accountSets) {
    for (const server of names.filter((n) => n !== "ledger")) {
      const per = (f: (s: Sample) => number) => {
        const rs: Array<number> = []
        for (let rep = 0; rep < reps; rep++) {
          const of = (name: string) =>
            samples.find((s) => s.server === name && s.accounts === accounts && s.rep === rep)
          const a = of(server)
          const b = of("ledger")
          if (a !== undefined && b !== undefined) rs.push(f(a) / f(b))
        }
        return fmt(median(rs), 2)
      }
      paired.push(
        `${accounts} accounts, ${server} / ledger, median of per-round ratios: throughput ${per((s) => s.perSecond)}x, ` +
          `server CPU per request ${per((s) => s.serverCpu)}x, database CPU per request ${per((s) => s.dbCpu)}x`
      )
    }
  }
  if (ratios.length > 0) lines.push("", ...ratios)
  if (paired.length > 0) lines.push("", ...paired)
  if (noop > 0) {
    lines.push(
      "",
      `request that never reaches the database (unknown op, ${noop} sequential requests, median of ${noops.ledger!.length}): ` +
        names.map((n) => `${n} ${fmt(median(noops[n]!))} µs CPU`).join(", ")
    )
  }
  lines.push("", `idle CPU (nothing to do, 2 s): ${names.map((n) => `${n} ${fmt(idle[n]!)} ms/s`).join(", ")}`)
  const conserved = samples.every((s) => s.conserved)
  lines.push("", `totals conserved in every run: ${conserved ? "yes" : "NO"}`)
  process.stdout.write(lines.join("\n") + "\n")
  if (!conserved) return yield* Effect.dieMessage("a run did not conserve the total")
})

Effect.runPromise(Effect.scoped(program)).then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`${e}\n`)
    process.exit(1)
  }
)
