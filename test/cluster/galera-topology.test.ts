/**
 * The multi-primary Engine of issue 16 (`Engine.layer({ url: [n1, n2, n3] })`) against a real 3-node Galera cluster:
 * spreading, failover, certification conflicts retried, a node cut off. Where a unit ran is read twice: from
 * `Session.server` and from the node itself (`@@port`). Every test starts from, and leaves, a whole cluster.
 */
import { assert, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine, Session } from "@sessionfx/session"
import * as MysqlCluster from "@sessionfx/testing/MysqlCluster"
import type * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import type * as Mysql from "mysql2/promise"
import { connect, query, rows, waitUntil } from "./support.js"

type Services = Engine.Engine | SqlClient.SqlClient

const galera = MysqlCluster.GaleraCluster

/** A connection whose reads wait until the node has applied everything the cluster committed before them. */
const causalConnection = (node: MysqlCluster.GaleraNode) =>
  Effect.tap(connect(node.url), (conn) => query(conn, "SET SESSION wsrep_sync_wait = 1"))

/** All three nodes in one primary component, each synced and ready (what every test starts from and leaves). */
const whole = Effect.gen(function* () {
  const { nodes, waitForClusterSize } = yield* galera
  yield* waitForClusterSize(3, "90 seconds")
  for (const node of nodes) yield* node.waitReady("90 seconds")
})

const schema = Effect.gen(function* () {
  const { nodes } = yield* galera
  yield* whole
  const conn = yield* causalConnection(nodes[0]!)
  yield* query(conn, "CREATE TABLE IF NOT EXISTS counters (id INT PRIMARY KEY, v BIGINT NOT NULL)")
  yield* query(conn, "CREATE TABLE IF NOT EXISTS acks (id INT PRIMARY KEY, port INT NOT NULL)")
  return conn
})

interface Where {
  readonly server: string
  readonly port: number
}

/** Where the current unit runs: `Session.server` and the node's own `@@port`. */
const where = Effect.gen(function* () {
  const session = yield* Session.Session
  const sql = yield* SqlClient.SqlClient
  const [p] = yield* sql<{ readonly p: number }>`SELECT @@port AS p`
  const w: Where = { server: session.server, port: Number(p!.p) }
  return w
})

/** A unit that records row `id` (on whichever node it runs); returns where its last attempt ran. */
const ack = (id: number, options: Session.Options = {}) =>
  Session.transact(
    Effect.gen(function* () {
      const w = yield* where
      const sql = yield* SqlClient.SqlClient
      yield* sql`INSERT INTO acks (id, port) VALUES (${id}, ${w.port})`
      return w
    }),
    options
  )

const brief = (servers: ReadonlyArray<Engine.ServerStatus>) =>
  servers.map((s) => ({ name: s.name, role: s.role, healthy: s.healthy, reason: s.reason, inUse: s.stats.inUse }))

let nextId = 0
const freshIds = (n: number) => Array.from({ length: n }, () => ++nextId)
let engines = 0

interface Nodes {
  readonly name: string
  readonly ctx: Context.Context<Services>
  readonly servers: Effect.Effect<ReadonlyArray<Engine.ServerStatus>>
  /** The server name of each node, in `nodes` order (learned from where units ran). */
  readonly names: Map<number, string>
}

/** An Engine on the three nodes for the test's scope; returns once every node is healthy. */
const multiPrimary = (options: Partial<Engine.EngineOptions> = {}, order?: ReadonlyArray<MysqlCluster.GaleraNode>) =>
  Effect.gen(function* () {
    const nodes = order ?? (yield* galera).nodes
    const name = `galera-topology-${++engines}`
    const ctx = yield* Layer.build(
      Engine.layer({
        name,
        connectTimeout: "5 seconds",
        healthCheckInterval: "500 millis",
        ...options,
        url: nodes.map((n) => n.url),
        pool: { size: 4, acquireTimeout: "20 seconds", ...options.pool }
      })
    )
    const servers = Effect.provide(Engine.servers, ctx)
    const ready = yield* waitUntil(
      "every node of a new Engine healthy",
      Effect.map(servers, brief),
      (ss) => ss.length === 3 && ss.every((s) => s.healthy),
      { timeout: "30 seconds" }
    )
    assert.deepStrictEqual(
      ready.map((s) => s.role),
      ["node", "node", "node"]
    )
    assert.strictEqual(new Set(ready.map((s) => s.name)).size, 3, "distinct names")
    const t: Nodes = { name, ctx, servers, names: new Map() }
    return t
  })

/** Checks that `seen` agrees with `Engine.servers` (one port per name) and records each node's name. */
const learn = (t: Nodes, seen: ReadonlyArray<Where>) =>
  Effect.gen(function* () {
    const { nodes } = yield* galera
    const servers = yield* t.servers
    for (const w of seen) {
      const status = servers.find((s) => s.name === w.server)
      assert.isDefined(status, `Session.server "${w.server}" is one of Engine.servers (${servers.map((s) => s.name)})`)
      assert.strictEqual(status!.role, "node")
      const index = nodes.findIndex((n) => n.port === w.port)
      assert.isAtLeast(index, 0, `port ${w.port} is a node's`)
      const known = t.names.get(index)
      if (known === undefined) t.names.set(index, w.server)
      else assert.strictEqual(w.server, known, `node ${index + 1} has one name`)
    }
  })

const countBy = (seen: ReadonlyArray<Where>) => {
  const counts = new Map<number, number>()
  for (const w of seen) counts.set(w.port, (counts.get(w.port) ?? 0) + 1)
  return counts
}

const storedAcks = (conn: Mysql.Connection, ids: ReadonlyArray<number>) =>
  Effect.map(
    rows<{ readonly id: number }>(conn, "SELECT id FROM acks WHERE id BETWEEN ? AND ?", [
      Math.min(...ids),
      Math.max(...ids)
    ]),
    (r) => r.map((x) => Number(x.id)).sort((a, b) => a - b)
  )

layer(MysqlCluster.layerGalera({ nodes: 3 }), { timeout: "240 seconds", excludeTestServices: true })(
  "Engine topology: Galera, 3 nodes",
  (it) => {
    it.scoped("url: [n1, n2, n3] with 'spread': 30 concurrent units use every node", () =>
      Effect.gen(function* () {
        const conn = yield* schema
        const t = yield* multiPrimary({ loadBalancing: "spread", pool: { size: 12 } })
        const ids = freshIds(30)
        let holding = 0
        const all = yield* Deferred.make<void>()
        const unit = (id: number) =>
          Session.transact(
            Effect.gen(function* () {
              const w = yield* where
              // every unit holds its connection until all 30 do: the choice of node sees the others in use
              if (++holding === ids.length) yield* Deferred.succeed(all, undefined)
              yield* Deferred.await(all).pipe(
                Effect.timeoutFail({
                  duration: "30 seconds",
                  onTimeout: () => new Error(`only ${holding} of ${ids.length} units held a connection at once`)
                })
              )
              const sql = yield* SqlClient.SqlClient
              yield* sql`INSERT INTO acks (id, port) VALUES (${id}, ${w.port})`
              return w
            })
          )
        const seen = yield* Effect.forEach(ids, unit, { concurrency: "unbounded" }).pipe(Effect.provide(t.ctx))
        yield* learn(t, seen)
        const counts = countBy(seen)
        console.log(`galera topology, spread: ${JSON.stringify([...counts])}`)
        assert.strictEqual(new Set(seen.map((w) => w.server)).size, 3, "all three nodes took units")
        for (const [port, n] of counts) assert.isAtLeast(n, 5, `node on port ${port}: ${n} of 30`)
        assert.deepStrictEqual(yield* storedAcks(conn, ids), ids, "every unit's row is stored")
      })
    )

    it.scoped(
      "certification conflicts between nodes are retried: a forced conflict re-runs once, 30 concurrent increments are exact",
      () =>
        Effect.gen(function* () {
          const { nodes } = yield* galera
          const conn = yield* schema
          const [id] = freshIds(1)
          yield* query(conn, "INSERT INTO counters VALUES (?, 0)", [id])
          const t = yield* multiPrimary({ loadBalancing: "spread" })
          let attempts = 0
          const add = (amount: number, beforeCommit: (w: Where) => Effect.Effect<void> = () => Effect.void) =>
            Session.transact(
              Effect.gen(function* () {
                attempts++
                const w = yield* where
                const sql = yield* SqlClient.SqlClient
                yield* sql`UPDATE counters SET v = v + ${amount} WHERE id = ${id}`
                yield* beforeCommit(w)
                return w
              }),
              { retry: true }
            )
          // the loser holds a connection on one node with the row updated; 'spread' sends the winner to another
          const updated = yield* Deferred.make<Where>()
          const committed = yield* Deferred.make<void>()
          const loser = yield* add(10, (w) =>
            Effect.zipRight(Deferred.succeed(updated, w), Deferred.await(committed))
          ).pipe(Effect.provide(t.ctx), Effect.fork)
          const first = yield* Deferred.await(updated)
          const winner = yield* add(1).pipe(Effect.provide(t.ctx))
          yield* Deferred.succeed(committed, undefined)
          yield* Fiber.join(loser)
          assert.notStrictEqual(winner.port, first.port, "'spread': the winner ran on a node with nothing in use")
          assert.strictEqual(attempts, 3, "the loser's COMMIT failed certification once (1213) and was re-run")
          const check = yield* causalConnection(nodes[2]!)
          const total = (n: Mysql.Connection) =>
            Effect.map(rows<{ readonly v: number }>(n, "SELECT v FROM counters WHERE id = ?", [id]), (r) =>
              Number(r[0]?.v)
            )
          assert.strictEqual(yield* total(check), 11)

          attempts = 0
          const seen = yield* Effect.forEach(Array.from({ length: 30 }), () => add(1), {
            concurrency: "unbounded"
          }).pipe(Effect.provide(t.ctx))
          for (const node of nodes) {
            assert.strictEqual(yield* total(yield* causalConnection(node)), 41, `node ${node.port}: the total is exact`)
          }
          assert.isAtLeast(attempts, 30)
          console.log(
            `galera topology: 30 concurrent increments, ${attempts - 30} re-runs, nodes ${JSON.stringify([...countBy(seen)])}`
          )
        })
    )

    it.scoped(
      "read-your-writes on Galera: a node that has not applied the token is waited on, then passed over; an unreachable token waits about readYourWritesTimeout",
      () =>
        Effect.gen(function* () {
          const { nodes } = yield* galera
          const conn = yield* schema
          const [n1, n2, n3] = nodes
          const [id] = freshIds(1)
          yield* query(conn, "INSERT INTO counters VALUES (?, 1)", [id])
          // writes go to node 1; reads to node 3 first ('failover' in that order)
          const writes = yield* multiPrimary({ loadBalancing: "failover" }, [n1!, n2!, n3!])
          const reads = yield* multiPrimary(
            { loadBalancing: "failover", readYourWritesTimeout: "500 millis", healthCheckInterval: "1 minute" },
            [n3!, n1!, n2!]
          )
          const value = (options: Session.Options) =>
            Session.transact(
              Effect.gen(function* () {
                const w = yield* where
                const sql = yield* SqlClient.SqlClient
                const [row] = yield* sql<{ readonly v: number }>`SELECT v FROM counters WHERE id = ${id}`
                return { ...w, v: Number(row?.v) }
              }),
              { readOnly: true, ...options }
            ).pipe(Effect.provide(reads.ctx))
          yield* waitUntil("node 3 has the row", value({ consistency: "replica" }), (r) => r.v === 1)
          // node 3 stops applying what the cluster commits: FLUSH TABLES WITH READ LOCK pauses its applier
          const lock = yield* connect(n3!.admin.url)
          yield* query(lock, "FLUSH TABLES WITH READ LOCK")
          yield* Effect.addFinalizer(() => Effect.ignore(query(lock, "UNLOCK TABLES")))
          const token = yield* Session.transact(
            Effect.flatMap(SqlClient.SqlClient, (sql) => sql`UPDATE counters SET v = 2 WHERE id = ${id}`)
          ).pipe(
            Effect.zipRight(Session.causalityToken),
            Effect.provide(writes.ctx),
            Effect.timeoutFail({ duration: "20 seconds", onTimeout: () => new Error("the write on node 1 hung") })
          )
          assert.isTrue(Option.isSome(token), "a Galera commit yields a token")
          const stale = yield* value({ consistency: "replica" })
          assert.deepStrictEqual([stale.port, stale.v], [n3!.port, 1], "node 3 lags: no wait, a stale read")
          const [took, fresh] = yield* Effect.timed(value({ after: Option.getOrThrow(token) }))
          assert.strictEqual(fresh.v, 2, "with the token the read sees the write")
          assert.notStrictEqual(fresh.port, n3!.port, "on another node, after the wait on node 3 timed out")
          assert.isAtLeast(Duration.toMillis(took), 400, "it waited on node 3 first")
          assert.isBelow(Duration.toMillis(took), 2000, "about readYourWritesTimeout (500 ms), not more")

          const unreachable = Effect.orDie(Schema.decodeUnknown(Session.CausalityToken)("1-1-999999999"))
          const [tookAll, outcome] = yield* Effect.timed(Effect.exit(value({ after: yield* unreachable })))
          console.log(
            `galera topology: an unreachable token: ${Duration.toMillis(tookAll)} ms, ${Exit.isSuccess(outcome) ? "read" : String(outcome.cause)}`
          )
          assert.isBelow(
            Duration.toMillis(tookAll),
            2000,
            "a token no node reaches: the unit waits about readYourWritesTimeout (500 ms; 1 s allowed: the server takes whole seconds), not that once per node"
          )
          // no node holds it (there is no primary to fall back to): a retryable failure that says so, the unit not run
          assert.isTrue(Exit.isFailure(outcome), "a token no node has applied is not read past")
          const failure = Exit.isFailure(outcome) ? Cause.failureOption(outcome.cause) : Option.none()
          assert.isTrue(
            Option.isSome(failure),
            `a typed failure: ${Exit.isFailure(outcome) ? String(outcome.cause) : ""}`
          )
          const error = Option.getOrThrow(failure) as { _tag?: string; retryable?: boolean; message?: string }
          assert.strictEqual(error._tag, "ConnectionError")
          assert.isTrue(error.retryable)
          assert.include(error.message, "causality token 1-1-999999999")
          const servers = brief(yield* reads.servers)
          assert.isTrue(
            servers.every((s) => s.healthy),
            `a wait that timed out evicts nothing: ${JSON.stringify(servers)}`
          )
          yield* query(lock, "UNLOCK TABLES")
          yield* waitUntil("node 3 caught up", value({ consistency: "replica" }), (r) => r.v === 2, {
            timeout: "30 seconds"
          })
          yield* whole
        })
    )

    it.scoped(
      "a node cut off (gmcast.isolate=1) is out within ~10 s, units with retry keep succeeding on its peers (a COMMIT the cut caught: outcome unknown, never a duplicate; acknowledged = stored), and it is back after isolate=0",
      () =>
        Effect.gen(function* () {
          const { nodes, waitForClusterSize } = yield* galera
          yield* schema
          const cut = nodes[2]!
          const t = yield* multiPrimary({ loadBalancing: "spread" })
          const admin = yield* connect(cut.admin.url)
          yield* Effect.addFinalizer(() =>
            Effect.orDie(
              Effect.gen(function* () {
                yield* query(admin, "SET GLOBAL wsrep_provider_options = 'gmcast.isolate=0'")
                yield* waitForClusterSize(3, "90 seconds")
                yield* cut.waitReady("90 seconds")
              })
            )
          )
          // writers: three fibers of units with retry, each a row of its own, until told to stop. A COMMIT on the node
          // being cut may fail with its outcome unknown (its peers may have applied it: 1180, "Not connected to
          // Primary Component"): that unit ends in CommitOutcomeUnknown, never retried into a duplicate
          const acked: Array<{ readonly id: number; readonly where: Where }> = []
          const failed: Array<{ readonly id: number; readonly error: string }> = []
          let stop = false
          const writer = Effect.gen(function* () {
            while (!stop) {
              const [id] = freshIds(1)
              const exit = yield* Effect.exit(ack(id!, { retry: true }))
              if (Exit.isSuccess(exit)) acked.push({ id: id!, where: exit.value })
              else failed.push({ id: id!, error: String(Exit.isFailure(exit) ? exit.cause : "") })
            }
          }).pipe(Effect.provide(t.ctx))
          const writers = yield* Effect.fork(Effect.all([writer, writer, writer], { concurrency: "unbounded" }))
          yield* waitUntil(
            "units on every node before the cut",
            Effect.sync(() => new Set(acked.map((a) => a.where.port)).size),
            (n) => n === 3,
            { timeout: "30 seconds" }
          )
          yield* learn(
            t,
            acked.map((a) => a.where)
          )
          const cutName = t.names.get(2)!

          yield* query(admin, "SET GLOBAL wsrep_provider_options = 'gmcast.isolate=1'")
          const [took, servers] = yield* Effect.timed(
            waitUntil(
              "the cut-off node reported unhealthy",
              Effect.map(t.servers, brief),
              (ss) => ss.some((s) => s.name === cutName && !s.healthy),
              { timeout: "15 seconds" }
            )
          )
          console.log(`galera topology: a cut-off node out after ${Duration.toMillis(took)} ms`)
          assert.isAtMost(Duration.toMillis(took), 12_000, "out within ~10 s")
          const out = servers.find((s) => s.name === cutName)!
          assert.isAbove(out.reason?.length ?? 0, 0, "with a reason")
          assert.isTrue(
            servers.filter((s) => s.name !== cutName).every((s) => s.healthy),
            JSON.stringify(servers)
          )

          // from now on no unit goes to it: each succeeds at its first attempt, on a peer
          let attempts = 0
          for (const id of freshIds(15)) {
            const w = yield* Session.transact(
              Effect.gen(function* () {
                attempts++
                const w = yield* where
                const sql = yield* SqlClient.SqlClient
                yield* sql`INSERT INTO acks (id, port) VALUES (${id}, ${w.port})`
                return w
              }),
              { retry: true }
            ).pipe(Effect.provide(t.ctx))
            assert.notStrictEqual(w.port, cut.port)
            acked.push({ id, where: w })
          }
          assert.strictEqual(attempts, 15, "an evicted node is not tried")
          const mark = acked.length
          yield* waitUntil(
            "the writers carry on",
            Effect.sync(() => acked.length),
            (n) => n >= mark + 15,
            { timeout: "30 seconds" }
          )
          stop = true
          yield* Fiber.join(writers)
          assert.deepStrictEqual(
            failed.filter((f) => !f.error.startsWith("CommitOutcomeUnknown")),
            [],
            "units with retry keep succeeding (or end in CommitOutcomeUnknown when the cut caught their COMMIT)"
          )
          const ids = acked.map((a) => a.id).sort((a, b) => a - b)
          const check = yield* causalConnection(nodes[0]!)
          assert.deepStrictEqual(yield* storedAcks(check, ids), ids, "acknowledged = stored")
          console.log(
            `galera topology, a node cut off: ${ids.length} acknowledged, ${ids.length} stored, ${failed.length} with their outcome unknown`
          )

          yield* query(admin, "SET GLOBAL wsrep_provider_options = 'gmcast.isolate=0'")
          yield* waitForClusterSize(3, "90 seconds")
          yield* cut.waitReady("90 seconds")
          yield* waitUntil(
            "the node back in rotation",
            Effect.map(t.servers, brief),
            (ss) => ss.every((s) => s.healthy),
            { timeout: "15 seconds" }
          )
        })
    )

    it.scoped(
      "loadBalancing 'failover': units go to the first node, to the second while the first is down, and back to the first",
      () =>
        Effect.gen(function* () {
          const { nodes, waitForClusterSize } = yield* galera
          yield* schema
          const [first, second] = nodes
          const t = yield* multiPrimary({ loadBalancing: "failover" })
          const all: Array<number> = []
          const units = (n: number, concurrency: number) => {
            const ids = freshIds(n)
            all.push(...ids)
            return Effect.forEach(ids, (id) => ack(id, { retry: true }), { concurrency }).pipe(Effect.provide(t.ctx))
          }
          const before = yield* units(10, 4)
          yield* learn(t, before)
          for (const w of before) assert.strictEqual(w.port, first!.port, "every unit on the first node")
          const firstName = t.names.get(0)!

          let restarted = false
          yield* Effect.addFinalizer(() =>
            restarted
              ? Effect.void
              : Effect.orDie(
                  Effect.gen(function* () {
                    yield* first!.start
                    yield* waitForClusterSize(3, "90 seconds")
                    yield* first!.waitReady("90 seconds")
                  })
                )
          )
          yield* first!.kill
          // a unit right after the kill: its connection fails, the node is taken out, the unit re-runs on the next
          const [right] = yield* units(1, 1)
          assert.strictEqual(right!.port, second!.port, "the first unit after the kill ran on the second node")
          const down = yield* waitUntil(
            "the killed node reported unhealthy",
            Effect.map(t.servers, brief),
            (ss) => ss.some((s) => s.name === firstName && !s.healthy),
            { timeout: "10 seconds" }
          )
          assert.isTrue(
            down.filter((s) => s.name !== firstName).every((s) => s.healthy),
            JSON.stringify(down)
          )
          const during = yield* units(10, 4)
          for (const w of during) assert.strictEqual(w.port, second!.port, "every unit on the second node")
          yield* learn(t, during)

          yield* first!.start
          restarted = true
          yield* waitForClusterSize(3, "90 seconds")
          yield* first!.waitReady("90 seconds")
          yield* waitUntil(
            "the first node back in rotation",
            Effect.map(t.servers, brief),
            (ss) => ss.every((s) => s.healthy),
            { timeout: "15 seconds" }
          )
          const after = yield* units(5, 1)
          for (const w of after) assert.strictEqual(w.port, first!.port, "back on the first node")
          yield* learn(t, after)
          const check = yield* causalConnection(nodes[2]!)
          const ids = [...all].sort((a, b) => a - b)
          assert.deepStrictEqual(yield* storedAcks(check, ids), ids, "every acknowledged unit is stored")
        })
    )
  }
)
