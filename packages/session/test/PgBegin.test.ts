/**
 * The PostgreSQL driver sends a unit's BEGIN in the same write as the unit's first command (`driver/pg/begin.ts`).
 * Proven against a real server, on the driver's own connections: one write and one ReadyForQuery for both, the
 * statement's values and errors as before, the statement never run when BEGIN fails, streams and resets after a
 * BEGIN not yet sent. And a failed command answered only with the ReadyForQuery that ends it.
 */
import { assert, layer } from "@effect/vitest"
import { PgServer } from "@sessionfx/testing"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as Pg from "pg"
import { connector } from "../src/internal/driver/pg/connection.js"
import type { RawConnection, Reply } from "../src/internal/driver/types.js"

interface Sent {
  writes: number
  ready: Array<string>
}

const open = (url: string) =>
  Effect.acquireRelease(
    Effect.async<{ conn: RawConnection; sent: Sent }, unknown>((resume) =>
      connector({ connectionString: url })((err, conn) => {
        if (err || conn === undefined) return resume(Effect.fail(err))
        // every write to the socket, and the status of every ReadyForQuery
        const protocol = (conn as unknown as { client: { connection: any } }).client.connection
        const sent: Sent = { writes: 0, ready: [] }
        const socket = protocol.stream
        for (const method of ["_write", "_writev"] as const) {
          const original = socket[method].bind(socket)
          socket[method] = (...args: Array<unknown>) => {
            sent.writes++
            return original(...args)
          }
        }
        // first of the listeners: recorded before the driver acts on it
        protocol.prependListener("readyForQuery", (msg: { status: string }) => sent.ready.push(msg.status))
        resume(Effect.succeed({ conn, sent }))
      })
    ),
    ({ conn }) => Effect.sync(() => conn.destroy())
  )

const run = (conn: RawConnection, sql: string, values: ReadonlyArray<unknown> = []) =>
  Effect.async<Reply, { readonly code?: string }>((resume) =>
    conn.execute(sql, values, false, (err, reply) =>
      resume(err ? Effect.fail(err as { code?: string }) : Effect.succeed(reply!))
    )
  )

const streamed = (conn: RawConnection, sql: string) =>
  Effect.async<{ rows: Array<unknown>; reply: Reply }, { readonly code?: string }>((resume) => {
    const rows: Array<unknown> = []
    conn.stream(sql, [], {
      row: (row) => rows.push(row),
      end: (err, reply) => resume(err ? Effect.fail(err as { code?: string }) : Effect.succeed({ rows, reply: reply! }))
    })
  })

const count = (url: string, table: string) =>
  Effect.promise(async () => {
    const client = new Pg.Client({ connectionString: url })
    await client.connect()
    try {
      const { rows } = await client.query<{ n: string }>(`SELECT count(*)::text AS n FROM ${table}`)
      return Number(rows[0]!.n)
    } finally {
      await client.end()
    }
  })

layer(PgServer.layer(), { timeout: 120_000, excludeTestServices: true })(
  "PostgreSQL BEGIN with the first command",
  (it) => {
    const url = Effect.map(PgServer.PgServer, (s) => Redacted.value(s.url))

    it.scoped(
      "BEGIN and the first statement: one write, one ReadyForQuery, the statement's rows, in the transaction",
      () =>
        Effect.gen(function* () {
          const { conn, sent } = yield* open(yield* url)
          const begun = yield* run(conn, "BEGIN")
          assert.strictEqual(begun.inTransaction, true)
          assert.deepStrictEqual(begun.rows, [])
          assert.deepStrictEqual(sent, { writes: 0, ready: [] }, "BEGIN is not sent on its own")
          const reply = yield* run(
            conn,
            "SELECT $1::int AS n, $2::text AS s, txid_current_if_assigned() IS NULL AS fresh",
            [7, "x"]
          )
          assert.deepStrictEqual(reply.rows, [{ n: 7, s: "x", fresh: true }])
          assert.strictEqual(reply.inTransaction, true)
          assert.deepStrictEqual(sent, { writes: 1, ready: ["T"] })
          // the transaction BEGIN opened: a snapshot's xid is assigned to it, and ROLLBACK ends it
          const xid = yield* run(conn, "SELECT txid_current()::text AS x")
          const again = yield* run(conn, "SELECT txid_current()::text AS x")
          assert.deepStrictEqual(again.rows, xid.rows)
          const rolled = yield* run(conn, "ROLLBACK")
          assert.strictEqual(rolled.inTransaction, false)
          assert.deepStrictEqual(sent.ready, ["T", "T", "T", "I"])
        })
    )

    it.scoped("a failing first statement: its own error, the transaction failed (E), nothing of it kept", () =>
      Effect.gen(function* () {
        const u = yield* url
        const { conn, sent } = yield* open(u)
        yield* run(conn, "CREATE TABLE IF NOT EXISTS begin_fail (id INT PRIMARY KEY)")
        yield* run(conn, "BEGIN")
        const err = yield* Effect.flip(run(conn, "INSERT INTO begin_fail VALUES (1), (1)"))
        assert.strictEqual(err.code, "23505")
        // the probe (the empty statement): the server says the transaction is failed
        const probe = yield* run(conn, "")
        assert.strictEqual(probe.inTransaction, true)
        assert.deepStrictEqual(sent.ready.slice(-2), ["E", "E"])
        const next = yield* Effect.flip(run(conn, "SELECT 1"))
        assert.strictEqual(next.code, "25P02")
        yield* run(conn, "ROLLBACK")
        assert.strictEqual(yield* count(u, "begin_fail"), 0)
      })
    )

    it.scoped("a BEGIN that fails: the statement after it never runs, and gets BEGIN's error", () =>
      Effect.gen(function* () {
        const u = yield* url
        const { conn, sent } = yield* open(u)
        yield* run(conn, "CREATE TABLE IF NOT EXISTS begin_refused (id INT PRIMARY KEY)")
        yield* run(conn, "BEGIN ISOLATION LEVEL NONSENSE")
        const err = yield* Effect.flip(run(conn, "INSERT INTO begin_refused VALUES (1)"))
        assert.strictEqual(err.code, "42601")
        assert.strictEqual(sent.ready.at(-1), "I")
        assert.strictEqual(yield* count(u, "begin_refused"), 0)
        // the connection goes on: the next unit's BEGIN is deferred and sent with its statement as usual
        yield* run(conn, "BEGIN")
        yield* run(conn, "INSERT INTO begin_refused VALUES (2)")
        const committed = yield* run(conn, "COMMIT")
        assert.strictEqual(committed.inTransaction, false)
        assert.strictEqual(yield* count(u, "begin_refused"), 1)
      })
    )

    it.scoped("a stream as the first command: its rows, inside the transaction (rolled back with it)", () =>
      Effect.gen(function* () {
        const u = yield* url
        const { conn } = yield* open(u)
        yield* run(conn, "CREATE TABLE IF NOT EXISTS begin_stream (id INT PRIMARY KEY)")
        yield* run(conn, "BEGIN")
        const { rows, reply } = yield* streamed(
          conn,
          "INSERT INTO begin_stream SELECT g FROM generate_series(1, 300) g RETURNING id"
        )
        assert.strictEqual(rows.length, 300)
        assert.strictEqual(reply.inTransaction, true)
        assert.strictEqual(yield* count(u, "begin_stream"), 0, "not committed: it ran inside the transaction")
        yield* run(conn, "ROLLBACK")
        assert.strictEqual(yield* count(u, "begin_stream"), 0)
        // after a BEGIN that fails, the stream's statement is not sent at all
        yield* run(conn, "BEGIN ISOLATION LEVEL NONSENSE")
        const err = yield* Effect.flip(streamed(conn, "INSERT INTO begin_stream VALUES (1) RETURNING id"))
        assert.strictEqual(err.code, "42601")
        assert.strictEqual(yield* count(u, "begin_stream"), 0)
        const after = yield* run(conn, "SELECT 1 AS one")
        assert.deepStrictEqual(after.rows, [{ one: 1 }])
        assert.strictEqual(after.inTransaction, false)
      })
    )

    it.scoped(
      "a reset after a BEGIN not yet sent: nothing was opened, the next statement runs outside a transaction",
      () =>
        Effect.gen(function* () {
          const { conn, sent } = yield* open(yield* url)
          yield* run(conn, "BEGIN")
          yield* Effect.async<void, unknown>((resume) =>
            conn.reset((err) => resume(err ? Effect.fail(err) : Effect.void))
          )
          const reply = yield* run(conn, "SELECT 1 AS one")
          assert.strictEqual(reply.inTransaction, false)
          assert.deepStrictEqual(sent.ready, ["I", "I"])
        })
    )

    it.scoped(
      "a failed command is answered after the ReadyForQuery that ends it: the status is the server's, the client ready",
      () =>
        Effect.gen(function* () {
          const { conn, sent } = yield* open(yield* url)
          // node-postgres calls a query back at its ErrorResponse; the driver waits for the ReadyForQuery after it
          // (the server flushes an error before it goes idle and reports the status)
          const client = (conn as unknown as { client: { getTransactionStatus(): string; readyForQuery: boolean } })
            .client
          const failing = (sql: string) =>
            Effect.async<{ code: unknown; status: string; ready: boolean; readies: number }>((resume) =>
              conn.execute(sql, [], false, (err) =>
                resume(
                  Effect.succeed({
                    code: (err as { code?: unknown } | null)?.code,
                    status: client.getTransactionStatus(),
                    ready: client.readyForQuery,
                    readies: sent.ready.length
                  })
                )
              )
            )
          yield* run(conn, "BEGIN")
          yield* run(conn, "SELECT 1")
          const before = sent.ready.length
          const inUnit = yield* failing("SELECT 1/0")
          assert.deepStrictEqual(inUnit, { code: "22012", status: "E", ready: true, readies: before + 1 })
          const refused = yield* failing("SELECT 1")
          assert.deepStrictEqual(refused, { code: "25P02", status: "E", ready: true, readies: before + 2 })
          yield* run(conn, "ROLLBACK")
          const outside = yield* failing("SELECT 1/0")
          assert.deepStrictEqual(outside, { code: "22012", status: "I", ready: true, readies: before + 4 })
        })
    )
  }
)
