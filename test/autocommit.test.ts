/**
 * Units on connections with no transaction of their own (issue 21), on MariaDB and PostgreSQL from this one file:
 * on MariaDB autocommit is off and no START TRANSACTION travels (the server opens the unit's transaction at its first
 * statement); on PostgreSQL BEGIN travels in the same write as the first statement (counted at the wire in
 * packages/session/test/PgBegin.test.ts). Tried against a real server where it could break: the first statement fails
 * (it has opened the transaction all the same), it is interrupted while it waits for a lock, a result row looks like
 * the server's status. MariaDB only, said where: the general log, a user's `SET autocommit = 1`, the server's default
 * turned to autocommit off (PostgreSQL has no autocommit setting). Every check of the server's state is the server's
 * word, read from a connection of its own (superuser) or asked by the unit of the server, never sessionfx's.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { assert, layer, type Vitest } from "@effect/vitest"
import { Session } from "@sessionfx/session"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import { type DbName, DbTag, dialectsWith, withEngine } from "./support/db.js"
import { bounded, eventually, expectTag, freshId, suiteOptions, trxPoll } from "./support/unit.js"

/** An Engine (and its autocommit `SqlClient`) with one connection on the suite's server, for `effect`. */
const withOneConnection = <A, E, R>(effect: Effect.Effect<A, E, R>) => withEngine(effect, { pool: { size: 1 } })

const sql = SqlClient.SqlClient

const schema = `CREATE TABLE IF NOT EXISTS items (id INT PRIMARY KEY, label VARCHAR(200) NOT NULL DEFAULT 'x')`

const insert = (id: number, label = "x") =>
  Effect.flatMap(sql, (s) => s`INSERT INTO items (id, label) VALUES (${id}, ${label})`)

/** One statement as the superuser (its own connection); a failure is a defect of the test. */
const adminQuery = <A = Record<string, any>>(statement: string, params: ReadonlyArray<unknown> = []) =>
  Effect.flatMap(DbTag, (db) => Effect.orDie(db.query<A>(statement, params)))

/** Committed rows with `id`, as the server sees them. */
const countId = (id: number) =>
  Effect.map(adminQuery<{ n: string | number }>("SELECT COUNT(*) AS n FROM items WHERE id = ?", [id]), (rows) =>
    Number(rows[0]?.n ?? 0)
  )

/**
 * Whether the server has a transaction open on connection `id` (InnoDB's trx list / pg_stat_activity: a failed
 * transaction has no `xact_start` any more, its state says it waits for ROLLBACK).
 */
const openOn = (name: DbName, id: number) =>
  Effect.map(
    adminQuery<{ n: string | number }>(
      name === "postgres"
        ? "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE pid = ?::int AND (xact_start IS NOT NULL OR state = 'idle in transaction (aborted)')"
        : "SELECT COUNT(*) AS n FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = ?",
      [id]
    ),
    (rows) => Number(rows[0]?.n ?? 0) > 0
  )

/**
 * Whether the unit's connection is inside a transaction now, by the server: MariaDB's `@@in_transaction` asked on the
 * connection; on PostgreSQL (where a statement is always in a transaction, its own or the unit's) pg_stat_activity
 * of the unit's backend, asked from outside while the unit is between statements.
 */
const inTransaction = (name: DbName) =>
  Effect.gen(function* () {
    if (name === "postgres") return yield* openOn(name, yield* Session.connectionId)
    const rows = yield* (yield* sql)<{ t: number }>`SELECT @@in_transaction AS t`
    return Number(rows[0]!.t) === 1
  })

/** Statements the server received whose text holds `text` (MariaDB's general log as a table). */
const received = (text: string) =>
  Effect.map(
    adminQuery<{ n: string }>(
      "SELECT COUNT(*) AS n FROM mysql.general_log WHERE argument LIKE ? AND argument NOT LIKE '%general_log%'",
      [`%${text}%`]
    ),
    (rows) => Number(rows[0]?.n ?? 0)
  )

const scenarios = (it: Vitest.MethodsNonLive<DbTag, true>, name: DbName) => {
  const opens = name === "mariadb" ? "no START TRANSACTION is sent" : "BEGIN travels with it"
  it.effect(
    `units: the first statement runs inside the unit's transaction (${opens}), invisible to others until COMMIT`,
    () =>
      withOneConnection(
        Effect.gen(function* () {
          // MariaDB: the general log shows no START TRANSACTION (PostgreSQL's BEGIN is counted in PgBegin.test.ts)
          const before = name === "mariadb" ? yield* received("START TRANSACTION") : 0
          const ids = [freshId(), freshId(), freshId()]
          for (const id of ids) {
            const seen = yield* Session.transact(
              Effect.gen(function* () {
                yield* insert(id)
                const open = yield* inTransaction(name)
                // read by the superuser while the unit is open: nothing committed yet
                return { open, others: yield* countId(id) }
              })
            )
            assert.deepStrictEqual(seen, { open: true, others: 0 }, "the first statement ran inside the transaction")
            assert.strictEqual(yield* countId(id), 1, "committed by the unit's COMMIT")
          }
          if (name === "mariadb") {
            assert.strictEqual(yield* received("START TRANSACTION"), before, "no START TRANSACTION was sent")
          }
          // a failed unit leaves nothing, also when its only statement was the one that opened the transaction
          const failed = freshId()
          const exit = yield* Effect.exit(Session.transact(Effect.zipRight(insert(failed), Effect.fail("boom"))))
          assert.deepStrictEqual(exit, Exit.fail("boom"))
          assert.strictEqual(yield* countId(failed), 0)
        })
      )
  )

  // the databases differ here: a failed statement fails a PostgreSQL transaction (25P02 after it, COMMIT refused);
  // on MariaDB only the statement fails and the unit may go on
  const caught =
    name === "mariadb"
      ? "caught, the unit goes on in it and commits"
      : "caught, the transaction is failed (25P02 after it, COMMIT refused: CommitFailed)"
  it.effect(
    `a first statement that fails has opened the transaction: ${caught}; uncaught, ROLLBACK releases its locks`,
    () =>
      withOneConnection(
        Effect.gen(function* () {
          const taken = freshId()
          yield* adminQuery("INSERT INTO items (id) VALUES (?)", [taken])
          const next = freshId()
          const exit = yield* Effect.exit(
            Session.transact(
              Effect.gen(function* () {
                const dup = yield* Effect.exit(insert(taken))
                expectTag(dup, ["DuplicateKey"], "the failed first statement")
                assert.isTrue(yield* inTransaction(name), "the failed first statement opened the transaction")
                const after = yield* Effect.exit(insert(next))
                if (name === "postgres") {
                  const e = expectTag(after, ["SqlError"], "a statement after the failed one")
                  assert.include(JSON.stringify(e), "25P02", "in a failed transaction")
                }
              })
            )
          )
          if (name === "postgres") {
            expectTag(exit, ["CommitFailed"], "a failed PostgreSQL transaction cannot commit")
            assert.strictEqual(yield* countId(next), 0)
          } else {
            assert.isTrue(Exit.isSuccess(exit), "the unit committed the rest")
            assert.strictEqual(yield* countId(next), 1)
          }
          // uncaught: the unit fails with DuplicateKey and nothing of it is left open on the server
          const uncaught = yield* Effect.exit(Session.transact(insert(taken)))
          expectTag(uncaught, ["DuplicateKey"], "the unit's only statement failed")
          // the duplicate's lock (InnoDB: a shared lock on the row) is gone: the superuser deletes it without waiting
          yield* bounded(adminQuery("DELETE FROM items WHERE id = ?", [taken]), 5_000, "the row lock was released")
          assert.strictEqual(yield* countId(taken), 0)
        })
      )
  )

  const stop = name === "mariadb" ? "KILL QUERY" : "pg_cancel_backend"
  it.effect(
    `interrupted while its first statement waits for a lock: ${stop}, ROLLBACK; the connection's next unit starts clean`,
    () =>
      Effect.gen(function* () {
        const db = yield* DbTag
        const id = freshId()
        yield* adminQuery("INSERT INTO items (id, label) VALUES (?, 'before')", [id])
        yield* withOneConnection(
          Effect.gen(function* () {
            // another connection (the superuser's) holds the row until `holder` is closed
            const holder = yield* Scope.make()
            yield* Scope.extend(db.holdLocks(`UPDATE items SET label = 'holder' WHERE id = ${id}`), holder)
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
              Effect.map(db.lockWaits, (n) => n === 1),
              "the first statement waits for the row lock",
              10,
              name === "mariadb" ? trxPoll : 10
            )
            yield* Fiber.interrupt(unit)
            yield* Scope.close(holder, Exit.void)
            yield* eventually(
              Effect.map(openOn(name, conn), (open) => !open),
              "nothing of the interrupted unit is open",
              10,
              name === "mariadb" ? trxPoll : 10
            )
            // the one connection of the pool: its next unit starts with nothing of the interrupted one open
            if (name === "mariadb") {
              assert.isFalse(yield* Session.transact(inTransaction(name)), "a transaction was left open")
            } else {
              // a transaction left open would have begun before the interruption: the next unit's began after it
              const [mark] = yield* adminQuery<{ t: Date }>("SELECT clock_timestamp() AS t")
              const began = yield* Session.transact(
                Effect.flatMap(sql, (s) => s<{ t: Date }>`SELECT transaction_timestamp() AS t`)
              )
              assert.isTrue(began[0]!.t.getTime() >= mark!.t.getTime(), "the next unit ran in an older transaction")
            }
          })
        )
        const rows = yield* adminQuery<{ label: string }>("SELECT label FROM items WHERE id = ?", [id])
        assert.strictEqual(rows[0]?.label, "before", "the interrupted statement left nothing")
      })
  )

  // mysql2 reads the server's status flags from OK packets; a row with the same column name must never be taken for
  // them. On PostgreSQL the status is ReadyForQuery's: the same check, that a row never speaks for the server.
  it.effect(
    "a result row with a column named serverStatus never speaks for the server: the unit still rolls back, and nothing of it reaches the next unit",
    () =>
      withOneConnection(
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
          assert.deepStrictEqual(exit, Exit.fail("boom"))
          const y = freshId()
          yield* Session.transact(insert(y))
          assert.strictEqual(yield* countId(y), 1)
          assert.strictEqual(yield* countId(x), 0, "the failed unit's write was committed by the next unit")
        })
      )
  )

  if (name === "mariadb") mariadbOnly(it)
}

/** MySQL's own autocommit setting: PostgreSQL has none (`SET autocommit` is an unknown parameter there). */
const mariadbOnly = (it: Vitest.MethodsNonLive<DbTag, true>) => {
  it.effect(
    "a user's SET autocommit = 1 inside a unit commits what came before (as DDL does); the rest of the unit is still its own",
    () =>
      withOneConnection(
        Effect.gen(function* () {
          const a = freshId()
          const b = freshId()
          const exit = yield* Effect.exit(
            Session.transact(
              Effect.gen(function* () {
                yield* insert(a)
                yield* Effect.flatMap(sql, (s) => s`SET autocommit = 1`)
                yield* insert(b)
                assert.isTrue(yield* inTransaction("mariadb"), "the rest of the unit runs inside a transaction")
                return yield* Effect.fail("boom")
              })
            )
          )
          assert.isTrue(Exit.isFailure(exit))
          assert.strictEqual(yield* countId(a), 1, "committed by the user's SET autocommit = 1")
          assert.strictEqual(yield* countId(b), 0, "rolled back with the unit")
          // the connection was reset: the next unit and a statement outside units behave as usual
          const c = freshId()
          yield* Session.transact(insert(c))
          const d = freshId()
          yield* insert(d)
          assert.strictEqual(yield* countId(c), 1)
          assert.strictEqual(yield* countId(d), 1)
        })
      )
  )

  it.effect(
    "the server's default turned to autocommit off while the engine runs: a reset connection still commits statements outside units",
    () =>
      withOneConnection(
        Effect.gen(function* () {
          const before = freshId()
          yield* insert(before)
          assert.strictEqual(yield* countId(before), 1)
          yield* adminQuery("SET GLOBAL autocommit = 0")
          // a user variable marks the connection for a reset: it comes back with the server's new default
          yield* Effect.flatMap(sql, (s) => s`SET @marker = 1`)
          const after = freshId()
          yield* insert(after)
          assert.strictEqual(yield* countId(after), 1, "a statement outside units committed after the reset")
          const unit = freshId()
          yield* Session.transact(insert(unit))
          assert.strictEqual(yield* countId(unit), 1)
        }).pipe(Effect.ensuring(adminQuery("SET GLOBAL autocommit = 1")))
      )
  )
}

/** The suite's table, created by the application user (on PostgreSQL the owner of a table is its creator). */
const withSchema = (db: Layer.Layer<DbTag, unknown>) =>
  Layer.effectDiscard(withOneConnection(Effect.flatMap(sql, (s) => s.unsafe(schema)))).pipe(Layer.provideMerge(db))

for (const [name, db] of dialectsWith({ mariadb: ["--general-log=ON", "--log-output=TABLE"] })) {
  layer(withSchema(db), suiteOptions)(`units and autocommit (${name})`, (it) => scenarios(it, name))
}

// MariaDB only: a server whose default is autocommit off (PostgreSQL has no such setting)
for (const [name, db] of dialectsWith({ mariadb: ["--autocommit=0"] }).filter(([n]) => n === "mariadb")) {
  layer(withSchema(db), suiteOptions)(`a server whose default is autocommit off (${name})`, (it) => {
    it.effect("statements outside units still commit on their own; units commit or roll back as they decide", () =>
      withOneConnection(
        Effect.gen(function* () {
          const [global] = yield* adminQuery<{ ac: number }>("SELECT @@global.autocommit AS ac")
          assert.strictEqual(Number(global?.ac), 0, "the server's default is autocommit off")
          const outside = freshId()
          yield* insert(outside)
          assert.strictEqual(yield* countId(outside), 1, "a statement outside units committed")
          const unit = freshId()
          yield* Session.transact(insert(unit))
          assert.strictEqual(yield* countId(unit), 1)
          const failed = freshId()
          yield* Effect.exit(Session.transact(Effect.zipRight(insert(failed), Effect.fail("boom"))))
          assert.strictEqual(yield* countId(failed), 0)
          const after = freshId()
          yield* insert(after)
          assert.strictEqual(yield* countId(after), 1, "and again after a unit on the same connection")
        })
      )
    )
  })
}
