/**
 * The Engine topology of issue 16 against a real primary and two GTID replicas (`MysqlCluster.layerReplicated`):
 * routing, causality tokens (read-your-writes), replica health, and the pool invariants that token tracking must
 * keep. Where a unit ran is read twice: from `Session.server` and from the server itself (`@@port`).
 */
import { assert, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine, Session } from "@sessionfx/session"
import * as SessionError from "@sessionfx/session/SessionError"
import * as MysqlCluster from "@sessionfx/testing/MysqlCluster"
import type * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import type * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import type * as Mysql from "mysql2/promise"
import { connect, metricCount, metricNamesWith, query, rows, waitUntil } from "./support.js"

type Token = typeof Session.CausalityToken.Type
type Services = Engine.Engine | SqlClient.SqlClient

const cluster = MysqlCluster.ReplicatedServers

interface Seen {
  /** `Session.server` */
  readonly server: string
  /** the server's own `@@port` */
  readonly port: number
  /** the row's value there, `null` when absent */
  readonly v: number | null
}

/** Where the unit runs, and the value of row `id` there. */
const look = (id: number) =>
  Effect.gen(function* () {
    const session = yield* Session.Session
    const sql = yield* SqlClient.SqlClient
    const [p] = yield* sql<{ readonly p: number }>`SELECT @@port AS p`
    const found = yield* sql<{ readonly v: number }>`SELECT v FROM kv WHERE id = ${id}`
    const seen: Seen = {
      server: session.server,
      port: Number(p!.p),
      v: found.length > 0 ? Number(found[0]!.v) : null
    }
    return seen
  })

const read = (id: number, options: Session.Options = {}) => Session.transact(look(id), { readOnly: true, ...options })

const upsert = (id: number, v: number) =>
  Effect.flatMap(
    SqlClient.SqlClient,
    (sql) => sql`INSERT INTO kv (id, v) VALUES (${id}, ${v}) ON DUPLICATE KEY UPDATE v = VALUES(v)`
  )

/** A writing unit; returns where it ran. */
const write = (id: number, v: number, options: Session.Options = {}) =>
  Session.transact(Effect.zipRight(upsert(id, v), look(id)), options)

const tokenNow: Effect.Effect<string | undefined, never, Engine.Engine> = Effect.map(Session.causalityToken, (t) =>
  Option.isSome(t) ? String(t.value) : undefined
)

const decodeToken = (s: string): Effect.Effect<Token> => Effect.orDie(Schema.decodeUnknown(Session.CausalityToken)(s))

/** The sequence number of domain 0 in a GTID list (`0-1-42` → 42). */
const seqOf = (gtid: string | undefined): number => {
  const part = (gtid ?? "").split(",").find((p) => p.trim().startsWith("0-"))
  return part === undefined ? NaN : Number(part.trim().split("-")[2])
}

const binlogPos = (conn: Mysql.Connection) =>
  Effect.map(rows<{ readonly pos: string }>(conn, "SELECT @@GLOBAL.gtid_binlog_pos AS pos"), (r) => String(r[0]?.pos))

const globalStatus = (conn: Mysql.Connection, name: string) =>
  Effect.map(rows<{ readonly Value: string }>(conn, `SHOW GLOBAL STATUS LIKE '${name}'`), (r) => Number(r[0]?.Value))

/** `MASTER_GTID_WAIT` calls in flight on `server` (other than this probe), from its processlist. */
const gtidWaitsOn = (server: { readonly admin: { readonly url: Redacted.Redacted<string> } }) =>
  Effect.scoped(
    Effect.flatMap(connect(server.admin.url), (conn) =>
      Effect.map(
        rows<{ readonly n: number }>(
          conn,
          "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND INFO LIKE '%master_gtid_wait%'"
        ),
        (r) => Number(r[0]?.n)
      )
    )
  )

const fallbacks = (engine: string, reason: "noHealthyReplica" | "waitTimeout" | "replicaError") =>
  metricCount("sessionfx_read_fallbacks_total", { engine, reason })

/** A gauge's current value on its series with `tags` (`undefined` when there is none). */
const gaugeValue = (name: string, tags: Record<string, string>) =>
  Effect.map(Metric.snapshot, (pairs) => {
    const pair = pairs.find(
      (p) =>
        p.metricKey.name === name &&
        Object.entries(tags).every(([k, v]) => p.metricKey.tags.some((t) => t.key === k && t.value === v))
    )
    const value = (pair?.metricState as { value?: unknown } | undefined)?.value
    return value === undefined ? undefined : Number(value)
  })

let nextId = 0
const freshId = () => ++nextId

/** The table every test uses, on the primary and applied on both replicas; returns a primary connection. */
const schema = Effect.gen(function* () {
  const { primary, replicas } = yield* cluster
  const conn = yield* connect(primary.url)
  yield* query(conn, "CREATE TABLE IF NOT EXISTS kv (id INT PRIMARY KEY, v INT NOT NULL)")
  for (const r of replicas) assert.isTrue(yield* r.waitCaughtUp("20 seconds"), `replica ${r.port} caught up`)
  return conn
})

const brief = (servers: ReadonlyArray<Engine.ServerStatus>) =>
  servers.map((s) => ({ name: s.name, role: s.role, healthy: s.healthy, reason: s.reason, lagMs: s.lagMs }))

interface Topology {
  readonly name: string
  readonly ctx: Context.Context<Services>
  readonly servers: Effect.Effect<ReadonlyArray<Engine.ServerStatus>>
}

let engines = 0

/** An Engine on the primary and both replicas for the test's scope; returns once every server is healthy. */
const topology = (options: Partial<Engine.EngineOptions> = {}) =>
  Effect.gen(function* () {
    const { primary, replicas } = yield* cluster
    const name = `topology-${++engines}`
    const ctx = yield* Layer.build(
      Engine.layer({
        name,
        connectTimeout: "5 seconds",
        killGrace: "1 second",
        healthCheckInterval: "200 millis",
        ...options,
        url: primary.url,
        replicas: replicas.map((r) => r.url),
        pool: { size: 2, acquireTimeout: "10 seconds", ...options.pool }
      })
    )
    const servers = Effect.provide(Engine.servers, ctx)
    yield* waitUntil(
      "every server of a new Engine healthy",
      Effect.map(servers, brief),
      (ss) => ss.length === 1 + replicas.length && ss.every((s) => s.healthy),
      { timeout: "20 seconds" }
    )
    const t: Topology = { name, ctx, servers }
    return t
  })

/** `body` with an Engine of its own (see `topology`). */
const withTopology = <A, E, R>(options: Partial<Engine.EngineOptions>, body: (t: Topology) => Effect.Effect<A, E, R>) =>
  Effect.flatMap(topology(options), (t) => Effect.provide(body(t), t.ctx))

/** Stops the SQL thread of every replica (they lag: events arrive, nothing is applied) until the scope closes. */
const lagAll = Effect.gen(function* () {
  const { replicas } = yield* cluster
  yield* Effect.addFinalizer(() =>
    Effect.orDie(
      Effect.forEach(replicas, (r) =>
        Effect.gen(function* () {
          if (!(yield* r.replicationStatus).sqlRunning) yield* r.startSqlThread
          yield* r.waitCaughtUp("20 seconds")
        })
      )
    )
  )
  for (const r of replicas) yield* r.stopSqlThread
})

/** Where units ran must agree with `Engine.servers`: each name is one server, of the role its port says. */
const checkNames = (seen: ReadonlyArray<Seen>) =>
  Effect.gen(function* () {
    const { primary } = yield* cluster
    const servers = yield* Engine.servers
    const ports = new Map<string, number>()
    for (const s of seen) {
      const status = servers.find((x) => x.name === s.server)
      assert.isDefined(status, `Session.server "${s.server}" is one of Engine.servers (${servers.map((x) => x.name)})`)
      assert.strictEqual(status!.role, s.port === primary.port ? "primary" : "replica", `the role of ${s.server}`)
      const known = ports.get(s.server)
      if (known === undefined) ports.set(s.server, s.port)
      else assert.strictEqual(s.port, known, `${s.server} names one server`)
    }
  })

layer(MysqlCluster.layerReplicated({ replicas: 2 }), { timeout: "120 seconds", excludeTestServices: true })(
  "Engine topology: a primary and 2 replicas",
  (it) => {
    it.scoped(
      "servers lists the primary and both replicas; writes, autocommit statements and 'primary' reads run on the primary, read-only units on replicas",
      () =>
        Effect.gen(function* () {
          const { primary, replicas } = yield* cluster
          yield* schema
          yield* withTopology({}, (t) =>
            Effect.gen(function* () {
              const replicaPorts = replicas.map((r) => r.port)
              const servers = yield* Engine.servers
              assert.deepStrictEqual(servers.map((s) => s.role).sort(), ["primary", "replica", "replica"])
              assert.strictEqual(new Set(servers.map((s) => s.name)).size, 3, "distinct names")
              assert.deepStrictEqual(
                (yield* Effect.flatMap(Engine.Engine, (e) => e.servers)).map((s) => s.name),
                servers.map((s) => s.name),
                "Engine.servers is the service's servers"
              )
              for (const s of servers) assert.isNumber(s.stats.inUse)
              const seen: Array<Seen> = []
              const id = freshId()
              const w = yield* write(id, 1)
              seen.push(w)
              assert.strictEqual(w.port, primary.port, "a writing unit runs on the primary")
              const sql = yield* SqlClient.SqlClient
              const [auto] = yield* sql<{ readonly p: number }>`SELECT @@port AS p`
              assert.strictEqual(Number(auto!.p), primary.port, "an autocommit statement runs on the primary")
              yield* sql`UPDATE kv SET v = 2 WHERE id = ${id}`
              const fresh = yield* read(id)
              seen.push(fresh)
              assert.include(replicaPorts, fresh.port, "a read-only unit runs on a replica")
              assert.strictEqual(fresh.v, 2, "and it sees the fiber's own autocommit write (read-your-writes)")
              const snapshot = yield* Session.transact(look(id), { consistentSnapshot: true })
              seen.push(snapshot)
              assert.include(replicaPorts, snapshot.port, "a consistentSnapshot unit runs on a replica")
              const strong = yield* read(id, { consistency: "primary" })
              seen.push(strong)
              assert.strictEqual(strong.port, primary.port, "consistency 'primary' runs on the primary")
              assert.strictEqual(strong.v, 2)
              for (let i = 0; i < 20; i++) {
                const r = yield* read(id, { consistency: "replica" })
                seen.push(r)
                assert.include(replicaPorts, r.port, `consistency 'replica', read ${i + 1}: on a replica`)
              }
              const layered = yield* Effect.provide(look(id), Session.layer({ readOnly: true, consistency: "replica" }))
              seen.push(layered)
              assert.include(replicaPorts, layered.port, "a read-only Session.layer runs on a replica")
              const plain = yield* Session.transact(look(id))
              seen.push(plain)
              assert.strictEqual(plain.port, primary.port, "a unit without readOnly runs on the primary")
              yield* checkNames(seen)
              // per-server pool metrics: every server has series labelled with the engine and its name
              for (const s of servers) {
                const names = [...(yield* metricNamesWith({ engine: t.name, server: s.name }))]
                assert.isTrue(
                  names.some((n) => n.startsWith("sessionfx_pool_")),
                  `pool metrics labelled server="${s.name}": ${names.join(", ") || "none"}`
                )
              }
            })
          )
        })
    )

    it.scoped(
      "causality token: a committed unit's is its COMMIT's GTID; read-only, rolled-back and no-change units keep it; autocommit writes advance it",
      () =>
        Effect.gen(function* () {
          const p = yield* schema
          yield* withTopology({}, () =>
            Effect.gen(function* () {
              const id = freshId()
              assert.isUndefined(yield* tokenNow, "a fiber that has committed nothing has no token")
              yield* write(id, 1)
              const t1 = yield* tokenNow
              assert.isString(t1, "a committed unit yields a token")
              assert.match(t1!, /^\d+-\d+-\d+(,\d+-\d+-\d+)*$/)
              assert.strictEqual(t1, yield* binlogPos(p), "the token is the GTID of the unit's commit")
              assert.strictEqual(String(yield* decodeToken(t1!)), t1, "and decodes as a CausalityToken")

              yield* read(id, { consistency: "replica" })
              yield* read(id)
              assert.strictEqual(yield* tokenNow, t1, "read-only units yield no token")

              const failed = yield* Effect.flip(
                Session.transact(Effect.zipRight(upsert(id, 99), Effect.fail("boom" as const)))
              )
              assert.strictEqual(failed, "boom")
              assert.strictEqual(yield* tokenNow, t1, "a rolled-back unit yields no token")
              assert.strictEqual(yield* binlogPos(p), t1, "and nothing was committed")
              yield* Session.transact(upsert(id, 98), { rollbackOnly: true })
              assert.strictEqual(yield* tokenNow, t1, "a rollbackOnly unit yields no token")

              yield* Session.transact(
                Effect.flatMap(SqlClient.SqlClient, (sql) => sql`UPDATE kv SET v = v WHERE id = ${-id}`)
              )
              assert.strictEqual(yield* binlogPos(p), t1, "a unit that changed nothing commits no GTID")
              assert.strictEqual(yield* tokenNow, t1, "and keeps the token it had (not cleared)")

              const sql = yield* SqlClient.SqlClient
              yield* sql`UPDATE kv SET v = 5 WHERE id = ${id}`
              const t2 = yield* tokenNow
              assert.strictEqual(t2, yield* binlogPos(p), "an autocommit write through the engine yields its GTID")
              assert.isAbove(seqOf(t2), seqOf(t1))
              yield* sql`SELECT v FROM kv WHERE id = ${id}`
              assert.strictEqual(yield* tokenNow, t2, "an autocommit read does not")

              yield* write(id, 6)
              const t3 = yield* tokenNow
              assert.strictEqual(t3, yield* binlogPos(p))
              assert.isAbove(seqOf(t3), seqOf(t2))

              yield* Effect.provide(upsert(id, 7), Session.layer())
              const t4 = yield* tokenNow
              assert.strictEqual(t4, yield* binlogPos(p), "a unit as Session.layer yields its token too")
              assert.isAbove(seqOf(t4), seqOf(t3))
            })
          )
        })
    )

    it.scoped(
      "tracking last_gtid keeps connections clean: 30 write units, no dirty return, nothing re-prepared; a reset connection still yields tokens",
      () =>
        Effect.gen(function* () {
          const { primary } = yield* cluster
          const p = yield* schema
          const admin = yield* connect(primary.admin.url)
          yield* withTopology({ pool: { size: 1 }, healthCheckInterval: "1 minute" }, (t) =>
            Effect.gen(function* () {
              const dirty = metricCount("sessionfx_pool_dirty_returns_total", { engine: t.name })
              const prepares = globalStatus(admin, "Com_stmt_prepare")
              const id = freshId()
              yield* write(id, 0) // prepares the unit's statements on the primary's one connection
              const dirty0 = yield* dirty
              const prepare0 = yield* prepares
              const tokens: Array<string> = []
              for (let i = 1; i <= 30; i++) {
                yield* write(id, i)
                tokens.push((yield* tokenNow)!)
              }
              assert.strictEqual(
                (yield* dirty) - dirty0,
                0,
                "a COMMIT carrying last_gtid does not make the connection dirty"
              )
              assert.isBelow(
                (yield* prepares) - prepare0,
                5,
                "the write unit's statements stay prepared (a reset per unit would re-prepare 3 statements × 30)"
              )
              assert.strictEqual(new Set(tokens).size, 30, "each unit yields a token of its own")
              for (let i = 1; i < tokens.length; i++) {
                assert.isAbove(seqOf(tokens[i]), seqOf(tokens[i - 1]), `token ${i + 1} after token ${i}`)
              }
              assert.strictEqual(tokens[29], yield* binlogPos(p))

              // autocommit writes through the engine's SqlClient: each OK packet carries last_gtid too
              const sql = yield* SqlClient.SqlClient
              const prepareAuto = yield* prepares
              for (let i = 1; i <= 20; i++) {
                yield* sql`UPDATE kv SET v = ${1000 + i} WHERE id = ${id}`
                tokens.push((yield* tokenNow)!)
              }
              assert.strictEqual((yield* dirty) - dirty0, 0, "an autocommit write's last_gtid does not make it dirty")
              assert.isBelow((yield* prepares) - prepareAuto, 3, "the autocommit UPDATE stays prepared")
              assert.strictEqual(new Set(tokens).size, 50, "each autocommit write yields a token of its own")
              assert.strictEqual(tokens[49], yield* binlogPos(p))

              // a unit that sets a user variable makes its connection dirty: reset on return (the measure is live)
              const dirty1 = yield* dirty
              yield* Session.transact(
                Effect.gen(function* () {
                  const sql = yield* SqlClient.SqlClient
                  yield* sql`SET @x = 1`.unprepared
                  yield* upsert(id, 100)
                })
              )
              const reset = yield* tokenNow
              assert.strictEqual((yield* dirty) - dirty1, 1, "SET @x makes the connection dirty: reset on return")
              assert.strictEqual(reset, yield* binlogPos(p), "the dirty unit's own commit yields its token")
              const prepare1 = yield* prepares
              yield* write(id, 101)
              const afterReset = yield* tokenNow
              assert.isAtLeast((yield* prepares) - prepare1, 1, "the reset connection prepares its statements again")
              assert.strictEqual(
                afterReset,
                yield* binlogPos(p),
                "after COM_RESET_CONNECTION tokens are still captured"
              )
              assert.isAbove(seqOf(afterReset), seqOf(reset))
              for (let i = 0; i < 5; i++) yield* write(id, 200 + i)
              assert.strictEqual(
                (yield* dirty) - dirty1,
                1,
                "turning tracking on again after the reset did not make the connection dirty"
              )
              assert.strictEqual(yield* tokenNow, yield* binlogPos(p))
            })
          )
        })
    )

    it.scoped(
      "CausalityToken: GTID lists decode, malformed values do not; a malformed `after` fails the unit with InvalidOption before it runs",
      () =>
        Effect.gen(function* () {
          yield* schema
          const decode = Schema.decodeUnknownEither(Session.CausalityToken)
          for (const good of ["0-1-42", "0-1-42,1-2-3", "0-1-0"]) {
            assert.isTrue(Either.isRight(decode(good)), `"${good}" decodes`)
          }
          const bad: ReadonlyArray<unknown> = [
            "",
            "abc",
            "0-1",
            "0-1-",
            "0-1-x",
            "-0-1-2",
            "0-1-42,",
            "0-1-42; DROP TABLE kv",
            "0-1-42' OR '1'='1",
            42,
            null
          ]
          for (const value of bad) {
            assert.isTrue(Either.isLeft(decode(value)), `${JSON.stringify(value)} does not decode`)
          }
          yield* withTopology({}, () =>
            Effect.gen(function* () {
              let ran = false
              const error = yield* Effect.flip(
                Session.transact(
                  Effect.sync(() => {
                    ran = true
                  }),
                  { readOnly: true, after: "0-1-42; DROP TABLE kv" as unknown as Token }
                )
              )
              assert.strictEqual(error._tag, "InvalidOption", String((error as { message?: string }).message))
              assert.strictEqual((error as SessionError.InvalidOption).option, "after")
              assert.isFalse(ran, "the unit's effect did not run")
              const sql = yield* SqlClient.SqlClient
              yield* sql`SELECT COUNT(*) AS n FROM kv` // still there
            })
          )
        })
    )

    it.scoped(
      "nested units run on the enclosing unit's server; consistency and after on a nested unit are InvalidOption",
      () =>
        Effect.gen(function* () {
          const { replicas } = yield* cluster
          yield* schema
          yield* withTopology({}, () =>
            Effect.gen(function* () {
              const id = freshId()
              yield* write(id, 5)
              const token = yield* decodeToken((yield* tokenNow)!)
              const result = yield* Session.transact(
                Effect.gen(function* () {
                  const outer = yield* look(id)
                  const inner = yield* Session.transact(look(id), { readOnly: true })
                  const consistency = yield* Effect.flip(
                    Session.transact(look(id), { readOnly: true, consistency: "primary" })
                  )
                  const after = yield* Effect.flip(Session.transact(look(id), { readOnly: true, after: token }))
                  const still = yield* look(id)
                  return { outer, inner, consistency, after, still }
                }),
                { readOnly: true }
              )
              assert.include(
                replicas.map((r) => r.port),
                result.outer.port
              )
              assert.strictEqual(result.outer.v, 5)
              assert.deepStrictEqual(result.inner, result.outer, "a nested unit is a savepoint on the same server")
              assert.strictEqual(result.consistency._tag, "InvalidOption")
              assert.strictEqual((result.consistency as SessionError.InvalidOption).option, "consistency")
              assert.strictEqual(result.after._tag, "InvalidOption")
              assert.strictEqual((result.after as SessionError.InvalidOption).option, "after")
              assert.deepStrictEqual(result.still, result.outer, "the enclosing unit carries on")
            })
          )
        })
    )

    it.scoped(
      "a write in a read-only unit fails with ReadOnlyTransaction (on a replica, on the primary), is not retried, writes nothing and evicts nothing",
      () =>
        Effect.gen(function* () {
          const { primary, replicas } = yield* cluster
          const p = yield* schema
          yield* withTopology({}, () =>
            Effect.gen(function* () {
              for (const consistency of ["replica", "read-your-writes", "primary"] as const) {
                const id = freshId()
                let attempts = 0
                let where: Seen | undefined
                const error = yield* Effect.flip(
                  Session.transact(
                    Effect.gen(function* () {
                      attempts++
                      where = yield* look(id)
                      yield* upsert(id, 1)
                    }),
                    { readOnly: true, consistency, retry: true }
                  )
                )
                assert.strictEqual(
                  error._tag,
                  "ReadOnlyTransaction",
                  `${consistency}: ${String((error as any).message)}`
                )
                assert.isFalse(SessionError.isRetryable(error as SessionError.SessionError))
                assert.strictEqual(attempts, 1, `${consistency}: not retried`)
                if (consistency === "primary") assert.strictEqual(where?.port, primary.port)
                else
                  assert.include(
                    replicas.map((r) => r.port),
                    where?.port,
                    `${consistency}: ran on a replica`
                  )
                const [n] = yield* rows<{ readonly n: number }>(p, "SELECT COUNT(*) AS n FROM kv WHERE id = ?", [id])
                assert.strictEqual(Number(n?.n), 0, `${consistency}: nothing written on the primary`)
                for (const r of replicas) {
                  assert.isTrue(yield* r.waitCaughtUp("10 seconds"))
                  const conn = yield* connect(r.url)
                  const [m] = yield* rows<{ readonly n: number }>(conn, "SELECT COUNT(*) AS n FROM kv WHERE id = ?", [
                    id
                  ])
                  assert.strictEqual(Number(m?.n), 0, `${consistency}: nothing on replica ${r.port}`)
                }
              }
              const servers = yield* Engine.servers
              assert.isTrue(
                servers.every((s) => s.healthy),
                `a refused write is not a server failure: ${JSON.stringify(brief(servers))}`
              )
            })
          )
        })
    )

    it.scoped(
      "read-your-writes under lag: the writer's read waits readYourWritesTimeout, falls back to the primary and sees its write; 'replica' reads stale",
      () =>
        Effect.gen(function* () {
          const { primary, replicas } = yield* cluster
          yield* schema
          // health checks far apart: the lag must be met by the wait, not by a probe that took the replicas out
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
                assert.strictEqual((yield* fallbacks(t.name, "waitTimeout")) - timeouts0, 2)

                const strong = yield* read(id, { consistency: "primary" })
                assert.deepStrictEqual([strong.port, strong.v], [primary.port, 2])
                assert.strictEqual(
                  (yield* fallbacks(t.name, "waitTimeout")) - timeouts0,
                  2,
                  "'primary' is not a fallback"
                )
              })
          )
        })
    )

    it.scoped("a forked child reads its parent's write; a child's write comes back to the parent on join", () =>
      Effect.gen(function* () {
        const p = yield* schema
        yield* withTopology({ readYourWritesTimeout: "300 millis", healthCheckInterval: "1 minute" }, () =>
          Effect.gen(function* () {
            const id = freshId()
            const other = freshId()
            yield* write(id, 1)
            yield* write(other, 1)
            const { replicas } = yield* cluster
            for (const r of replicas) assert.isTrue(yield* r.waitCaughtUp("10 seconds"))
            yield* lagAll
            yield* write(id, 2)
            const parent = yield* tokenNow
            const child = yield* Effect.fork(Effect.zip(tokenNow, read(id)))
            const [inherited, seen] = yield* Fiber.join(child)
            assert.strictEqual(inherited, parent, "the child starts with the parent's token")
            assert.strictEqual(seen.v, 2, "the child's read sees the parent's write")

            const writer = yield* Effect.fork(Effect.zipRight(write(other, 7), tokenNow))
            const childToken = yield* Fiber.join(writer)
            assert.isAbove(seqOf(childToken), seqOf(parent))
            assert.strictEqual(yield* tokenNow, childToken, "joined, the parent holds the child's token")
            assert.strictEqual((yield* read(other)).v, 7, "and its read sees the child's write")

            const third = freshId()
            yield* Effect.all([write(third, 1), write(third + 100_000, 1), write(third + 200_000, 1)], {
              concurrency: 3
            })
            assert.strictEqual(
              yield* tokenNow,
              yield* binlogPos(p),
              "concurrent children's tokens merge into the parent's: the latest commit of the three"
            )
            const both = yield* Effect.all([read(id), read(other)], { concurrency: 2 })
            assert.deepStrictEqual(
              both.map((s) => s.v),
              [2, 7]
            )
          })
        )
      })
    )

    it.scoped(
      "a token handed as a string to another fiber: without it the read is stale; with `after` or useCausalityToken it waits (on a replica when it catches up)",
      () =>
        Effect.gen(function* () {
          const { primary, replicas } = yield* cluster
          yield* schema
          const fast = yield* topology({ readYourWritesTimeout: "300 millis", healthCheckInterval: "1 minute" })
          const patient = yield* topology({ readYourWritesTimeout: "20 seconds", healthCheckInterval: "1 minute" })
          /** Runs `effect` in a root fiber of its own: nothing inherited, no token. */
          const elsewhere = <A, E>(t: Topology, effect: Effect.Effect<A, E, Services>) =>
            Effect.flatMap(
              Effect.promise(() => Effect.runPromiseExit(Effect.provide(effect, t.ctx))),
              (exit) => exit
            )
          const id = freshId()
          yield* Effect.provide(write(id, 1), fast.ctx)
          for (const r of replicas) assert.isTrue(yield* r.waitCaughtUp("10 seconds"))
          yield* lagAll
          yield* Effect.provide(write(id, 2), fast.ctx)
          const carried: string = (yield* Effect.provide(tokenNow, fast.ctx))!
          assert.isString(carried)

          const timeouts0 = yield* fallbacks(fast.name, "waitTimeout")
          const results = yield* elsewhere(
            fast,
            Effect.gen(function* () {
              const before = yield* tokenNow
              const blind = yield* read(id)
              const token = yield* decodeToken(carried)
              const after = yield* read(id, { after: token })
              yield* Session.useCausalityToken(token)
              const held = yield* tokenNow
              const used = yield* read(id)
              return { before, blind, after, held, used }
            })
          )
          assert.isUndefined(results.before, "another fiber inherits no token")
          assert.strictEqual(results.blind.v, 1, "without the token the read is stale (the test can fail)")
          assert.deepStrictEqual(
            [results.after.v, results.after.port],
            [2, primary.port],
            "`after` waited, then primary"
          )
          assert.strictEqual(results.held, carried, "useCausalityToken puts the token in the fiber")
          assert.strictEqual(results.used.v, 2, "and later read-only units wait for it")
          assert.strictEqual((yield* fallbacks(fast.name, "waitTimeout")) - timeouts0, 2)

          // the wait itself: with a long readYourWritesTimeout the read waits on a replica and runs there once applied
          const patientFallbacks0 =
            (yield* fallbacks(patient.name, "waitTimeout")) +
            (yield* fallbacks(patient.name, "noHealthyReplica")) +
            (yield* fallbacks(patient.name, "replicaError"))
          const token = yield* decodeToken(carried)
          const waiting = yield* Effect.sync(() =>
            Effect.runFork(Effect.provide(read(id, { after: token }), patient.ctx))
          )
          yield* waitUntil(
            "a MASTER_GTID_WAIT in flight on a replica",
            Effect.map(Effect.forEach(replicas, gtidWaitsOn), (ns) => ns.reduce((a, b) => a + b, 0)),
            (n) => n > 0
          )
          for (const r of replicas) yield* r.startSqlThread
          const seen = yield* Fiber.join(waiting).pipe(
            Effect.timeoutFail({ duration: "15 seconds", onTimeout: () => new Error("the waiting read did not end") })
          )
          assert.strictEqual(seen.v, 2)
          assert.include(
            replicas.map((r) => r.port),
            seen.port,
            "it ran on the replica it waited on"
          )
          assert.strictEqual(
            (yield* fallbacks(patient.name, "waitTimeout")) +
              (yield* fallbacks(patient.name, "noHealthyReplica")) +
              (yield* fallbacks(patient.name, "replicaError")) -
              patientFallbacks0,
            0,
            "no fallback"
          )
        })
    )

    it.scoped(
      "useCausalityToken merges: an older token does not move the fiber's back, another domain is added to it",
      () =>
        Effect.gen(function* () {
          yield* schema
          yield* withTopology({}, () =>
            Effect.gen(function* () {
              yield* write(freshId(), 1)
              const mine = (yield* tokenNow)!
              const older = `0-1-${seqOf(mine) - 1}`
              yield* Session.useCausalityToken(yield* decodeToken(older))
              assert.strictEqual(seqOf(yield* tokenNow), seqOf(mine), "merged, not replaced by an older token")
              yield* Session.useCausalityToken(yield* decodeToken("5-9-3"))
              const merged = (yield* tokenNow)!
              assert.include(merged.split(","), "5-9-3")
              assert.strictEqual(seqOf(merged), seqOf(mine))
            })
          )
        })
    )

    it.scoped(
      "a token the topology never produced (a future sequence, an unknown domain): the read waits at most readYourWritesTimeout, then is refused (InvalidOption) — the primary does not have it either",
      () =>
        Effect.gen(function* () {
          const { primary } = yield* cluster
          yield* schema
          yield* withTopology({ readYourWritesTimeout: "400 millis" }, (t) =>
            Effect.gen(function* () {
              const id = freshId()
              yield* write(id, 3)
              for (const unreachable of ["0-1-999999999", "77-1-1"]) {
                const timeouts0 = yield* fallbacks(t.name, "waitTimeout")
                const [took, refused] = yield* Effect.timed(
                  Effect.flip(read(id, { after: yield* decodeToken(unreachable) }))
                )
                assert.strictEqual((refused as { _tag?: string })._tag, "InvalidOption", unreachable)
                assert.include(String((refused as { message?: string }).message), primary.port.toString())
                assert.isAtLeast(Duration.toMillis(took), 300, `${unreachable}: it waited`)
                assert.isBelow(Duration.toMillis(took), 5000, `${unreachable}: a bounded wait`)
                assert.strictEqual((yield* fallbacks(t.name, "waitTimeout")) - timeouts0, 1, unreachable)
              }
              const servers = yield* Engine.servers
              assert.isTrue(
                servers.every((s) => s.healthy),
                "a wait that timed out evicts nothing"
              )
            })
          )
        })
    )

    it.scoped(
      "interrupting a read-only unit while MASTER_GTID_WAIT is in flight ends promptly, stops the wait on the server and leaves every pool whole",
      () =>
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
              const inFlight = Effect.map(Effect.forEach(replicas, gtidWaitsOn), (ns) => ns.reduce((a, b) => a + b, 0))
              yield* waitUntil("the read's MASTER_GTID_WAIT in flight on a replica", inFlight, (n) => n > 0)
              const [took, exit] = yield* Effect.timed(Fiber.interrupt(reader))
              assert.isTrue(Exit.isInterrupted(exit), `interrupted: ${String(exit)}`)
              assert.isBelow(Duration.toMillis(took), 3000, "the interruption ends promptly (killGrace 1 s)")
              yield* waitUntil("the wait stopped on the server", inFlight, (n) => n === 0, { timeout: "5 seconds" })
              const servers = yield* waitUntil(
                "every pool with nothing in use",
                Engine.servers,
                (ss) => ss.every((s) => s.stats.inUse === 0),
                { timeout: "5 seconds" }
              )
              for (const s of servers) assert.strictEqual(s.stats.waiting, 0, s.name)
              // and the pools serve again
              assert.strictEqual((yield* read(id, { consistency: "primary" })).port, primary.port)
              assert.strictEqual((yield* read(id, { consistency: "replica" })).v, 1)
              yield* write(id, 3)
            })
          )
        })
    )

    it.scoped(
      "with replication stopped on both replicas, reads go to the primary (counted as noHealthyReplica) until they are back",
      () =>
        Effect.gen(function* () {
          const { primary, replicas } = yield* cluster
          yield* schema
          yield* withTopology({ healthCheckInterval: "200 millis" }, (t) =>
            Effect.gen(function* () {
              const id = freshId()
              yield* write(id, 1)
              yield* Effect.addFinalizer(() =>
                Effect.orDie(
                  Effect.forEach(replicas, (r) =>
                    Effect.gen(function* () {
                      const status = yield* r.replicationStatus
                      if (!status.ioRunning || !status.sqlRunning) yield* r.startReplication
                      yield* r.waitCaughtUp("20 seconds")
                    })
                  )
                )
              )
              for (const r of replicas) yield* r.stopReplication
              const servers = yield* waitUntil("both replicas out", Effect.map(Engine.servers, brief), (ss) =>
                ss.filter((s) => s.role === "replica").every((s) => !s.healthy)
              )
              for (const s of servers.filter((x) => x.role === "replica")) {
                assert.isString(s.reason, `${s.name}: a reason`)
                assert.isAbove(s.reason!.length, 0)
              }
              const none0 = yield* fallbacks(t.name, "noHealthyReplica")
              const reads = [
                read(id),
                read(id, { consistency: "replica" }),
                Session.transact(look(id), { consistentSnapshot: true }),
                read(id, { consistency: "replica" })
              ]
              for (const r of reads) {
                const seen = yield* r
                assert.deepStrictEqual([seen.port, seen.v], [primary.port, 1])
              }
              yield* read(id, { consistency: "primary" })
              assert.strictEqual((yield* fallbacks(t.name, "noHealthyReplica")) - none0, 4, "one per fallen-back read")
              for (const r of replicas) yield* r.startReplication
              yield* waitUntil("both replicas back", Effect.map(Engine.servers, brief), (ss) =>
                ss.every((s) => s.healthy)
              )
            })
          )
        })
    )

    it.scoped(
      "a replica whose SQL thread stopped while writes go on is taken out with a reason; reads avoid it; it is back once it catches up",
      () =>
        Effect.gen(function* () {
          const { replicas } = yield* cluster
          const [lagging, healthy] = replicas
          yield* schema
          yield* withTopology({ healthCheckInterval: "200 millis", maxReplicaLag: "1 second" }, (t) =>
            Effect.gen(function* () {
              const id = freshId()
              yield* Effect.addFinalizer(() =>
                Effect.orDie(
                  Effect.gen(function* () {
                    if (!(yield* lagging!.replicationStatus).sqlRunning) yield* lagging!.startSqlThread
                    yield* lagging!.waitCaughtUp("20 seconds")
                  })
                )
              )
              yield* lagging!.stopSqlThread
              let v = 0
              const servers = yield* waitUntil(
                "the lagging replica out",
                Effect.zipRight(write(id, ++v), Effect.map(Engine.servers, brief)),
                (ss) => ss.filter((s) => s.role === "replica" && !s.healthy).length === 1
              )
              const out = servers.find((s) => s.role === "replica" && !s.healthy)!
              assert.isString(out.reason)
              assert.isAbove(out.reason!.length, 0)
              assert.isTrue(servers.filter((s) => s.role !== "replica" || s.name !== out.name).every((s) => s.healthy))
              const seen: Array<Seen> = []
              for (let i = 0; i < 20; i++) {
                const r = yield* read(id, { consistency: "replica" })
                seen.push(r)
                assert.strictEqual(r.port, healthy!.port, `read ${i + 1} avoids the lagging replica`)
                const ryw = yield* read(id)
                assert.notStrictEqual(ryw.port, lagging!.port)
                assert.strictEqual(ryw.v, v)
              }
              assert.notStrictEqual(seen[0]!.server, out.name, "the unhealthy one is the one that lags")
              const healthyGauge = gaugeValue("sessionfx_server_healthy", { engine: t.name, server: out.name })
              assert.strictEqual(yield* healthyGauge, 0, "sessionfx_server_healthy follows it out")
              yield* lagging!.startSqlThread
              yield* waitUntil("back in rotation", Effect.map(Engine.servers, brief), (ss) =>
                ss.every((s) => s.healthy)
              )
              assert.strictEqual(yield* healthyGauge, 1, "and back")
            })
          )
        })
    )

    it.scoped(
      "lag alone (MASTER_DELAY, both threads running) beyond maxReplicaLag takes a replica out; it is back once caught up",
      () =>
        Effect.gen(function* () {
          const { replicas } = yield* cluster
          const [delayed, healthy] = replicas
          yield* schema
          yield* withTopology({ healthCheckInterval: "200 millis", maxReplicaLag: "1 second" }, () =>
            Effect.gen(function* () {
              const id = freshId()
              const admin = yield* connect(delayed!.admin.url)
              const setDelay = (seconds: number) =>
                Effect.gen(function* () {
                  yield* query(admin, "STOP SLAVE")
                  yield* query(admin, `CHANGE MASTER TO MASTER_DELAY = ${seconds}`)
                  yield* query(admin, "START SLAVE")
                })
              yield* Effect.addFinalizer(() =>
                Effect.orDie(Effect.zipRight(setDelay(0), delayed!.waitCaughtUp("20 seconds")))
              )
              yield* setDelay(3600)
              yield* write(id, 1)
              const token = (yield* tokenNow)!
              const status = yield* delayed!.replicationStatus
              assert.isTrue(status.ioRunning && status.sqlRunning, "both threads run: Slave_running says nothing")
              assert.isFalse(yield* delayed!.waitForGtid(token, "300 millis"), "and yet it does not apply")
              let v = 1
              const servers = yield* waitUntil(
                "the delayed replica out",
                Effect.zipRight(write(id, ++v), Effect.map(Engine.servers, brief)),
                (ss) => ss.filter((s) => s.role === "replica" && !s.healthy).length === 1,
                { timeout: "15 seconds" }
              )
              const out = servers.find((s) => s.role === "replica" && !s.healthy)!
              assert.isAbove(out.reason?.length ?? 0, 0, "with a reason")
              if (out.lagMs !== undefined) assert.isAtLeast(out.lagMs, 1000, "its lag is beyond maxReplicaLag")
              for (let i = 0; i < 10; i++) {
                const r = yield* read(id, { consistency: "replica" })
                assert.strictEqual(r.port, healthy!.port, `read ${i + 1} avoids the delayed replica`)
              }
              yield* setDelay(0)
              assert.isTrue(yield* delayed!.waitCaughtUp("20 seconds"))
              yield* waitUntil("back in rotation", Effect.map(Engine.servers, brief), (ss) =>
                ss.every((s) => s.healthy)
              )
            })
          )
        })
    )

    it.scoped(
      "a replica that dies under a waiting read: the read falls back to the primary (replicaError) and the replica is out at once",
      () =>
        Effect.gen(function* () {
          const { primary, replicas } = yield* cluster
          yield* schema
          yield* withTopology({ readYourWritesTimeout: "20 seconds", healthCheckInterval: "1 minute" }, (t) =>
            Effect.gen(function* () {
              const id = freshId()
              yield* write(id, 1)
              for (const r of replicas) assert.isTrue(yield* r.waitCaughtUp("10 seconds"))
              yield* lagAll
              yield* write(id, 2)
              const errors0 = yield* fallbacks(t.name, "replicaError")
              const reader = yield* Effect.fork(read(id))
              const waits = yield* waitUntil(
                "the read's MASTER_GTID_WAIT in flight on a replica",
                Effect.forEach(replicas, gtidWaitsOn),
                (ns) => ns.some((n) => n > 0)
              )
              const victim = replicas[waits.findIndex((n) => n > 0)]!
              yield* Effect.addFinalizer(() => (Option.isSome(victim.pid) ? Effect.void : Effect.orDie(victim.start)))
              yield* victim.kill
              const seen = yield* Fiber.join(reader).pipe(
                Effect.timeoutFail({ duration: "15 seconds", onTimeout: () => new Error("the read did not end") })
              )
              assert.deepStrictEqual([seen.port, seen.v], [primary.port, 2], "the read succeeded on the primary")
              assert.strictEqual((yield* fallbacks(t.name, "replicaError")) - errors0, 1, "counted as replicaError")
              const servers = brief(yield* Engine.servers)
              const out = servers.filter((s) => s.role === "replica" && !s.healthy)
              assert.strictEqual(
                out.length,
                1,
                `the replica whose connection failed is out at once (health checks are a minute apart): ${JSON.stringify(servers)}`
              )
              yield* victim.start
            })
          )
        })
    )

    it.scoped(
      "a replica that dies under a unit: the unit fails with ConnectionLost (retryable), the replica is out at once, the next reads succeed elsewhere",
      () =>
        Effect.gen(function* () {
          const { replicas } = yield* cluster
          yield* schema
          yield* withTopology({ healthCheckInterval: "1 minute" }, () =>
            Effect.gen(function* () {
              const id = freshId()
              yield* write(id, 1)
              for (const r of replicas) assert.isTrue(yield* r.waitCaughtUp("10 seconds"))
              const started = yield* Deferred.make<Seen>()
              const go = yield* Deferred.make<void>()
              const unit = yield* Effect.fork(
                Session.transact(
                  Effect.gen(function* () {
                    yield* Deferred.succeed(started, yield* look(id))
                    yield* Deferred.await(go)
                    return yield* look(id)
                  }),
                  { readOnly: true, consistency: "replica" }
                )
              )
              const first = yield* Deferred.await(started)
              const victim = replicas.find((r) => r.port === first.port)
              assert.isDefined(victim, `the unit runs on a replica (port ${first.port})`)
              yield* Effect.addFinalizer(() =>
                Option.isSome(victim!.pid)
                  ? Effect.void
                  : Effect.orDie(Effect.zipRight(victim!.start, victim!.waitCaughtUp("20 seconds")))
              )
              yield* victim!.kill
              yield* Deferred.succeed(go, undefined)
              const error = yield* Effect.flip(Fiber.join(unit))
              assert.strictEqual((error as { _tag: string })._tag, "ConnectionLost", String((error as any).message))
              assert.isTrue(SessionError.isRetryable(error as SessionError.SessionError))
              const servers = brief(yield* Engine.servers)
              const status = servers.find((s) => s.name === first.server)
              assert.isFalse(
                status?.healthy,
                `the replica whose connection failed is out at once (health checks are a minute apart): ${JSON.stringify(servers)}`
              )
              for (let i = 0; i < 10; i++) {
                const r = yield* read(id, { consistency: "replica" })
                assert.notStrictEqual(r.port, victim!.port)
                assert.strictEqual(r.v, 1)
              }
              yield* victim!.start
              assert.isTrue(yield* victim!.waitCaughtUp("20 seconds"))
            })
          )
        })
    )

    it.scoped("with retry, a unit whose replica dies under it re-runs on another server and succeeds", () =>
      Effect.gen(function* () {
        const { replicas } = yield* cluster
        yield* schema
        yield* withTopology({ healthCheckInterval: "1 minute" }, () =>
          Effect.gen(function* () {
            const id = freshId()
            yield* write(id, 8)
            for (const r of replicas) assert.isTrue(yield* r.waitCaughtUp("10 seconds"))
            const started = yield* Deferred.make<Seen>()
            const go = yield* Deferred.make<void>()
            const attempts: Array<Seen> = []
            const unit = yield* Effect.fork(
              Session.transact(
                Effect.gen(function* () {
                  const seen = yield* look(id)
                  attempts.push(seen)
                  if (attempts.length === 1) {
                    yield* Deferred.succeed(started, seen)
                    yield* Deferred.await(go)
                  }
                  return yield* look(id)
                }),
                { readOnly: true, consistency: "replica", retry: true }
              )
            )
            const first = yield* Deferred.await(started)
            const victim = replicas.find((r) => r.port === first.port)
            assert.isDefined(victim, `the unit runs on a replica (port ${first.port})`)
            yield* Effect.addFinalizer(() =>
              Option.isSome(victim!.pid)
                ? Effect.void
                : Effect.orDie(Effect.zipRight(victim!.start, victim!.waitCaughtUp("20 seconds")))
            )
            yield* victim!.kill
            yield* Deferred.succeed(go, undefined)
            const done = yield* Fiber.join(unit)
            assert.strictEqual(attempts.length, 2, "one re-run")
            assert.notStrictEqual(done.port, victim!.port, "on another server")
            assert.strictEqual(done.v, 8)
            yield* victim!.start
            assert.isTrue(yield* victim!.waitCaughtUp("20 seconds"))
          })
        )
      })
    )

    it.scoped(
      "a killed replica: reads keep succeeding, it is reported unhealthy, and healthy again a few check intervals after it restarts",
      () =>
        Effect.gen(function* () {
          const { replicas } = yield* cluster
          const [victim, survivor] = replicas
          yield* schema
          yield* withTopology({ healthCheckInterval: "200 millis" }, () =>
            Effect.gen(function* () {
              const id = freshId()
              yield* write(id, 1)
              let restarted = false
              yield* Effect.addFinalizer(() =>
                restarted
                  ? Effect.void
                  : Effect.orDie(Effect.zipRight(victim!.start, victim!.waitCaughtUp("20 seconds")))
              )
              yield* victim!.kill
              for (let i = 0; i < 20; i++) {
                const r = yield* read(id, { consistency: i % 2 === 0 ? "replica" : "read-your-writes" })
                assert.strictEqual(r.v, 1, `read ${i + 1}`)
                assert.notStrictEqual(r.port, victim!.port)
              }
              const servers = yield* waitUntil("the killed replica out", Effect.map(Engine.servers, brief), (ss) =>
                ss.some((s) => s.role === "replica" && !s.healthy)
              )
              const out = servers.filter((s) => s.role === "replica" && !s.healthy)
              assert.strictEqual(out.length, 1, JSON.stringify(servers))
              assert.isAbove(out[0]!.reason?.length ?? 0, 0, "with a reason")
              yield* victim!.start
              restarted = true
              const [took] = yield* Effect.timed(
                waitUntil(
                  "the restarted replica back",
                  Effect.map(Engine.servers, brief),
                  (ss) => ss.every((s) => s.healthy),
                  { timeout: "5 seconds" }
                )
              )
              console.log(`topology: a restarted replica back in rotation ${Duration.toMillis(took)} ms after start`)
              assert.isTrue(yield* victim!.waitCaughtUp("20 seconds"))
              assert.isTrue(yield* survivor!.waitCaughtUp("20 seconds"))
            })
          )
        })
    )

    it.scoped(
      "a replica whose connections fail is taken out at once, without waiting for a health check (both killed: reads go to the primary)",
      () =>
        Effect.gen(function* () {
          const { primary, replicas } = yield* cluster
          yield* schema
          yield* withTopology({ healthCheckInterval: "1 minute" }, (t) =>
            Effect.gen(function* () {
              const id = freshId()
              yield* write(id, 4)
              for (const r of replicas) assert.isTrue(yield* r.waitCaughtUp("10 seconds"))
              yield* Effect.addFinalizer(() =>
                Effect.orDie(
                  Effect.forEach(replicas, (r) =>
                    Effect.gen(function* () {
                      if (Option.isNone(r.pid)) yield* r.start
                      yield* r.waitCaughtUp("20 seconds")
                    })
                  )
                )
              )
              const errors0 = yield* fallbacks(t.name, "replicaError")
              const none0 = yield* fallbacks(t.name, "noHealthyReplica")
              for (const r of replicas) yield* r.kill
              for (let i = 0; i < 10; i++) {
                const seen = yield* read(id, { consistency: "replica" })
                assert.deepStrictEqual([seen.port, seen.v], [primary.port, 4], `read ${i + 1}`)
              }
              const servers = brief(yield* Engine.servers)
              assert.isTrue(
                servers.filter((s) => s.role === "replica").every((s) => !s.healthy),
                `both replicas out at once (no health check ran): ${JSON.stringify(servers)}`
              )
              // the pools see their connections closed by the kill and take the replicas out before the first read
              // needs them (noHealthyReplica); a read that still picked one fails to connect (replicaError)
              const errors = (yield* fallbacks(t.name, "replicaError")) - errors0
              const none = (yield* fallbacks(t.name, "noHealthyReplica")) - none0
              assert.strictEqual(errors + none, 10, `every read is a counted fallback (${errors} + ${none})`)
              assert.isAtLeast(none, 8, "the replicas were out by then")
              for (const r of replicas) yield* r.start
            })
          )
        })
    )
  }
)
