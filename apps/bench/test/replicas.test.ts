import { assert, layer } from "@effect/vitest"
import { MysqlCluster } from "@sessionfx/testing"
import * as Effect from "effect/Effect"
import { clusterOf, markdown, runReplicas } from "../src/replicas.js"

// excludeTestServices: the live clock (the runs are timed)
layer(MysqlCluster.layerReplicated({ replicas: 2 }), { timeout: 120_000, excludeTestServices: true })(
  "replicas mode",
  (it) => {
    it.effect(
      "reads go to the replicas, read-your-writes reads nothing stale, every configuration conserves money",
      () =>
        Effect.gen(function* () {
          const servers = yield* MysqlCluster.ReplicatedServers
          const r = yield* Effect.promise(() =>
            runReplicas(clusterOf(servers), {
              clients: 8,
              seconds: 1,
              warmupSeconds: 0,
              reps: 1,
              sharedAccounts: 50,
              ownAccounts: 2,
              readPercent: 80,
              ownReadPercent: 80,
              lagSeconds: 1,
              seed: 5
            })
          )
          assert.deepStrictEqual(r.problems, [])
          assert.isTrue(r.ok)
          assert.deepStrictEqual(
            r.runs.map((x) => x.config),
            ["single", "replica", "read-your-writes", "replica-lagging", "read-your-writes-lagging"]
          )
          for (const run of r.runs) {
            assert.isAbove(run.transfers, 0, run.config)
            assert.isAbove(run.checkedReads, 0, run.config)
            assert.isTrue(run.conservation.ok, JSON.stringify(run.conservation))
            assert.isTrue(run.replicasConverged, run.config)
          }
          const [single, replica, ryw, replicaLagging, rywLagging] = r.runs
          assert.strictEqual(single!.readsOnReplicas, 0)
          assert.strictEqual(single!.staleReads, 0)
          assert.strictEqual(ryw!.staleReads, 0)
          assert.isAbove(replica!.readsOnReplicas, 0)
          assert.isAbove(ryw!.readsOnReplicas + ryw!.readsOnPrimary, 0)
          // replicas a second behind: reading them without waiting shows the client's own writes missing (the
          // check can fail), waiting for the token never does
          assert.isAbove(replicaLagging!.staleReads, 0)
          assert.strictEqual(rywLagging!.staleReads, 0)
          assert.isAbove(rywLagging!.waits.count, 0)
          assert.include(markdown(r), "| (c) primary + replicas, read-your-writes |")
        })
    )
  }
)
