/**
 * Read replicas on PostgreSQL against a real primary and two streaming replicas (`PgServer.layerReplicated`): the
 * harness (pause / resume replay, stop / start), the commit's WAL position as the causality token (one round trip,
 * through a latency proxy), read-your-writes on a lagging replica (wait, fall back, or served once it catches up),
 * consistency "replica" reading stale data, replicas taken out of rotation, and tokens the topology never produced.
 * The PostgreSQL side of `replication.test.ts` and `topology.test.ts`. Where a unit ran is read twice: from
 * `Session.server` and from the server itself (`inet_server_port()`).
 */
import { assert, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine, Session } from "@sessionfx/session"
import type * as SessionError from "@sessionfx/session/SessionError"
import * as FaultProxy from "@sessionfx/testing/FaultProxy"
import * as PgServer from "@sessionfx/testing/PgServer"
import * as Cause from "effect/Cause"
import type * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import { metricCount, waitUntil } from "./support.js"

type Token = typeof Session.CausalityToken.Type
type Services = Engine.Engine | SqlClient.SqlClient

const cluster = PgServer.ReplicatedServers

interface Seen {
  readonly server: string
  readonly port: number
  readonly v: number | null
}

/** Where the unit runs, and the value of row `id` there. */
const look = (id: number) =>
  Effect.gen(function* () {
    const session = yield* Session.Session
    const sql = yield* SqlClient.SqlClient
    const [p] = yield* sql<{ readonly p: number }>`SELECT inet_server_port() AS p`
    const found = yield* sql<{ readonly v: number }>`SELECT v FROM kv WHERE id = ${id}`
    const seen: Seen = { server: session.server, port: Number(p!.p), v: found.length > 0 ? Number(found[0]!.v) : null }
    return seen
  })

const read = (id: number, options: Session.Options = {}) => Session.transact(look(id), { readOnly: true, ...options })

const upsert = (id: number, v: number) =>
  Effect.flatMap(
    SqlClient.SqlClient,
    (sql) => sql`INSERT INTO kv (id, v) VALUES (${id}, ${v}) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v`
  )

const write = (id: number, v: number) => Session.transact(Effect.zipRight(upsert(id, v), look(id)))

const tokenNow: Effect.Effect<string | undefined, never, Engine.Engine> = Effect.map(Session.causalityToken, (t) =>
  Option.isSome(t) ? String(t.value) : undefined
)

const decodeToken = (s: string): Effect.Effect<Token> => Effect.orDie(Schema.decodeUnknown(Session.CausalityToken)(s))

/** `system_identifier:LSN` → the LSN as a number (for ordering). */
const lsnOf = (token: string | undefined): bigint => {
  const m = /^\d+:([0-9A-F]+)\/([0-9A-F]+)$/i.exec(token ?? "")
  return m === null ? -1n : (BigInt(`0x${m[1]}`) << 32n) + BigInt(`0x${m[2]}`)
}

const fallbacks = (engine: string, reason: "noHealthyReplica" | "waitTimeout" | "replicaError" | "lagging") =>
  metricCount("sessionfx_read_fallbacks_total", { engine, reason })

const brief = (servers: ReadonlyArray<Engine.ServerStatus>) =>
  servers.map((s) => ({ name: s.name, role: s.role, healthy: s.healthy, reason: s.reason, lagMs: s.lagMs }))

let nextId = 0
const freshId = () => ++nextId

/** Rows of one statement on a single-server Engine of `url` (the admin's, a replica's): the test's own probe. */
const direct = <A extends object>(url: Redacted.Redacted<string>, text: string) =>
  Effect.scoped(
    Effect.flatMap(Layer.build(Engine.layer({ url, pool: { size: 1 } })), (ctx) =>
      Effect.provide(
        Effect.flatMap(SqlClient.SqlClient, (sql) => sql.unsafe<A>(text)),
        ctx
      )
    )
  )

/** The table every test uses, on the primary and replayed on both replicas. */
const schema = Effect.gen(function* () {
  const { primary, replicas } = yield* cluster
  yield* direct(primary.url, "CREATE TABLE IF NOT EXISTS kv (id int PRIMARY KEY, v int NOT NULL)")
  for (const r of replicas) assert.isTrue(yield* r.waitCaughtUp("20 seconds"), `replica ${r.port} caught up`)
})

interface Topology {
  readonly name: string
  readonly ctx: Context.Context<Services>
}

let engines = 0

/** An Engine on the primary (or `url`) and both replicas for the test's scope; returns once every server is healthy. */
const topology = (options: Partial<Engine.EngineOptions> = {}) =>
  Effect.gen(function* () {
    const { primary, replicas } = yield* cluster
    const name = `pg-topology-${++engines}`
    const ctx = yield* Layer.build(
      Engine.layer({
        name,
        connectTimeout: "5 seconds",
        killGrace: "1 second",
        healthCheckInterval: "200 millis",
        url: primary.url,
        ...options,
        replicas: replicas.map((r) => r.url),
        pool: { size: 2, acquireTimeout: "10 seconds", ...options.pool }
      })
    )
    yield* waitUntil(
      "every server of a new Engine healthy",
      Effect.map(Effect.provide(Engine.servers, ctx), brief),
      (ss) => ss.length === 1 + replicas.length && ss.every((s) => s.healthy),
      { timeout: "20 seconds" }
    )
    const t: Topology = { name, ctx }
    return t
  })

const withTopology = <A, E, R>(options: Partial<Engine.EngineOptions>, body: (t: Topology) => Effect.Effect<A, E, R>) =>
  Effect.flatMap(topology(options), (t) => Effect.provide(body(t), t.ctx))

/** Pauses replay on every replica (WAL arrives, nothing is replayed) until the scope closes. */
const lagAll = Effect.gen(function* () {
  const { replicas } = yield* cluster
  yield* Effect.addFinalizer(() =>
    Effect.orDie(
      Effect.forEach(replicas, (r) => Effect.zipRight(r.resumeReplay, r.waitCaughtUp("20 seconds")), { discard: true })
    )
  )
  for (const r of replicas) yield* r.pauseReplay
})

layer(PgServer.layerReplicated({ replicas: 2 }), { timeout: "120 seconds", excludeTestServices: true })(
  "PostgreSQL: a primary and 2 streaming replicas",
  (it) => {
    it.scoped("the harness: replicas stream and refuse writes; a paused replay lags, resumed it catches up", () =>
      Effect.gen(function* () {
        const { primary, replicas } = yield* cluster
        yield* schema
        assert.strictEqual(replicas.length, 2)
        for (const r of replicas) {
          const status = yield* r.replicationStatus
          assert.isTrue(status.inRecovery, `replica ${r.port} is a standby`)
          assert.strictEqual(status.receiver, "streaming")
          assert.isFalse(status.replayPaused)
          assert.notStrictEqual(r.port, primary.port)
          const refused = yield* Effect.flip(direct(r.url, "INSERT INTO kv VALUES (0, 0)"))
          assert.strictEqual(
            (refused.cause as { _tag?: string } | undefined)?._tag ?? refused._tag,
            "ReadOnlyTransaction",
            String(refused)
          )
        }
        const [lagging, healthy] = replicas
        yield* direct(primary.url, "INSERT INTO kv VALUES (-1, 1) ON CONFLICT (id) DO UPDATE SET v = 1")
        assert.isTrue(yield* lagging!.waitCaughtUp("10 seconds"))
        yield* lagging!.pauseReplay
        yield* Effect.addFinalizer(() => Effect.orDie(lagging!.resumeReplay))
        assert.isTrue((yield* lagging!.replicationStatus).replayPaused)
        yield* direct(primary.url, "UPDATE kv SET v = 2 WHERE id = -1")
        assert.isFalse(yield* lagging!.waitCaughtUp("300 millis"), "paused: it does not replay")
        const stale = yield* direct<{ v: number }>(lagging!.url, "SELECT v FROM kv WHERE id = -1")
        assert.strictEqual(stale[0]?.v, 1, "a stale read")
        assert.isTrue(yield* healthy!.waitCaughtUp("10 seconds"), "the other replica is not affected")
        assert.strictEqual((yield* direct<{ v: number }>(healthy!.url, "SELECT v FROM kv WHERE id = -1"))[0]?.v, 2)
        yield* lagging!.resumeReplay
        assert.isTrue(yield* lagging!.waitCaughtUp("10 seconds"))
        assert.strictEqual((yield* direct<{ v: number }>(lagging!.url, "SELECT v FROM kv WHERE id = -1"))[0]?.v, 2)
        // stopped, it misses writes; started, it streams again and catches up
        yield* healthy!.stop
        yield* direct(primary.url, "UPDATE kv SET v = 3 WHERE id = -1")
        yield* healthy!.start
        assert.isTrue(yield* healthy!.waitCaughtUp("20 seconds"))
        assert.strictEqual((yield* direct<{ v: number }>(healthy!.url, "SELECT v FROM kv WHERE id = -1"))[0]?.v, 3)
        yield* waitUntil("streaming again", healthy!.replicationStatus, (s) => s.receiver === "streaming")
      })
    )

    it.scoped(
      "routing and the causality token: writes and autocommit on the primary, read-only units on replicas; a writing unit's token is system_identifier:LSN, read-only and rolled-back units yield none",
      () =>
        Effect.gen(function* () {
          const { primary, replicas } = yield* cluster
          yield* schema
          const [sys] = yield* direct<{ s: string }>(
            primary.url,
            "SELECT system_identifier::text AS s FROM pg_control_system()"
          )
          yield* withTopology({}, () =>
            Effect.gen(function* () {
              const servers = yield* waitUntil("every server's position known", Engine.servers, (ss) =>
                ss.every((s) => s.position !== undefined && s.position !== "")
              )
              assert.deepStrictEqual(servers.map((s) => s.role).sort(), ["primary", "replica", "replica"])
              for (const s of servers) assert.match(s.position ?? "", /^\d+:[0-9A-F]+\/[0-9A-F]+$/, s.name)
              const id = freshId()
              assert.isUndefined(yield* tokenNow)
              const w = yield* write(id, 1)
              assert.strictEqual(w.port, primary.port, "a writing unit runs on the primary")
              const t1 = yield* tokenNow
              assert.match(t1 ?? "", /^\d+:[0-9A-F]+\/[0-9A-F]+$/, "a committed writing unit yields a WAL position")
              assert.strictEqual(t1!.split(":")[0], sys!.s, "of this cluster (its system_identifier)")
              assert.notMatch(t1!, /^\d+-\d+-\d+$/, "never mistaken for a MariaDB GTID")
              assert.strictEqual(String(yield* decodeToken(t1!)), t1)
              const fresh = yield* read(id)
              assert.include(
                replicas.map((r) => r.port),
                fresh.port,
                "a read-only unit runs on a replica"
              )
              assert.strictEqual(fresh.v, 1, "and sees the fiber's write")
              yield* read(id, { consistency: "replica" })
              const strong = yield* read(id, { consistency: "primary" })
              assert.strictEqual(strong.port, primary.port)
              assert.strictEqual(yield* tokenNow, t1, "read-only units yield no token (on a replica or the primary)")
              yield* Effect.flip(Session.transact(Effect.zipRight(upsert(id, 99), Effect.fail("boom" as const))))
              assert.strictEqual(yield* tokenNow, t1, "a rolled-back unit yields none")
              yield* Session.transact(
                Effect.flatMap(SqlClient.SqlClient, (sql) => sql`SELECT v FROM kv WHERE id = ${id}`)
              )
              assert.strictEqual(yield* tokenNow, t1, "a unit that only read, on the primary, yields none")

              const sql = yield* SqlClient.SqlClient
              const [auto] = yield* sql<{ readonly p: number }>`SELECT inet_server_port() AS p`
              assert.strictEqual(Number(auto!.p), primary.port, "an autocommit statement runs on the primary")
              assert.strictEqual(yield* tokenNow, t1, "an autocommit read yields none")
              yield* sql`UPDATE kv SET v = 5 WHERE id = ${id}`
              const t2 = yield* tokenNow
              assert.isAbove(Number(lsnOf(t2) - lsnOf(t1)), 0, "an autocommit write advances it")
              assert.strictEqual((yield* read(id)).v, 5, "and the next read sees it")

              const tokens: Array<bigint> = []
              for (let i = 0; i < 10; i++) {
                yield* write(id, 10 + i)
                tokens.push(lsnOf(yield* tokenNow))
              }
              for (let i = 1; i < tokens.length; i++) assert.isTrue(tokens[i]! > tokens[i - 1]!, `token ${i + 1}`)
              // an asynchronous commit (synchronous_commit off for the unit): its token is the insert position, and
              // a read waits until the WAL writer has flushed and sent it (wal_writer_delay, 200 ms)
              yield* Session.transact(
                Effect.gen(function* () {
                  const sql = yield* SqlClient.SqlClient
                  yield* sql`SET LOCAL synchronous_commit = off`
                  yield* upsert(id, 42)
                })
              )
              const async = yield* tokenNow
              assert.isTrue(lsnOf(async) > tokens[tokens.length - 1]!)
              assert.strictEqual((yield* read(id)).v, 42)
            })
          )
        })
    )

    it.scoped(
      "the token costs no round trip: a writing unit sends as many requests (Sync / Query, each answered by one ReadyForQuery) with replicas as without",
      () =>
        Effect.gen(function* () {
          const { primary } = yield* cluster
          yield* schema
          const proxy = yield* FaultProxy.make({ target: { host: primary.host, port: primary.port } })
          const url = proxy.urlFor(primary)
          // every message the clients send through the proxy, read whole chunk by chunk (node-postgres writes whole
          // messages); a request is a Sync (extended protocol) or a Query (simple protocol). A chunk that is not whole
          // messages (a new connection's startup packet: another connection than the unit's) is not counted.
          let requests = 0
          const count = (chunk: Buffer) => {
            let i = 0
            let n = 0
            while (i + 5 <= chunk.length) {
              if (chunk[i] === 0x53 || chunk[i] === 0x51) n++
              i += 1 + chunk.readInt32BE(i + 1)
            }
            if (i === chunk.length) requests += n
            return false
          }
          const id = freshId()
          const perUnit = (ctx: Context.Context<Services>) =>
            Effect.provide(
              Effect.gen(function* () {
                yield* write(id, 0) // connects, learns the baseline
                // the fewest of three rounds: a request of another connection (a health check) only adds
                let best = { requests: Infinity, ms: Infinity }
                for (let round = 0; round < 3; round++) {
                  const before = requests
                  const [took] = yield* Effect.timed(
                    Effect.forEach([1, 2, 3, 4, 5], (v) => Session.transact(upsert(id, v)), { discard: true })
                  )
                  const r = { requests: (requests - before) / 5, ms: Duration.toMillis(took) / 5 }
                  if (r.requests < best.requests || (r.requests === best.requests && r.ms < best.ms)) best = r
                }
                return best
              }),
              ctx
            )
          const plain = yield* Layer.build(Engine.layer({ url, pool: { size: 1 } }))
          const replicated = yield* topology({ url, healthCheckInterval: "1 minute", pool: { size: 1 } })
          yield* proxy.resetNextAfter({ match: count })
          yield* proxy.setLatency(20) // each way: a round trip is 40 ms
          const without = yield* perUnit(plain)
          const withReplicas = yield* perUnit(replicated.ctx)
          const token = yield* Effect.provide(tokenNow, replicated.ctx)
          yield* proxy.setLatency(0)
          console.log(
            `pg-replicas: a writing unit via a 40 ms round trip: plain ${without.requests} requests, ${without.ms.toFixed(1)} ms; with replicas (token) ${withReplicas.requests} requests, ${withReplicas.ms.toFixed(1)} ms`
          )
          assert.match(token ?? "", /^\d+:/, "the units yielded a token")
          assert.strictEqual(without.requests, 2, "BEGIN sent with the INSERT (one Sync), then COMMIT")
          assert.strictEqual(withReplicas.requests, without.requests, "COMMIT and its token in one request")
          assert.isBelow(withReplicas.ms, without.ms + 40, "less than one more round trip of time")
        })
    )

    it.scoped(
      "read-your-writes under lag (replay paused): the read waits readYourWritesTimeout, falls back to the primary and sees its write; 'replica' reads stale",
      () =>
        Effect.gen(function* () {
          const { primary, replicas } = yield* cluster
          yield* schema
          yield* withTopology(
            { readYourWritesTimeout: "500 millis", maxReplicaLag: "10 minutes", healthCheckInterval: "1 minute" },
            (t) =>
              Effect.gen(function* () {
                const id = freshId()
                yield* write(id, 1)
                for (const r of replicas) assert.isTrue(yield* r.waitCaughtUp("10 seconds"))
                yield* lagAll
                yield* write(id, 2)
                const stale = yield* read(id, { consistency: "replica" })
                assert.include(
                  replicas.map((r) => r.port),
                  stale.port
                )
                assert.strictEqual(stale.v, 1, "the replicas really lag: 'replica' reads the old value")
                const timeouts0 = yield* fallbacks(t.name, "waitTimeout")
                const waits0 = yield* metricCount("sessionfx_causal_wait_ms", { engine: t.name })
                const [took, mine] = yield* Effect.timed(read(id))
                assert.strictEqual(mine.v, 2, "read-your-writes: the fiber sees its own write")
                assert.strictEqual(mine.port, primary.port, "from the primary, after the wait timed out")
                assert.isAtLeast(Duration.toMillis(took), 400, "it waited about readYourWritesTimeout first")
                assert.isBelow(Duration.toMillis(took), 5000)
                assert.strictEqual((yield* fallbacks(t.name, "waitTimeout")) - timeouts0, 1)
                assert.isAtLeast((yield* metricCount("sessionfx_causal_wait_ms", { engine: t.name })) - waits0, 1)
                const snapshot = yield* Session.transact(look(id), { consistentSnapshot: true })
                assert.strictEqual(snapshot.v, 2, "a consistentSnapshot unit waits for the token too")
                const strong = yield* read(id, { consistency: "primary" })
                assert.deepStrictEqual([strong.port, strong.v], [primary.port, 2])
                assert.strictEqual((yield* fallbacks(t.name, "waitTimeout")) - timeouts0, 2, "'primary' is not one")
                assert.isTrue(
                  (yield* Engine.servers).every((s) => s.healthy),
                  "a wait that timed out evicts nothing"
                )
              })
          )
        })
    )

    it.scoped(
      "a token handed to another fiber: without it the read is stale; with it the read waits on a replica and is served there once replay resumes",
      () =>
        Effect.gen(function* () {
          const { replicas } = yield* cluster
          yield* schema
          const patient = yield* topology({ readYourWritesTimeout: "20 seconds", healthCheckInterval: "1 minute" })
          const id = freshId()
          yield* Effect.provide(write(id, 1), patient.ctx)
          for (const r of replicas) assert.isTrue(yield* r.waitCaughtUp("10 seconds"))
          yield* lagAll
          yield* Effect.provide(write(id, 2), patient.ctx)
          const carried = yield* decodeToken((yield* Effect.provide(tokenNow, patient.ctx))!)
          const fallbacks0 =
            (yield* fallbacks(patient.name, "waitTimeout")) +
            (yield* fallbacks(patient.name, "noHealthyReplica")) +
            (yield* fallbacks(patient.name, "replicaError")) +
            (yield* fallbacks(patient.name, "lagging"))
          const blind = yield* Effect.promise(() => Effect.runPromise(Effect.provide(read(id), patient.ctx)))
          assert.strictEqual(blind.v, 1, "another fiber without the token reads stale (the test can fail)")
          const waiting = yield* Effect.sync(() =>
            Effect.runFork(Effect.provide(read(id, { after: carried }), patient.ctx))
          )
          // the read polls a replica meanwhile, on a connection of its pool
          yield* waitUntil(
            "the read waiting on a replica",
            Effect.map(Effect.provide(Engine.servers, patient.ctx), (ss) =>
              ss.filter((s) => s.role === "replica").some((s) => s.stats.inUse > 0)
            ),
            (busy) => busy
          )
          assert.isTrue(Option.isNone(yield* Fiber.poll(waiting)), "still waiting while replay is paused")
          for (const r of replicas) yield* r.resumeReplay
          const seen = yield* Fiber.join(waiting).pipe(
            Effect.timeoutFail({ duration: "15 seconds", onTimeout: () => new Error("the waiting read did not end") })
          )
          assert.strictEqual(seen.v, 2, "it sees the write")
          assert.include(
            replicas.map((r) => r.port),
            seen.port,
            "served by the replica it waited on"
          )
          const fallbacks1 =
            (yield* fallbacks(patient.name, "waitTimeout")) +
            (yield* fallbacks(patient.name, "noHealthyReplica")) +
            (yield* fallbacks(patient.name, "replicaError")) +
            (yield* fallbacks(patient.name, "lagging"))
          assert.strictEqual(fallbacks1 - fallbacks0, 0, "no fallback")
        })
    )

    it.scoped(
      "a token the topology never produced (another cluster's, a future LSN, a MariaDB GTID) is refused with InvalidOption after the bounded wait; a malformed one before the unit runs",
      () =>
        Effect.gen(function* () {
          const { primary } = yield* cluster
          yield* schema
          yield* withTopology({ readYourWritesTimeout: "400 millis" }, (t) =>
            Effect.gen(function* () {
              const id = freshId()
              yield* write(id, 3)
              const sys = (yield* tokenNow)!.split(":")[0]!
              for (const unreachable of ["1234567:0/16B6C50", `${sys}:FFFF/0`, "0-1-42"]) {
                const timeouts0 = yield* fallbacks(t.name, "waitTimeout")
                const [took, refused] = yield* Effect.timed(
                  Effect.flip(read(id, { after: yield* decodeToken(unreachable) }))
                )
                assert.strictEqual((refused as { _tag?: string })._tag, "InvalidOption", unreachable)
                assert.strictEqual((refused as SessionError.InvalidOption).option, "after")
                assert.include(String((refused as { message?: string }).message), primary.port.toString())
                assert.isAtLeast(Duration.toMillis(took), 300, `${unreachable}: it waited`)
                assert.isBelow(Duration.toMillis(took), 5000, `${unreachable}: a bounded wait`)
                assert.strictEqual((yield* fallbacks(t.name, "waitTimeout")) - timeouts0, 1, unreachable)
              }
              const decode = Schema.decodeUnknownEither(Session.CausalityToken)
              for (const bad of ["1234:0/", "1234:0/1; DROP TABLE kv", "x:0/1", "1234:0/1,", "1234:G/1", "0/16B6C50"]) {
                assert.isTrue(Either.isLeft(decode(bad)), `${bad} does not decode`)
              }
              let ran = false
              const error = yield* Effect.flip(
                Session.transact(
                  Effect.sync(() => {
                    ran = true
                  }),
                  { readOnly: true, after: "1234:0/1; DROP TABLE kv" as unknown as Token }
                )
              )
              assert.strictEqual(error._tag, "InvalidOption")
              assert.isFalse(ran, "the unit's effect did not run")
              assert.isTrue((yield* Engine.servers).every((s) => s.healthy))
            })
          )
        })
    )

    it.scoped(
      "lag beyond maxReplicaLag (replay paused while writes go on) takes a replica out with a reason; reads avoid it; back once resumed",
      () =>
        Effect.gen(function* () {
          const { replicas } = yield* cluster
          const [lagging, healthy] = replicas
          yield* schema
          yield* withTopology({ healthCheckInterval: "200 millis", maxReplicaLag: "1 second" }, () =>
            Effect.gen(function* () {
              const id = freshId()
              yield* Effect.addFinalizer(() =>
                Effect.orDie(Effect.zipRight(lagging!.resumeReplay, lagging!.waitCaughtUp("20 seconds")))
              )
              yield* lagging!.pauseReplay
              let v = 0
              const servers = yield* waitUntil(
                "the lagging replica out",
                Effect.zipRight(write(id, ++v), Effect.map(Engine.servers, brief)),
                (ss) => ss.filter((s) => s.role === "replica" && !s.healthy).length === 1,
                { timeout: "15 seconds" }
              )
              const out = servers.find((s) => s.role === "replica" && !s.healthy)!
              assert.match(out.reason ?? "", /behind the primary/)
              assert.isAtLeast(out.lagMs ?? 0, 1000)
              for (let i = 0; i < 10; i++) {
                const r = yield* read(id, { consistency: "replica" })
                assert.strictEqual(r.port, healthy!.port, `read ${i + 1} avoids the lagging replica`)
              }
              yield* lagging!.resumeReplay
              yield* waitUntil("back in rotation", Effect.map(Engine.servers, brief), (ss) =>
                ss.every((s) => s.healthy)
              )
            })
          )
        })
    )

    it.scoped(
      "a replica that is down is taken out of rotation (reads go to the other; both down: the primary, noHealthyReplica) and is back after it restarts",
      () =>
        Effect.gen(function* () {
          const { primary, replicas } = yield* cluster
          const [victim, survivor] = replicas
          yield* schema
          yield* withTopology({ healthCheckInterval: "200 millis" }, (t) =>
            Effect.gen(function* () {
              const id = freshId()
              yield* write(id, 1)
              for (const r of replicas) assert.isTrue(yield* r.waitCaughtUp("10 seconds"))
              yield* Effect.addFinalizer(() =>
                Effect.orDie(
                  Effect.forEach(replicas, (r) =>
                    Effect.zipRight(Option.isNone(r.pid) ? r.start : Effect.void, r.waitCaughtUp("20 seconds"))
                  )
                )
              )
              yield* victim!.kill
              // its pooled connections see the postmaster gone (a read already on one fails with ConnectionLost,
              // retryable, as on MariaDB); the engine takes the replica out
              const servers = yield* waitUntil("the killed replica out", Effect.map(Engine.servers, brief), (ss) =>
                ss.some((s) => s.role === "replica" && !s.healthy)
              )
              const out = servers.filter((s) => !s.healthy)
              assert.strictEqual(out.length, 1, JSON.stringify(servers))
              assert.isAbove(out[0]!.reason?.length ?? 0, 0, "with a reason")
              for (let i = 0; i < 10; i++) {
                const r = yield* read(id, { consistency: i % 2 === 0 ? "replica" : "read-your-writes" })
                assert.strictEqual(r.v, 1, `read ${i + 1}`)
                assert.strictEqual(r.port, survivor!.port, `read ${i + 1} on the survivor`)
              }
              yield* survivor!.stop
              yield* waitUntil("both replicas out", Effect.map(Engine.servers, brief), (ss) =>
                ss.filter((s) => s.role === "replica").every((s) => !s.healthy)
              )
              const none0 = yield* fallbacks(t.name, "noHealthyReplica")
              for (let i = 0; i < 4; i++) {
                const r = yield* read(id, { consistency: "replica" })
                assert.deepStrictEqual([r.port, r.v], [primary.port, 1], `read ${i + 1} on the primary`)
              }
              assert.strictEqual((yield* fallbacks(t.name, "noHealthyReplica")) - none0, 4)
              yield* victim!.start
              yield* survivor!.start
              yield* waitUntil(
                "both back in rotation",
                Effect.map(Engine.servers, brief),
                (ss) => ss.every((s) => s.healthy),
                { timeout: "20 seconds" }
              )
              const back = yield* read(id, { consistency: "replica" })
              assert.include(
                replicas.map((r) => r.port),
                back.port
              )
            })
          )
        })
    )

    it.scoped(
      "SERIALIZABLE read-only units (deferrable too) run where PostgreSQL allows them: the primary (a standby refuses SSI)",
      () =>
        Effect.gen(function* () {
          const { primary } = yield* cluster
          yield* schema
          yield* withTopology({}, () =>
            Effect.gen(function* () {
              const id = freshId()
              yield* write(id, 7)
              for (const options of [
                { isolation: "SERIALIZABLE" },
                { isolation: "SERIALIZABLE", deferrable: true },
                { isolation: "SERIALIZABLE", consistency: "replica" }
              ] as const) {
                const seen = yield* read(id, options)
                assert.deepStrictEqual(seen, { server: seen.server, port: primary.port, v: 7 }, JSON.stringify(options))
              }
              // REPEATABLE READ runs on a replica as before
              const rr = yield* read(id, { isolation: "REPEATABLE READ", consistency: "replica" })
              assert.notStrictEqual(rr.port, primary.port)
            })
          )
        })
    )

    it.scoped(
      "a tracked COMMIT that fails on its own (a deferred unique violation): CommitFailed with DuplicateKey, not retried, no token, nothing kept, the connection clean; a keyed unit's key stays free",
      () =>
        Effect.gen(function* () {
          const { primary } = yield* cluster
          yield* schema
          yield* direct(
            primary.url,
            "CREATE TABLE IF NOT EXISTS kv_deferred (id int PRIMARY KEY, v int NOT NULL, CONSTRAINT kv_deferred_v UNIQUE (v) DEFERRABLE INITIALLY DEFERRED)"
          )
          yield* withTopology({ pool: { size: 1 } }, () =>
            Effect.gen(function* () {
              const sql = yield* SqlClient.SqlClient
              yield* Session.createKeyTable
              const id = freshId()
              yield* write(id, 1)
              const pid = yield* Session.transact(Session.connectionId)
              for (const key of [undefined, `deferred-${id}`]) {
                const before = yield* tokenNow
                assert.isDefined(before)
                let attempts = 0
                let hooks = 0
                const [x, y] = [freshId() * 1000, freshId() * 1000]
                const exit = yield* Effect.exit(
                  Session.transact(
                    Effect.gen(function* () {
                      attempts++
                      yield* Session.afterCommit(Effect.sync(() => hooks++))
                      yield* upsert(id, 2)
                      // the same v twice: accepted now, refused by COMMIT
                      yield* sql`INSERT INTO kv_deferred (id, v) VALUES (${x}, ${x}), (${y}, ${x})`
                    }),
                    key === undefined ? { retry: true } : { retry: true, key }
                  )
                )
                const error = Exit.isFailure(exit)
                  ? (Option.getOrUndefined(Cause.failureOption(exit.cause)) as
                      { _tag?: string; retryable?: boolean; cause?: { _tag?: string } } | undefined)
                  : undefined
                assert.strictEqual(error?._tag, "CommitFailed", String(Exit.isFailure(exit) && exit.cause))
                assert.strictEqual(error?.cause?._tag, "DuplicateKey")
                assert.isFalse(error?.retryable)
                assert.strictEqual(attempts, 1, "a constraint violation is not retried")
                assert.strictEqual(hooks, 0)
                assert.strictEqual(yield* tokenNow, before, "a failed COMMIT yields no token")
                assert.strictEqual((yield* read(id, { consistency: "primary" })).v, 1, "nothing of the unit is kept")
                const [n] = yield* sql<{
                  n: string
                }>`SELECT count(*)::text AS n FROM kv_deferred WHERE id IN (${x}, ${y})`
                assert.strictEqual(n!.n, "0")
                if (key !== undefined) assert.strictEqual(yield* Session.outcome(key), "absent")
                // the same connection: clean, its next writing unit commits with a token
                const next = yield* Session.transact(Effect.zipRight(upsert(id, 3), Session.connectionId))
                assert.strictEqual(next, pid, "the connection went back to the pool, not destroyed")
                assert.isAbove(Number(lsnOf(yield* tokenNow) - lsnOf(before)), 0)
                yield* upsert(id, 1)
              }
            })
          )
        })
    )

    it.scoped("interrupting a read that waits for its token ends promptly and leaves every pool whole", () =>
      Effect.gen(function* () {
        const { primary, replicas } = yield* cluster
        yield* schema
        yield* withTopology({ readYourWritesTimeout: "30 seconds", healthCheckInterval: "1 minute" }, () =>
          Effect.gen(function* () {
            const id = freshId()
            yield* write(id, 1)
            for (const r of replicas) assert.isTrue(yield* r.waitCaughtUp("10 seconds"))
            yield* lagAll
            yield* write(id, 2)
            const reader = yield* Effect.fork(read(id))
            yield* waitUntil(
              "the read waiting on a replica",
              Effect.map(Engine.servers, (ss) => ss.filter((s) => s.role === "replica").some((s) => s.stats.inUse > 0)),
              (busy) => busy
            )
            const [took, exit] = yield* Effect.timed(Fiber.interrupt(reader))
            assert.isTrue(Exit.isInterrupted(exit), `interrupted: ${String(exit)}`)
            assert.isBelow(Duration.toMillis(took), 3000, "promptly")
            yield* waitUntil(
              "every pool with nothing in use",
              Engine.servers,
              (ss) => ss.every((s) => s.stats.inUse === 0 && s.stats.waiting === 0),
              { timeout: "5 seconds" }
            )
            assert.strictEqual((yield* read(id, { consistency: "primary" })).port, primary.port)
            assert.strictEqual((yield* read(id, { consistency: "replica" })).v, 1)
          })
        )
      })
    )
  }
)
