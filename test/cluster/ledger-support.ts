/**
 * Ledger processes (apps/ledger, `node --conditions=@sessionfx/source --import tsx src/main.ts serve`: the workspace's
 * packages from their source) and a small client of its TCP line protocol, for the cluster tests that run the ledger
 * against real clusters. Plain node: no import from apps/ledger, whose sources are not part of this project.
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import * as ChildProcess from "node:child_process"
import * as Net from "node:net"
import * as Path from "node:path"
import * as Url from "node:url"

export const LEDGER_DIR = Path.resolve(Path.dirname(Url.fileURLToPath(import.meta.url)), "../../apps/ledger")

export const TOKEN = "cluster-test-token-0123456789"

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** `n` distinct free TCP ports on loopback (all held open together while they are picked). */
export const freePorts = (n: number): Promise<Array<number>> =>
  new Promise((resolve, reject) => {
    const servers: Array<Net.Server> = []
    const ports: Array<number> = []
    const next = () => {
      if (ports.length === n) {
        let closed = 0
        for (const s of servers) s.close(() => ++closed === servers.length && resolve(ports))
        return
      }
      const s = Net.createServer()
      s.once("error", reject)
      s.listen(0, "127.0.0.1", () => {
        servers.push(s)
        ports.push((s.address() as Net.AddressInfo).port)
        next()
      })
    }
    next()
  })

export interface Response {
  readonly id: unknown
  readonly ok: boolean
  readonly result?: any
  readonly error?: { readonly code: string; readonly message: string; readonly [k: string]: unknown }
}

/** The connection was closed (by the server, an error, or the client's own deadline) before the response came. */
export class Closed extends Error {}

/** One authenticated TCP connection; `request` sends one line and resolves with its response (one at a time). */
export class LineClient {
  private buffer = ""
  private readonly pending: Array<{ resolve: (r: Response) => void; reject: (e: Error) => void }> = []
  closed = false

  private constructor(private readonly socket: Net.Socket) {
    socket.setNoDelay(true)
    socket.setEncoding("utf8")
    socket.on("data", (chunk: string) => {
      this.buffer += chunk
      let nl: number
      while ((nl = this.buffer.indexOf("\n")) !== -1) {
        const line = this.buffer.slice(0, nl)
        this.buffer = this.buffer.slice(nl + 1)
        const waiter = this.pending.shift()
        if (waiter === undefined) continue
        try {
          waiter.resolve(JSON.parse(line) as Response)
        } catch (e) {
          waiter.reject(new Error(`not JSON: ${line.slice(0, 200)} (${String(e)})`))
        }
      }
    })
    socket.on("error", () => {})
    socket.on("close", () => {
      this.closed = true
      for (const w of this.pending.splice(0)) w.reject(new Closed("connection closed"))
    })
  }

  /** Connects and authenticates; rejects when either fails (within `timeoutMs`). */
  static async connect(port: number, token = TOKEN, timeoutMs = 10_000): Promise<LineClient> {
    const socket = await new Promise<Net.Socket>((resolve, reject) => {
      const s = Net.connect({ host: "127.0.0.1", port })
      const timer = setTimeout(() => {
        s.destroy()
        reject(new Closed(`connect to ${port}: no connection within ${timeoutMs} ms`))
      }, timeoutMs)
      s.once("error", (e) => {
        clearTimeout(timer)
        reject(new Closed(`connect to ${port}: ${e.message}`))
      })
      s.once("connect", () => {
        clearTimeout(timer)
        resolve(s)
      })
    })
    const client = new LineClient(socket)
    const auth = await client.request({ op: "auth", token }, timeoutMs)
    if (!auth.ok) {
      client.close()
      throw new Error(`auth refused: ${JSON.stringify(auth)}`)
    }
    return client
  }

  /** Sends `request`; past `timeoutMs` the connection is destroyed and the promise rejects with `Closed`. */
  request(request: Record<string, unknown>, timeoutMs = 30_000): Promise<Response> {
    if (this.closed) return Promise.reject(new Closed("connection closed"))
    return new Promise<Response>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.socket.destroy()
        reject(new Closed(`no response within ${timeoutMs} ms`))
      }, timeoutMs)
      this.pending.push({
        resolve: (r) => {
          clearTimeout(timer)
          resolve(r)
        },
        reject: (e) => {
          clearTimeout(timer)
          reject(e)
        }
      })
      this.socket.write(JSON.stringify(request) + "\n")
    })
  }

  /** `request` that resolves with `result` and rejects on an error response. */
  async call(op: string, payload: Record<string, unknown> = {}): Promise<any> {
    const r = await this.request({ op, ...payload })
    if (!r.ok) throw new Error(`${op} ${JSON.stringify(payload)}: ${JSON.stringify(r.error)}`)
    return r.result
  }

  close(): void {
    this.socket.destroy()
  }
}

/** A client in the scope: closed with it. */
export const lineClient = (port: number): Effect.Effect<LineClient, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.promise(() => LineClient.connect(port)),
    (c) => Effect.sync(() => c.close())
  )

export interface LedgerProcess {
  readonly name: string
  readonly tcpPort: number
  readonly httpPort: number
  readonly child: ChildProcess.ChildProcess
  /** The last lines the process wrote (stdout and stderr). */
  readonly output: () => string
  /** Resolves once the ledger answers an authenticated request on TCP (its migrations have run). */
  readonly waitAnswering: (timeoutMs: number) => Effect.Effect<void>
  /** GET on its HTTP port (e.g. `/metrics`), as text. */
  readonly httpGet: (path: string) => Effect.Effect<string>
}

const exited = (child: ChildProcess.ChildProcess, ms: number) =>
  new Promise<boolean>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve(true)
    const timer = setTimeout(() => resolve(false), ms)
    child.once("exit", () => {
      clearTimeout(timer)
      resolve(true)
    })
  })

/**
 * Spawns `node --conditions=@sessionfx/source --import tsx src/main.ts serve` in apps/ledger with `env` (plus the
 * token, free ports, log level `Warn`: `Config.logLevel` wants a label such as WARN, not "Warning"), for the scope:
 * the finalizer sends SIGTERM, then SIGKILL after 5 seconds (also on the test's failure or interruption, and if the
 * test process exits first).
 */
export const spawnLedger = (options: {
  readonly name: string
  readonly databaseUrl: string
  readonly replicaUrls?: string | undefined
  readonly env?: Record<string, string> | undefined
}): Effect.Effect<LedgerProcess, never, Scope.Scope> =>
  Effect.gen(function* () {
    const [tcpPort, httpPort] = yield* Effect.promise(() => freePorts(2))
    const env: Record<string, string | undefined> = {
      ...process.env,
      DATABASE_URL: options.databaseUrl,
      DATABASE_REPLICA_URLS: options.replicaUrls,
      MYSQL_URL: undefined,
      LEDGER_TOKEN: TOKEN,
      LEDGER_HOST: "127.0.0.1",
      LEDGER_TCP_PORT: String(tcpPort),
      LEDGER_HTTP_PORT: String(httpPort),
      LEDGER_LOG_LEVEL: "Warn",
      LEDGER_LOG_FORMAT: "logfmt",
      ...options.env
    }
    for (const k of Object.keys(env)) if (env[k] === undefined) delete env[k]
    const lines: Array<string> = []
    const keep = (chunk: Buffer) => {
      for (const line of chunk.toString("utf8").split("\n")) if (line !== "") lines.push(line)
      if (lines.length > 400) lines.splice(0, lines.length - 400)
    }
    const child = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const child = ChildProcess.spawn(
          process.execPath,
          ["--conditions=@sessionfx/source", "--import", "tsx", "src/main.ts", "serve"],
          {
            cwd: LEDGER_DIR,
            env: env as NodeJS.ProcessEnv,
            stdio: ["ignore", "pipe", "pipe"]
          }
        )
        child.stdout!.on("data", keep)
        child.stderr!.on("data", keep)
        const onExit = () => child.kill("SIGKILL")
        process.once("exit", onExit)
        child.once("exit", () => process.removeListener("exit", onExit))
        return child
      }),
      (child) =>
        Effect.promise(async () => {
          if (child.exitCode !== null || child.signalCode !== null) return
          child.kill("SIGTERM")
          if (await exited(child, 5_000)) return
          child.kill("SIGKILL")
          await exited(child, 5_000)
        })
    )
    const output = () => lines.join("\n")
    const waitAnswering = (timeoutMs: number) =>
      Effect.promise(async () => {
        const deadline = Date.now() + timeoutMs
        let last = ""
        for (;;) {
          if (child.exitCode !== null || child.signalCode !== null) {
            throw new Error(`ledger ${options.name} exited (${child.exitCode ?? child.signalCode}):\n${output()}`)
          }
          try {
            const c = await LineClient.connect(tcpPort, TOKEN, 2_000)
            c.close()
            return
          } catch (e) {
            last = String(e)
          }
          if (Date.now() > deadline) {
            throw new Error(`ledger ${options.name} not answering within ${timeoutMs} ms (${last}):\n${output()}`)
          }
          await sleep(250)
        }
      }).pipe(Effect.orDie)
    const httpGet = (path: string) =>
      Effect.promise(async () => {
        const response = await fetch(`http://127.0.0.1:${httpPort}${path}`)
        return await response.text()
      })
    return { name: options.name, tcpPort, httpPort, child, output, waitAnswering, httpGet }
  })

/**
 * Sums the samples of a Prometheus text exposition: every series of `name` whose labels include all of `labels`
 * (a histogram: pass `name_count`).
 */
export const promSum = (text: string, name: string, labels: Record<string, string> = {}): number => {
  let sum = 0
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)/.exec(line)
    if (m === null || m[1] !== name) continue
    const have = new Map<string, string>()
    for (const pair of (m[3] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      have.set(pair[1]!, pair[2]!)
    }
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) sum += Number(m[4])
  }
  return sum
}
