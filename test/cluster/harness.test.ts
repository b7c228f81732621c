import * as Fs from "node:fs"
import { assert, describe, it } from "@effect/vitest"
import * as MysqlCluster from "@sessionfx/testing/MysqlCluster"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import type * as Mysql from "mysql2/promise"
import { connect, rows } from "./support.js"

/** Live processes whose command line mentions `text` (a server of that data directory, or its watchdog). */
const processesMentioning = (text: string): Array<number> =>
  Fs.readdirSync("/proc")
    .filter((entry) => /^\d+$/.test(entry) && Number(entry) !== process.pid)
    .filter((entry) => {
      try {
        const stat = Fs.readFileSync(`/proc/${entry}/stat`, "utf8")
        return !/^\d+ \(.*\) Z/.test(stat) && Fs.readFileSync(`/proc/${entry}/cmdline`, "utf8").includes(text)
      } catch {
        return false
      }
    })
    .map(Number)

const dataDirs = (servers: ReadonlyArray<{ readonly dataDir: Option.Option<string> }>) =>
  servers.map((server) => Option.getOrThrow(server.dataDir))

/** Opens `make` in a scope of its own, runs `use`, closes the scope, and checks that nothing is left behind. */
const leavesNothing = <A extends { readonly dataDir: Option.Option<string> }, E>(
  make: Effect.Effect<ReadonlyArray<A>, E, Scope.Scope>,
  use: (servers: ReadonlyArray<A>) => Effect.Effect<void, unknown, Scope.Scope>
) =>
  Effect.gen(function* () {
    const scope = yield* Scope.make()
    const servers = yield* Scope.extend(make, scope)
    const dirs = dataDirs(servers)
    for (const dir of dirs) {
      assert.isTrue(Fs.existsSync(dir))
      assert.isNotEmpty(processesMentioning(dir), `a server runs on ${dir}`)
    }
    yield* Effect.scoped(use(servers))
    yield* Scope.close(scope, Exit.void)
    for (const dir of dirs) {
      assert.deepStrictEqual(processesMentioning(dir), [], `nothing runs on ${dir} any more`)
      assert.isFalse(Fs.existsSync(dir), `${dir} removed`)
    }
  })

const wsrepOn = (conn: Mysql.Connection) =>
  Effect.map(rows<{ readonly v: string }>(conn, "SELECT @@GLOBAL.wsrep_on AS v"), (r) => Number(r[0]?.v))

describe("MysqlCluster harness", () => {
  it.live("a primary and a replica: started, replicating, then stopped and removed with the scope", () =>
    leavesNothing(
      Effect.map(MysqlCluster.replicated({ replicas: 1 }), (set) => set.servers),
      ([primary]) =>
        Effect.gen(function* () {
          const conn = yield* connect(primary!.url)
          const [row] = yield* rows<{ readonly b: number }>(conn, "SELECT @@GLOBAL.log_bin AS b")
          assert.strictEqual(Number(row?.b), 1)
        })
    )
  )

  it.live("a one-node Galera cluster (run as mysql when root): started, synced, then stopped and removed", () =>
    leavesNothing(
      Effect.map(MysqlCluster.galera({ nodes: 1 }), (cluster) => cluster.nodes),
      ([node]) =>
        Effect.gen(function* () {
          const status = yield* node!.status
          assert.isTrue(status.ready)
          assert.strictEqual(status.clusterSize, 1)
          assert.strictEqual(yield* wsrepOn(yield* connect(node!.url)), 1)
          if (process.getuid?.() === 0) {
            const pid = Option.getOrThrow(node!.pid)
            const uid = /^Uid:\s+(\d+)/m.exec(Fs.readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]
            assert.notStrictEqual(uid, "0", "the node does not run as root (rsync state transfer needs that)")
          }
        })
    )
  )

  it.live("a missing Galera provider fails at once, naming the package to install", () =>
    Effect.gen(function* () {
      const error = yield* Effect.flip(
        Effect.scoped(MysqlCluster.galera({ provider: "/nonexistent/libgalera_smm.so" }))
      )
      assert.strictEqual(error._tag, "MysqlServerNotInstalled")
      assert.include(error.message, "galera-4")
    })
  )

  it.live("invalid sizes are refused before anything starts", () =>
    Effect.gen(function* () {
      const replicas = yield* Effect.flip(Effect.scoped(MysqlCluster.replicated({ replicas: 0 })))
      assert.strictEqual(replicas._tag, "MysqlServerStartFailed")
      assert.include(replicas.message, "replicas must be")
      const nodes = yield* Effect.flip(Effect.scoped(MysqlCluster.galera({ nodes: 1.5 })))
      assert.include(nodes.message, "nodes must be")
    })
  )
})
