import { assert, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine, Session } from "@sessionfx/session"
import * as SessionError from "@sessionfx/session/SessionError"
import * as MysqlCluster from "@sessionfx/testing/MysqlCluster"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Mysql from "mysql2/promise"
import { classify, connect, gtidOf, query, rows } from "./support.js"

const value = (conn: Mysql.Connection, id: number) =>
  Effect.map(rows<{ readonly v: number }>(conn, "SELECT v FROM kv WHERE id = ?", [id]), (r) => r[0]?.v)

/** `MASTER_GTID_WAIT(gtid, seconds)` as the application user: 0 applied, -1 timed out. */
const masterGtidWait = (conn: Mysql.Connection, gtid: string, seconds: number) =>
  Effect.map(rows<{ readonly r: number | null }>(conn, "SELECT MASTER_GTID_WAIT(?, ?) AS r", [gtid, seconds]), (r) =>
    r[0]?.r === null ? null : Number(r[0]?.r)
  )

/** A primary connection that reports each commit's GTID in the OK packet. */
const primaryConnection = Effect.gen(function* () {
  const { primary } = yield* MysqlCluster.ReplicatedServers
  const conn = yield* connect(primary.url)
  yield* query(conn, "SET SESSION session_track_system_variables = 'last_gtid'")
  return conn
})

/** A write in a transaction on the primary; returns the GTID that its COMMIT's OK packet carries. */
const commitWrite = (conn: Mysql.Connection, id: number, v: number) =>
  Effect.gen(function* () {
    yield* query(conn, "BEGIN")
    yield* query(conn, "INSERT INTO kv (id, v) VALUES (?, ?) ON DUPLICATE KEY UPDATE v = VALUES(v)", [id, v])
    const commit = yield* query<Mysql.ResultSetHeader>(conn, "COMMIT")
    const gtid = gtidOf(commit)
    assert.isString(gtid, "COMMIT's OK packet carries last_gtid")
    return gtid!
  })

layer(MysqlCluster.layerReplicated({ replicas: 2 }), { timeout: "120 seconds", excludeTestServices: true })(
  "primary and 2 replicas",
  (it) => {
    it.scoped("replication runs on every replica; the primary writes, replicas are read-only", () =>
      Effect.gen(function* () {
        const { primary, replicas } = yield* MysqlCluster.ReplicatedServers
        assert.strictEqual(replicas.length, 2)
        const conn = yield* primaryConnection
        yield* query(conn, "CREATE TABLE kv (id INT PRIMARY KEY, v INT NOT NULL)")
        for (const replica of replicas) {
          const status = yield* replica.replicationStatus
          assert.isTrue(status.ioRunning && status.sqlRunning, `replica on port ${replica.port}: ${status.lastError}`)
          assert.notStrictEqual(replica.port, primary.port)
          const r = yield* connect(replica.url)
          const refused = yield* Effect.flip(query(r, "INSERT INTO kv VALUES (0, 0)"))
          assert.strictEqual(refused.errno, 1290, refused.message) // --read-only
          assert.strictEqual(classify(refused)._tag, "ReadOnlyTransaction")
        }
      })
    )

    it.scoped(
      "a commit's GTID comes in its OK packet; MASTER_GTID_WAIT on each replica returns 0 and the row is there",
      () =>
        Effect.gen(function* () {
          const { replicas } = yield* MysqlCluster.ReplicatedServers
          const conn = yield* primaryConnection
          const gtid = yield* commitWrite(conn, 1, 100)
          assert.match(gtid, /^0-1-\d+$/) // domain 0, server id 1 (the primary)
          const [position] = yield* rows<{ readonly pos: string }>(conn, "SELECT @@GLOBAL.gtid_binlog_pos AS pos")
          assert.strictEqual(position?.pos, gtid, "no extra query needed: the OK packet has the binlog position")
          // an autocommit write reports its GTID too; a transaction that changed nothing reports none
          const auto = yield* query<Mysql.ResultSetHeader>(conn, "UPDATE kv SET v = 101 WHERE id = 1")
          const autoGtid = gtidOf(auto)
          assert.isString(autoGtid)
          assert.notStrictEqual(autoGtid, gtid)
          yield* query(conn, "START TRANSACTION READ ONLY")
          yield* query(conn, "SELECT * FROM kv")
          assert.isUndefined(gtidOf(yield* query<Mysql.ResultSetHeader>(conn, "COMMIT")))
          for (const replica of replicas) {
            const r = yield* connect(replica.url)
            assert.strictEqual(yield* masterGtidWait(r, autoGtid!, 5), 0)
            assert.strictEqual(yield* value(r, 1), 101)
            assert.include((yield* replica.replicationStatus).gtidSlavePos, autoGtid!)
          }
          // MASTER_GTID_WAIT waits for gtid_slave_pos: on the primary itself it times out (-1), never call it there
          assert.strictEqual(yield* masterGtidWait(conn, autoGtid!, 0.2), -1)
        })
    )

    it.scoped(
      "with its SQL thread stopped a replica lags: the wait times out and the read is stale until it restarts",
      () =>
        Effect.gen(function* () {
          const { replicas } = yield* MysqlCluster.ReplicatedServers
          const [lagging, healthy] = replicas
          const conn = yield* primaryConnection
          yield* commitWrite(conn, 2, 1)
          assert.isTrue(yield* lagging!.waitCaughtUp("10 seconds"))
          yield* lagging!.stopSqlThread
          yield* Effect.addFinalizer(() => Effect.orDie(lagging!.startSqlThread))
          const gtid = yield* commitWrite(conn, 2, 2)
          const r = yield* connect(lagging!.url)
          assert.strictEqual(yield* masterGtidWait(r, gtid, 0.3), -1)
          assert.strictEqual(yield* value(r, 2), 1, "a stale read")
          const status = yield* lagging!.replicationStatus
          assert.isTrue(status.ioRunning)
          assert.isFalse(status.sqlRunning)
          assert.notInclude(status.gtidSlavePos, gtid)
          // the other replica is not affected
          const h = yield* connect(healthy!.url)
          assert.strictEqual(yield* masterGtidWait(h, gtid, 5), 0)
          assert.strictEqual(yield* value(h, 2), 2)
          yield* lagging!.startSqlThread
          assert.strictEqual(yield* masterGtidWait(r, gtid, 5), 0)
          assert.strictEqual(yield* value(r, 2), 2)
        })
    )

    it.scoped("a killed replica restarts and catches up with what the primary committed meanwhile", () =>
      Effect.gen(function* () {
        const { replicas } = yield* MysqlCluster.ReplicatedServers
        const replica = replicas[1]!
        const conn = yield* primaryConnection
        yield* replica.kill
        const gtid = yield* commitWrite(conn, 3, 3)
        yield* replica.start
        assert.isTrue(yield* replica.waitForGtid(gtid, "20 seconds"))
        const r = yield* connect(replica.url)
        assert.strictEqual(yield* value(r, 3), 3)
        const status = yield* replica.replicationStatus
        assert.isTrue(status.ioRunning && status.sqlRunning, status.lastError)
      })
    )

    it.scoped(
      "through the Engine: read-your-writes by hand (commit on the primary, wait for its GTID on a replica)",
      () =>
        Effect.gen(function* () {
          const { primary, replicas } = yield* MysqlCluster.ReplicatedServers
          const onPrimary = yield* Layer.build(Engine.layer({ url: primary.url, pool: { size: 2 } }))
          const onReplica = yield* Layer.build(Engine.layer({ url: replicas[0]!.url, pool: { size: 2 } }))
          yield* replicas[0]!.stopSqlThread
          yield* Effect.addFinalizer(() => Effect.orDie(replicas[0]!.startSqlThread))
          // the Engine does not hand out the commit's GTID yet: read the position right after the unit
          const gtid = yield* Effect.gen(function* () {
            const sql = yield* SqlClient.SqlClient
            yield* Session.transact(sql`INSERT INTO kv (id, v) VALUES (4, 4)`)
            const [row] = yield* sql<{ readonly pos: string }>`SELECT @@GLOBAL.gtid_binlog_pos AS pos`
            return row!.pos
          }).pipe(Effect.provide(onPrimary))
          const read = (wait: number) =>
            Session.transact(
              Effect.gen(function* () {
                const sql = yield* SqlClient.SqlClient
                const [waited] = yield* sql<{ readonly r: number }>`SELECT MASTER_GTID_WAIT(${gtid}, ${wait}) AS r`
                const found = yield* sql<{ readonly v: number }>`SELECT v FROM kv WHERE id = 4`
                return { waited: Number(waited?.r), v: found.length > 0 ? found[0]!.v : null }
              }),
              { readOnly: true }
            ).pipe(Effect.provide(onReplica))
          assert.deepStrictEqual(yield* read(0.2), { waited: -1, v: null }, "lagging: stale")
          yield* replicas[0]!.startSqlThread
          assert.deepStrictEqual(yield* read(5), { waited: 0, v: 4 }, "caught up: the write is seen")
          // a writing unit on a replica is refused by the server, typed and not retried
          const refused = yield* Effect.flip(
            Session.transact(
              Effect.flatMap(SqlClient.SqlClient, (sql) => sql`INSERT INTO kv (id, v) VALUES (5, 5)`),
              { retry: true }
            ).pipe(Effect.provide(onReplica))
          )
          assert.strictEqual(refused._tag, "ReadOnlyTransaction")
          assert.isFalse(SessionError.isRetryable(refused))
        })
    )
  }
)
