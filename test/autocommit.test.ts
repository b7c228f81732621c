/**
 * Units on connections with autocommit off (issue 21): no START TRANSACTION travels, the server opens the unit's
 * transaction at its first statement. Tried against a real server where it could break: the first statement fails
 * (it has opened the transaction and holds its locks all the same), it is interrupted while it waits for a lock, the
 * user switches autocommit on inside a unit, the server's own default is autocommit off. Every check reads the
 * server's state from a connection of its own (superuser), never through the code under test.
 */
import { assert, layer } from "@effect/vitest"
import { Session } from "@sessionfx/session"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Admin from "./support/admin.js"
import {
  adminQuery,
  bounded,
  countId,
  eventually,
  expectTag,
  freshId,
  running,
  serverLayer,
  sql,
  suiteOptions,
  theServer,
  trxPoll,
  withEngine
} from "./support/unit.js"

const schema = [`CREATE TABLE IF NOT EXISTS items (id INT PRIMARY KEY, label VARCHAR(200) NOT NULL DEFAULT 'x')`]

const suite = (args: ReadonlyArray<string>) =>
  Layer.effectDiscard(Effect.forEach(schema, (s) => adminQuery(s), { discard: true })).pipe(
    Layer.provideMerge(serverLayer(args))
  )

const insert = (id: number, label = "x") =>
  Effect.flatMap(sql, (s) => s`INSERT INTO items (id, label) VALUES (${id}, ${label})`)

/** `@@in_transaction` on the unit's own connection (MariaDB): the server's word, not sessionfx's. */
const inTransaction = Effect.flatMap(sql, (s) =>
  Effect.map(s<{ t: number }>`SELECT @@in_transaction AS t`, (rows) => Number(rows[0]!.t) === 1)
)

/** Transactions InnoDB has open for connection `id`. */
const trxOf = (id: number) =>
  Effect.map(
    adminQuery<{ n: string }>("SELECT COUNT(*) AS n FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = ?", [
      id
    ]),
    (rows) => Number(rows[0]?.n ?? 0)
  )

/** Statements the server received whose text holds `text` (the general log as a table). */
const received = (text: string) =>
  Effect.map(
    adminQuery<{ n: string }>(
      "SELECT COUNT(*) AS n FROM mysql.general_log WHERE argument LIKE ? AND argument NOT LIKE '%general_log%'",
      [`%${text}%`]
    ),
    (rows) => Number(rows[0]?.n ?? 0)
  )

layer(suite(["--general-log=ON", "--log-output=TABLE"]), suiteOptions)("autocommit off", (it) => {
  it.effect(
    "units send no START TRANSACTION: the first statement opens the transaction, invisible to others until COMMIT",
    () =>
      withEngine(
        Effect.gen(function* () {
          const before = yield* received("START TRANSACTION")
          const ids = [freshId(), freshId(), freshId()]
          for (const id of ids) {
            const seen = yield* Session.transact(
              Effect.gen(function* () {
                yield* insert(id)
                const open = yield* inTransaction
                // read by the superuser while the unit is open: nothing committed yet
                return { open, others: yield* countId("items", id) }
              })
            )
            assert.deepStrictEqual(seen, { open: true, others: 0 }, "the first statement ran inside the transaction")
            assert.strictEqual(yield* countId("items", id), 1, "committed by the unit's COMMIT")
          }
          assert.strictEqual(yield* received("START TRANSACTION"), before, "no START TRANSACTION was sent")
          // a failed unit leaves nothing, also when its only statement was the one that opened the transaction
          const failed = freshId()
          const exit = yield* Effect.exit(Session.transact(Effect.zipRight(insert(failed), Effect.fail("boom"))))
          assert.isTrue(Exit.isFailure(exit))
          assert.strictEqual(yield* countId("items", failed), 0)
        }),
        { pool: { size: 1 } }
      )
  )

  it.effect(
    "a first statement that fails has opened the transaction and holds its lock: caught, the unit goes on in it; uncaught, ROLLBACK releases the lock",
    () =>
      withEngine(
        Effect.gen(function* () {
          const taken = freshId()
          yield* adminQuery("INSERT INTO items (id) VALUES (?)", [taken])
          // caught: the duplicate's failure is the statement's own, the unit commits the rest
          const next = freshId()
          yield* Session.transact(
            Effect.gen(function* () {
              const dup = yield* Effect.either(insert(taken))
              assert.strictEqual(dup._tag, "Left")
              assert.isTrue(yield* inTransaction, "the failed first statement opened the transaction on the server")
              yield* insert(next)
            })
          )
          assert.strictEqual(yield* countId("items", next), 1)
          // uncaught: the unit fails with DuplicateKey and nothing of it is left open on the server
          const exit = yield* Effect.exit(Session.transact(insert(taken)))
          expectTag(exit, ["DuplicateKey"], "the unit's only statement failed")
          // the duplicate's shared lock is gone: the superuser deletes the row without waiting
          yield* bounded(adminQuery("DELETE FROM items WHERE id = ?", [taken]), 5_000, "the row lock was released")
          assert.strictEqual(yield* countId("items", taken), 0)
        }),
        { pool: { size: 1 } }
      )
  )

  it.effect(
    "interrupted while its first statement waits for a lock: KILL QUERY, ROLLBACK; the connection's next unit starts clean",
    () =>
      Effect.gen(function* () {
        const server = yield* theServer
        const id = freshId()
        yield* adminQuery("INSERT INTO items (id, label) VALUES (?, 'before')", [id])
        yield* Effect.scoped(
          Effect.gen(function* () {
            // another connection holds the row
            const holder = yield* Admin.connection(server)
            yield* Effect.promise(() => holder.query("BEGIN"))
            yield* Effect.promise(() => holder.query("UPDATE items SET label = 'holder' WHERE id = ?", [id]))
            yield* withEngine(
              Effect.gen(function* () {
                const thread = yield* Deferred.make<number>()
                const unit = yield* Effect.fork(
                  Session.transact(
                    Effect.gen(function* () {
                      yield* Deferred.succeed(thread, yield* Session.connectionId)
                      yield* Effect.flatMap(sql, (s) => s`UPDATE items SET label = 'blocked-first' WHERE id = ${id}`)
                    })
                  )
                )
                const conn = yield* Deferred.await(thread)
                yield* eventually(
                  Effect.map(running("blocked-first"), (n) => n === 1),
                  "the first statement waits"
                )
                yield* Fiber.interrupt(unit)
                yield* Effect.promise(() => holder.query("ROLLBACK"))
                yield* eventually(
                  Effect.map(trxOf(conn), (n) => n === 0),
                  "nothing of the interrupted unit is open",
                  10,
                  trxPoll
                )
                // the one connection of the pool: its next unit starts with nothing open
                const clean = yield* Session.transact(inTransaction)
                assert.isFalse(clean, "the next unit found no transaction left open")
              }),
              { pool: { size: 1 } }
            )
          })
        )
        const rows = yield* adminQuery<{ label: string }>("SELECT label FROM items WHERE id = ?", [id])
        assert.strictEqual(rows[0]?.label, "before", "the interrupted statement left nothing")
      })
  )

  it.effect(
    "a user's SET autocommit = 1 inside a unit commits what came before (as DDL does); the rest of the unit is still its own",
    () =>
      withEngine(
        Effect.gen(function* () {
          const a = freshId()
          const b = freshId()
          const exit = yield* Effect.exit(
            Session.transact(
              Effect.gen(function* () {
                yield* insert(a)
                yield* Effect.flatMap(sql, (s) => s`SET autocommit = 1`)
                yield* insert(b)
                assert.isTrue(yield* inTransaction, "the rest of the unit runs inside a transaction")
                return yield* Effect.fail("boom")
              })
            )
          )
          assert.isTrue(Exit.isFailure(exit))
          assert.strictEqual(yield* countId("items", a), 1, "committed by the user's SET autocommit = 1")
          assert.strictEqual(yield* countId("items", b), 0, "rolled back with the unit")
          // the connection was reset: the next unit and a statement outside units behave as usual
          const c = freshId()
          yield* Session.transact(insert(c))
          const d = freshId()
          yield* insert(d)
          assert.strictEqual(yield* countId("items", c), 1)
          assert.strictEqual(yield* countId("items", d), 1)
        }),
        { pool: { size: 1 } }
      )
  )
  it.effect(
    "a result row with a column named serverStatus never speaks for the server: the unit still rolls back, and nothing of it reaches the next unit",
    () =>
      withEngine(
        Effect.gen(function* () {
          const x = freshId()
          const exit = yield* Effect.exit(
            Session.transact(
              Effect.gen(function* () {
                yield* insert(x)
                yield* Effect.flatMap(sql, (s) => s`SELECT 0 AS serverStatus, ${x} AS id`)
                return yield* Effect.fail("boom")
              })
            )
          )
          assert.isTrue(Exit.isFailure(exit))
          const y = freshId()
          yield* Session.transact(insert(y))
          assert.strictEqual(yield* countId("items", y), 1)
          assert.strictEqual(yield* countId("items", x), 0, "the failed unit's write was committed by the next unit")
        }),
        { pool: { size: 1 } }
      )
  )

  it.effect(
    "the server's default turned to autocommit off while the engine runs: a reset connection still commits statements outside units",
    () =>
      withEngine(
        Effect.gen(function* () {
          const before = freshId()
          yield* insert(before)
          assert.strictEqual(yield* countId("items", before), 1)
          yield* adminQuery("SET GLOBAL autocommit = 0")
          // a user variable marks the connection for a reset: it comes back with the server's new default
          yield* Effect.flatMap(sql, (s) => s`SET @marker = 1`)
          const after = freshId()
          yield* insert(after)
          assert.strictEqual(yield* countId("items", after), 1, "a statement outside units committed after the reset")
          const unit = freshId()
          yield* Session.transact(insert(unit))
          assert.strictEqual(yield* countId("items", unit), 1)
        }).pipe(Effect.ensuring(Effect.orDie(adminQuery("SET GLOBAL autocommit = 1")))),
        { pool: { size: 1 } }
      )
  )
})

layer(suite(["--autocommit=0"]), suiteOptions)("a server whose default is autocommit off", (it) => {
  it.effect("statements outside units still commit on their own; units commit or roll back as they decide", () =>
    withEngine(
      Effect.gen(function* () {
        const [global] = yield* adminQuery<{ ac: number }>("SELECT @@global.autocommit AS ac")
        assert.strictEqual(Number(global?.ac), 0, "the server's default is autocommit off")
        const outside = freshId()
        yield* insert(outside)
        assert.strictEqual(yield* countId("items", outside), 1, "a statement outside units committed")
        const unit = freshId()
        yield* Session.transact(insert(unit))
        assert.strictEqual(yield* countId("items", unit), 1)
        const failed = freshId()
        yield* Effect.exit(Session.transact(Effect.zipRight(insert(failed), Effect.fail("boom"))))
        assert.strictEqual(yield* countId("items", failed), 0)
        const after = freshId()
        yield* insert(after)
        assert.strictEqual(yield* countId("items", after), 1, "and again after a unit on the same connection")
      }),
      { pool: { size: 1 } }
    )
  )
})
