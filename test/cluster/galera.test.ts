import { assert, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine, Session } from "@sessionfx/session"
import * as SessionError from "@sessionfx/session/SessionError"
import * as MysqlCluster from "@sessionfx/testing/MysqlCluster"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import type * as Mysql from "mysql2/promise"
import type { DriverError } from "./support.js"
import { classify, connect, gtidOf, query, rows } from "./support.js"

const balance = (conn: Mysql.Connection, id: number) =>
  Effect.map(rows<{ readonly v: number }>(conn, "SELECT v FROM counters WHERE id = ?", [id]), (r) => r[0]?.v)

/** A connection whose reads wait until the node has applied everything the cluster committed before them. */
const causalConnection = (node: MysqlCluster.GaleraNode) =>
  Effect.tap(connect(node.url), (conn) => query(conn, "SET SESSION wsrep_sync_wait = 1"))

/** One unit of work: add `amount`, retried (a new transaction each time) while the failure is retryable. */
const increment = (conn: Mysql.Connection, id: number, amount: number, retries: { count: number }) =>
  Effect.gen(function* () {
    yield* query(conn, "BEGIN")
    yield* query(conn, "UPDATE counters SET v = v + ? WHERE id = ?", [amount, id])
    yield* query(conn, "COMMIT")
  }).pipe(
    Effect.tapError(() => Effect.ignore(query(conn, "ROLLBACK"))),
    Effect.retry({
      while: (e: DriverError) => {
        const retryable = SessionError.isRetryable(classify(e))
        if (retryable) retries.count++
        return retryable
      },
      times: 50
    })
  )

layer(MysqlCluster.layerGalera({ nodes: 3 }), { timeout: "200 seconds", excludeTestServices: true })(
  "Galera, 3 nodes",
  (it) => {
    it.scoped("the three nodes form one primary component, each synced and ready", () =>
      Effect.gen(function* () {
        const { nodes } = yield* MysqlCluster.GaleraCluster
        assert.strictEqual(nodes.length, 3)
        const uuids = new Set<string>()
        for (const node of nodes) {
          const status = yield* node.status
          assert.deepStrictEqual(
            { ready: status.ready, size: status.clusterSize, cluster: status.clusterStatus, state: status.state },
            { ready: true, size: 3, cluster: "Primary", state: "Synced" }
          )
          const conn = yield* connect(node.url)
          const [row] = yield* rows<{ readonly Value: string }>(
            conn,
            "SHOW GLOBAL STATUS LIKE 'wsrep_cluster_state_uuid'"
          )
          uuids.add(String(row?.Value))
        }
        assert.strictEqual(uuids.size, 1, `one cluster: ${[...uuids].join(", ")}`)
      })
    )

    it.scoped("a write committed on node 1 is read on node 3 (a causal read: wsrep_sync_wait = 1)", () =>
      Effect.gen(function* () {
        const { nodes } = yield* MysqlCluster.GaleraCluster
        const n1 = yield* connect(nodes[0]!.url)
        yield* query(n1, "CREATE TABLE counters (id INT PRIMARY KEY, v BIGINT NOT NULL)")
        yield* query(n1, "INSERT INTO counters VALUES (1, 0), (2, 0), (3, 0)")
        const n3 = yield* causalConnection(nodes[2]!)
        for (let i = 1; i <= 20; i++) {
          yield* query(n1, "UPDATE counters SET v = ? WHERE id = 1", [i])
          assert.strictEqual(yield* balance(n3, 1), i)
        }
      })
    )

    it.scoped(
      "a commit's OK packet carries its cluster-wide GTID; WSREP_SYNC_WAIT_UPTO_GTID on another node waits for it",
      () =>
        Effect.gen(function* () {
          const { nodes } = yield* MysqlCluster.GaleraCluster
          const n1 = yield* connect(nodes[0]!.url)
          yield* query(n1, "SET SESSION session_track_system_variables = 'last_gtid'")
          yield* query(n1, "BEGIN")
          yield* query(n1, "UPDATE counters SET v = 7 WHERE id = 1")
          const gtid = gtidOf(yield* query<Mysql.ResultSetHeader>(n1, "COMMIT"))
          assert.match(String(gtid), /^1-1-\d+$/) // wsrep_gtid_domain_id 1, the cluster's one server_id
          for (const node of nodes.slice(1)) {
            const conn = yield* connect(node.url)
            const [waited] = yield* rows<{ readonly r: unknown }>(conn, "SELECT WSREP_SYNC_WAIT_UPTO_GTID(?, 5) AS r", [
              gtid
            ])
            assert.strictEqual(Number(waited?.r), 1)
            assert.strictEqual(yield* balance(conn, 1), 7)
            const [position] = yield* rows<{ readonly pos: string }>(conn, "SELECT @@GLOBAL.gtid_binlog_pos AS pos")
            assert.include(String(position?.pos), String(gtid), "the same GTID on every node")
          }
          // a GTID the cluster has not reached: the wait ends with error 1205 (MASTER_GTID_WAIT returns -1 instead)
          const n2 = yield* connect(nodes[1]!.url)
          const timedOut = yield* Effect.flip(query(n2, "SELECT WSREP_SYNC_WAIT_UPTO_GTID('1-1-999999999', 0.2)"))
          assert.strictEqual(timedOut.errno, 1205, timedOut.message)
        })
    )

    it.scoped(
      "two nodes update the same row: the second COMMIT fails with 1213 (Deadlock, retryable), nothing of it applied",
      () =>
        Effect.gen(function* () {
          const { nodes } = yield* MysqlCluster.GaleraCluster
          const a = yield* causalConnection(nodes[0]!)
          const b = yield* causalConnection(nodes[1]!)
          const before = (yield* balance(a, 2))!
          yield* query(a, "BEGIN")
          yield* query(b, "BEGIN")
          yield* query(a, "UPDATE counters SET v = v + 1 WHERE id = 2")
          // no lock conflict on node 2: the row is locked only on node 1, so b's statement succeeds
          yield* query(b, "UPDATE counters SET v = v + 10 WHERE id = 2")
          yield* query(a, "COMMIT")
          const failed = yield* Effect.flip(query(b, "COMMIT"))
          assert.strictEqual(failed.errno, 1213, failed.message)
          const classified = classify(failed)
          assert.strictEqual(classified._tag, "Deadlock")
          assert.isTrue(SessionError.isRetryable(classified))
          // the server ended b's transaction; only a's increment is in, on every node
          const [open] = yield* rows<{ readonly t: number }>(b, "SELECT @@in_transaction AS t")
          assert.strictEqual(Number(open?.t), 0)
          for (const node of nodes) {
            const conn = yield* causalConnection(node)
            assert.strictEqual(yield* balance(conn, 2), before + 1)
          }
          // retried as a new unit, it applies
          yield* increment(b, 2, 10, { count: 0 })
          assert.strictEqual(yield* balance(a, 2), before + 11)
        })
    )

    it.scoped("concurrent increments through all three nodes converge when conflicts are retried", () =>
      Effect.gen(function* () {
        const { nodes } = yield* MysqlCluster.GaleraCluster
        const conns = yield* Effect.forEach(nodes, causalConnection)
        const before = (yield* balance(conns[0]!, 3))!
        const retries = { count: 0 }
        const perNode = 15
        yield* Effect.forEach(conns, (conn) => Effect.repeatN(increment(conn, 3, 1, retries), perNode - 1), {
          concurrency: "unbounded",
          discard: true
        })
        for (const conn of conns) {
          assert.strictEqual(yield* balance(conn, 3), before + 3 * perNode)
        }
        console.log(`galera: ${3 * perNode} increments from 3 nodes, ${retries.count} retried conflicts`)
      })
    )

    it.scoped(
      "through the Engine: one per node, Session.transact(…, { retry: true }) retries certification failures",
      () =>
        Effect.gen(function* () {
          const { nodes } = yield* MysqlCluster.GaleraCluster
          const n1 = yield* causalConnection(nodes[0]!)
          yield* query(n1, "INSERT INTO counters VALUES (4, 0)")
          const engines = yield* Effect.forEach(nodes, (node) =>
            Layer.build(Engine.layer({ url: node.url, pool: { size: 2 } }))
          )
          let attempts = 0
          const add = (amount: number, beforeCommit: Effect.Effect<void> = Effect.void) =>
            Session.transact(
              Effect.gen(function* () {
                attempts++
                const sql = yield* SqlClient.SqlClient
                yield* sql`UPDATE counters SET v = v + ${amount} WHERE id = 4`
                yield* beforeCommit
              }),
              { retry: true }
            )
          // a deterministic conflict: node 2's unit has updated the row when node 1's unit commits the same row
          const updated = yield* Deferred.make<void>()
          const committed = yield* Deferred.make<void>()
          const loser = yield* add(
            10,
            Effect.zipRight(Deferred.succeed(updated, undefined), Deferred.await(committed))
          ).pipe(Effect.provide(engines[1]!), Effect.fork)
          yield* Deferred.await(updated)
          yield* add(1).pipe(Effect.provide(engines[0]!))
          yield* Deferred.succeed(committed, undefined)
          yield* Fiber.join(loser)
          assert.strictEqual(attempts, 3, "node 2's unit failed its COMMIT once (1213) and was re-run")
          assert.strictEqual(yield* balance(n1, 4), 11)
          // concurrent units through all three engines converge
          attempts = 0
          const perNode = 10
          yield* Effect.forEach(
            engines,
            (engine) =>
              Effect.forEach(Array.from({ length: perNode }), () => add(1), { concurrency: 2, discard: true }).pipe(
                Effect.provide(engine)
              ),
            { concurrency: "unbounded", discard: true }
          )
          for (const node of nodes) {
            const conn = yield* causalConnection(node)
            assert.strictEqual(yield* balance(conn, 4), 11 + 3 * perNode)
          }
          assert.isAtLeast(attempts, 3 * perNode)
          console.log(`galera through the Engine: ${3 * perNode} units, ${attempts - 3 * perNode} retried`)
        })
    )

    it.scoped("a node cut off from the cluster answers 1047 (retryable) until it is back", () =>
      Effect.gen(function* () {
        const { nodes, waitForClusterSize } = yield* MysqlCluster.GaleraCluster
        const node = nodes[2]!
        const conn = yield* connect(node.url)
        const admin = yield* connect(node.admin.url)
        yield* query(conn, "BEGIN")
        yield* query(conn, "UPDATE counters SET v = v + 100 WHERE id = 1")
        yield* query(admin, "SET GLOBAL wsrep_provider_options = 'gmcast.isolate=1'")
        yield* Effect.addFinalizer(() =>
          Effect.ignore(query(admin, "SET GLOBAL wsrep_provider_options = 'gmcast.isolate=0'"))
        )
        yield* waitForClusterSize(2, "60 seconds")
        // the peers see the cut first; the isolated node notices on its own schedule: wait for it (bounded)
        const status = yield* node.status.pipe(
          Effect.tap(() => Effect.sleep("100 millis")),
          Effect.repeat({ until: (s) => !s.ready }),
          Effect.timeoutFail({
            duration: "30 seconds",
            onTimeout: () => new Error("the isolated node still says ready")
          })
        )
        assert.isFalse(status.ready)
        assert.strictEqual(status.clusterStatus, "non-Primary")
        const refused = yield* Effect.flip(query(conn, "COMMIT"))
        assert.strictEqual(refused.errno, 1047, refused.message)
        assert.match(refused.message, /WSREP has not yet prepared node/)
        const classified = classify(refused)
        assert.strictEqual(classified._tag, "SerializationFailure")
        assert.isTrue(SessionError.isRetryable(classified))
        assert.strictEqual((yield* Effect.flip(query(conn, "SELECT v FROM counters"))).errno, 1047)
        yield* query(admin, "SET GLOBAL wsrep_provider_options = 'gmcast.isolate=0'")
        yield* node.waitReady("60 seconds")
        yield* waitForClusterSize(3, "60 seconds")
        // the refused COMMIT applied nothing anywhere
        const n1 = yield* causalConnection(nodes[0]!)
        const [row] = yield* rows<{ readonly v: number }>(n1, "SELECT v FROM counters WHERE id = 1")
        const back = yield* causalConnection(node)
        assert.strictEqual(yield* balance(back, 1), row?.v)
        assert.isBelow(Number(row?.v), 100)
      })
    )

    it.scoped("a killed node leaves the cluster (size 2), the others keep writing, and it rejoins after restart", () =>
      Effect.gen(function* () {
        const { nodes, waitForClusterSize } = yield* MysqlCluster.GaleraCluster
        const victim = nodes[1]!
        // start from a whole cluster (the previous test may still be bringing a node back)
        yield* waitForClusterSize(3, "60 seconds")
        for (const n of nodes) yield* n.waitReady("60 seconds")
        yield* victim.kill
        yield* waitForClusterSize(2, "60 seconds")
        // the survivors form a new primary component: write once they say they are ready
        yield* nodes[0]!.waitReady("60 seconds")
        yield* nodes[2]!.waitReady("60 seconds")
        const n1 = yield* causalConnection(nodes[0]!)
        yield* query(n1, "UPDATE counters SET v = 4242 WHERE id = 1")
        const n3 = yield* causalConnection(nodes[2]!)
        assert.strictEqual(yield* balance(n3, 1), 4242)
        yield* victim.start
        yield* waitForClusterSize(3, "60 seconds")
        yield* victim.waitReady("60 seconds")
        const status = yield* victim.status
        assert.isTrue(status.ready)
        assert.strictEqual(status.state, "Synced")
        const back = yield* causalConnection(victim)
        assert.strictEqual(yield* balance(back, 1), 4242, "the writes made while it was down reached it")
        yield* query(back, "UPDATE counters SET v = 4343 WHERE id = 1")
        assert.strictEqual(yield* balance(n3, 1), 4343)
      })
    )
  }
)
