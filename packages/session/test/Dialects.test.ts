/**
 * Core guarantees of a unit of work, the same test on MariaDB and PostgreSQL (see `support/dialects.ts`): nested
 * savepoints, afterCommit, deadlocks retried, keyed units, caught statement errors, DDL. Session.test.ts,
 * Engine.test.ts and Stream.test.ts run on both databases the same way; each guarantee is tested once.
 * Where the databases must differ, the test says so.
 */
import { assert, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Session, SessionError, SessionLive } from "@sessionfx/session"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Ref from "effect/Ref"
import { DbTag, dialects, engineOn } from "./support/dialects.js"

const sql = SqlClient.SqlClient

let nextId = Math.floor(Math.random() * 1_000_000)
const freshId = () => ++nextId

const count = (table: string, id: number) =>
  Effect.flatMap(DbTag, (db) =>
    Effect.map(db.admin(`SELECT COUNT(*) AS n FROM ${table} WHERE id = ?`, [id]), (rows) => Number(rows[0]!.n))
  )

const insert = (table: string, id: number, v = 0) =>
  Effect.flatMap(sql, (s) => s`INSERT INTO ${s(table)} (id, v) VALUES (${id}, ${v})`)

/** Two units that take the same two rows in opposite order, each waiting until the other holds its first row. */
const deadlock = (table: string, a: number, b: number, spelling: "transact" | "layer" = "transact") =>
  Effect.gen(function* () {
    const firstHeld = yield* Deferred.make<void>()
    const secondHeld = yield* Deferred.make<void>()
    const attempts = yield* Ref.make(0)
    const hooks = yield* Ref.make(0)
    const lockBoth = (x: number, y: number, mine: Deferred.Deferred<void>, theirs: Deferred.Deferred<void>) =>
      Effect.gen(function* () {
        const s = yield* sql
        yield* Ref.update(attempts, (n) => n + 1)
        yield* Session.afterCommit(Ref.update(hooks, (n) => n + 1))
        yield* s`UPDATE ${s(table)} SET v = v + 1 WHERE id = ${x}`
        yield* Deferred.succeed(mine, undefined)
        yield* Deferred.await(theirs)
        yield* s`UPDATE ${s(table)} SET v = v + 1 WHERE id = ${y}`
      }).pipe((unit) =>
        spelling === "transact"
          ? Session.transact(unit, { retry: true })
          : // the Layer spelling: the unit's statement fails with a SqlError whose cause is the Deadlock
            Effect.retry(Effect.provide(unit, SessionLive), {
              times: 5,
              while: (e) => SessionError.isRetryable(SessionError.classify(e))
            })
      )
    yield* Effect.all([lockBoth(a, b, firstHeld, secondHeld), lockBoth(b, a, secondHeld, firstHeld)], {
      concurrency: 2
    })
    return { attempts: yield* Ref.get(attempts), hooks: yield* Ref.get(hooks) }
  })

for (const [name, dbLayer] of dialects) {
  const TestLayer = Layer.provideMerge(engineOn({ pool: { size: 6 } }), dbLayer)

  layer(TestLayer, { timeout: 120_000, excludeTestServices: true })(name, (it) => {
    it.effect("setup: tables (created by the application's own user)", () =>
      Effect.gen(function* () {
        const db = yield* DbTag
        const s = yield* sql
        yield* s.unsafe(db.table("items"))
        yield* s.unsafe(db.table("hot"))
        yield* Session.createKeyTable
      })
    )

    it.effect("nested savepoints: a failed inner unit is undone, the outer one commits", () =>
      Effect.gen(function* () {
        const outer = freshId()
        const inner = freshId()
        const kept = freshId()
        yield* Session.transact(
          Effect.gen(function* () {
            yield* insert("items", outer)
            // the inner unit fails on a duplicate key after its own insert: on PostgreSQL the error leaves the
            // transaction failed (E) until ROLLBACK TO SAVEPOINT, which the savepoint's end sends
            const exit = yield* Effect.exit(
              Session.transact(Effect.zipRight(insert("items", inner), insert("items", outer)))
            )
            assert.isTrue(Exit.isFailure(exit))
            yield* Session.transact(insert("items", kept))
          })
        )
        assert.strictEqual(yield* count("items", outer), 1)
        assert.strictEqual(yield* count("items", inner), 0)
        assert.strictEqual(yield* count("items", kept), 1)
      })
    )

    it.effect("afterCommit runs once, after the commit; never after a rollback", () =>
      Effect.gen(function* () {
        const runs = yield* Ref.make(0)
        yield* Session.transact(
          Effect.zipRight(insert("items", freshId()), Session.afterCommit(Ref.update(runs, (n) => n + 1)))
        )
        yield* Effect.exit(
          Session.transact(
            Effect.zipRight(Session.afterCommit(Ref.update(runs, (n) => n + 1)), Effect.fail("rolled back"))
          )
        )
        assert.strictEqual(yield* Ref.get(runs), 1)
      })
    )

    it.effect("a deadlock is retried with retry: true; afterCommit once per unit", () =>
      Effect.gen(function* () {
        const a = freshId()
        const b = freshId()
        yield* Session.transact(Effect.zipRight(insert("hot", a), insert("hot", b)))
        const { attempts, hooks } = yield* deadlock("hot", a, b)
        assert.isAtLeast(attempts, 3)
        assert.strictEqual(hooks, 2)
        const db = yield* DbTag
        const rows = yield* db.admin("SELECT SUM(v) AS total FROM hot WHERE id IN (?, ?)", [a, b])
        assert.strictEqual(Number(rows[0]!.total), 4)
      })
    )

    it.effect(
      "the Layer spelling retries a deadlock (isRetryable of the classified SqlError); afterCommit once per unit",
      () =>
        Effect.gen(function* () {
          const a = freshId()
          const b = freshId()
          yield* Session.transact(Effect.zipRight(insert("hot", a), insert("hot", b)))
          const { attempts, hooks } = yield* deadlock("hot", a, b, "layer")
          assert.isAtLeast(attempts, 3)
          assert.strictEqual(hooks, 2)
          const db = yield* DbTag
          const rows = yield* db.admin("SELECT SUM(v) AS total FROM hot WHERE id IN (?, ?)", [a, b])
          assert.strictEqual(Number(rows[0]!.total), 4)
        })
    )

    it.effect("a keyed unit is applied once; its outcome can be asked", () =>
      Effect.gen(function* () {
        const key = `k-${freshId()}`
        const id = freshId()
        yield* Session.transact(insert("items", id), { key })
        const again = yield* Effect.flip(Session.transact(insert("items", freshId()), { key }))
        assert.strictEqual(again._tag, "AlreadyApplied")
        assert.strictEqual(yield* Session.outcome(key), "committed")
        assert.strictEqual(yield* Session.outcome(`${key}-never`), "absent")
        assert.strictEqual(yield* count("items", id), 1)
      })
    )

    it.effect("pruneKeys deletes the keys older than asked, and only those", () =>
      Effect.gen(function* () {
        const key = `prune-${freshId()}`
        yield* Session.transact(insert("items", freshId()), { key })
        assert.strictEqual(yield* Session.pruneKeys({ olderThan: "1 hour" }), 0)
        assert.strictEqual(yield* Session.outcome(key), "committed")
        assert.isAtLeast(yield* Session.pruneKeys({ olderThan: 0 }), 1)
        assert.strictEqual(yield* Session.outcome(key), "absent")
      })
    )

    it.effect("a statement error the unit catches: MariaDB commits the rest, PostgreSQL refuses the COMMIT", () =>
      Effect.gen(function* () {
        const id = freshId()
        const first = freshId()
        yield* Session.transact(insert("items", id))
        const exit = yield* Effect.exit(
          Session.transact(
            Effect.gen(function* () {
              yield* insert("items", first)
              // caught: on PostgreSQL the transaction is failed from here on (25P02), and only ROLLBACK can end it
              yield* Effect.ignore(insert("items", id))
            })
          )
        )
        if (name === "postgres") {
          assert.isTrue(Exit.isFailure(exit))
          assert.include(JSON.stringify(exit), "CommitFailed")
          assert.strictEqual(yield* count("items", first), 0)
        } else {
          assert.isTrue(Exit.isSuccess(exit))
          assert.strictEqual(yield* count("items", first), 1)
        }
      })
    )

    it.effect(
      "deferrable: PostgreSQL's SERIALIZABLE READ ONLY DEFERRABLE; refused on MariaDB before anything is sent",
      () =>
        Effect.gen(function* () {
          const unit = Session.transact(
            Effect.flatMap(sql, (s) =>
              name === "postgres"
                ? s<{
                    d: string
                    i: string
                    r: string
                  }>`SELECT current_setting('transaction_deferrable') AS d, current_setting('transaction_isolation') AS i, current_setting('transaction_read_only') AS r`
                : s<{ d: string; i: string; r: string }>`SELECT 1 AS d, 2 AS i, 3 AS r`
            ),
            { isolation: "SERIALIZABLE", readOnly: true, deferrable: true }
          )
          if (name === "postgres") {
            const [row] = yield* unit
            assert.deepStrictEqual(row, { d: "on", i: "serializable", r: "on" })
          } else {
            const refused = yield* Effect.flip(unit)
            assert.strictEqual(refused._tag, "InvalidOption")
            assert.include(refused.message, "PostgreSQL's")
          }
          // only where it means something: a SERIALIZABLE read-only unit, and not added to a started transaction
          const alone = yield* Effect.flip(Session.transact(Effect.void, { deferrable: true, readOnly: true }))
          assert.strictEqual(alone._tag, "InvalidOption")
          if (name === "postgres") {
            const nested = yield* Effect.flip(
              Session.transact(
                Session.transact(Effect.void, { isolation: "SERIALIZABLE", readOnly: true, deferrable: true }),
                { isolation: "SERIALIZABLE", readOnly: true }
              )
            )
            assert.strictEqual(nested._tag, "InvalidOption")
            assert.include(nested.message, "already started without it")
          }
        })
    )

    it.effect("DDL: transactional on PostgreSQL (rolled back with the unit), an implicit commit on MariaDB", () =>
      Effect.gen(function* () {
        const db = yield* DbTag
        const table = `ddl_${freshId()}`
        yield* Effect.exit(
          Session.transact(
            Effect.zipRight(
              Effect.flatMap(sql, (s) => s.unsafe(db.table(table))),
              Effect.fail("no")
            )
          )
        )
        const exists = yield* Effect.exit(db.admin(`SELECT COUNT(*) AS n FROM ${table}`).pipe(Effect.orDie))
        assert.strictEqual(Exit.isSuccess(exists), name !== "postgres")
      })
    )
  })
}
