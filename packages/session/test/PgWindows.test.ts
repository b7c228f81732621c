/**
 * The windows of PostgreSQL's unit state machine, each reached precisely on a real server: a forked fiber's
 * statement runs under `SAVEPOINT sfx_statement` … `RELEASE` (`Run.underGuard`), and its interruption is met in each
 * of the guard's steps; a COMMIT that fails on its own (a deferred constraint); a cancel racing its statement's own
 * completion; a unit's deferred BEGIN on a connection that is already gone. The fault proxy holds a request on its
 * way to the server (`FaultProxy.holdNext`) to keep a window open while the test acts; every engine has a pool of
 * one, so each next unit runs on the very connection the window left behind.
 */
import { assert, layer } from "@effect/vitest"
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine, Session } from "@sessionfx/session"
import { FaultProxy, PgServer } from "@sessionfx/testing"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import { eventually } from "./support.js"

let nextId = Math.floor(Math.random() * 1_000_000)
const freshId = () => ++nextId

/** A chunk that carries `text` as a whole statement (the Parse message of the extended protocol, or a Query). */
const carries = (text: string) => (chunk: Buffer) => chunk.includes(`\0${text}\0`, 0, "latin1")

/** The failure of an exit (its first `Fail`), for its tag. */
const failureOf = <A, E>(exit: Exit.Exit<A, E>): { readonly _tag?: string; readonly cause?: unknown } | undefined =>
  Exit.isFailure(exit) ? (Option.getOrUndefined(Cause.failureOption(exit.cause)) as { _tag?: string }) : undefined

/**
 * An engine with a pool of one through a fault proxy, an admin engine (the test's own view of the server), and
 * helpers: rows of a table by id, the state of a backend.
 */
const setup = Effect.gen(function* () {
  const server = yield* PgServer.PgServer
  const proxy = yield* FaultProxy.make({ target: { host: server.host, port: server.port } })
  const engine = yield* Layer.build(
    Engine.layer({ url: proxy.urlFor(server), pool: { size: 1 }, killGrace: "3 seconds", commitTimeout: "5 seconds" })
  )
  const adminEngine = yield* Layer.build(Engine.layer({ url: server.admin.url, pool: { size: 1 } }))
  const s = Context.get(engine, SqlClient.SqlClient)
  const a = Context.get(adminEngine, SqlClient.SqlClient)
  const run = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.provide(effect, engine)
  yield* a`CREATE TABLE IF NOT EXISTS win (id INT PRIMARY KEY, who TEXT NOT NULL)`
  yield* a`GRANT ALL ON win TO PUBLIC`
  // non-transactional: a statement that ran leaves its nextval behind, even when its transaction rolled back
  yield* a`CREATE SEQUENCE IF NOT EXISTS win_probe`
  yield* a`GRANT ALL ON SEQUENCE win_probe TO PUBLIC`
  const probe = Effect.map(
    a<{ n: string }>`SELECT (CASE WHEN is_called THEN last_value ELSE 0 END)::text AS n FROM win_probe`,
    (rows) => Number(rows[0]!.n)
  )
  const who = (ids: ReadonlyArray<number>) =>
    Effect.map(a<{ id: number; who: string }>`SELECT id, who FROM win WHERE id IN ${a.in(ids)} ORDER BY id`, (rows) =>
      Object.fromEntries(rows.map((r) => [r.id, r.who]))
    )
  /** The backend's state as the server reports it: `idle` (no transaction), `idle in transaction`, … or gone. */
  const backend = (pid: number) =>
    Effect.map(a<{ state: string | null }>`SELECT state FROM pg_stat_activity WHERE pid = ${pid}`, (rows) =>
      rows.length === 0 ? "gone" : String(rows[0]!.state)
    )
  /** Whether a statement with `text` in it runs on the server now. */
  const active = (text: string) =>
    Effect.map(
      a<{
        n: string
      }>`SELECT count(*)::text AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE ${`%${text}%`} AND query NOT LIKE '%pg_stat_activity%'`,
      (rows) => rows[0]!.n !== "0"
    )
  const stats = Effect.map(Context.get(engine, Engine.Engine).stats, (st) => ({ ...st }))
  return { server, proxy, s, a, run, who, backend, stats, probe, active }
})

/** The next unit on the pool's only connection: its pid, and that it starts clean (no transaction, no savepoint). */
const nextUnit = (env: Effect.Effect.Success<typeof setup>) =>
  env.run(
    Session.transact(
      Effect.gen(function* () {
        const [row] = yield* env.s<{
          pid: number
          fresh: boolean
        }>`SELECT pg_backend_pid() AS pid, txid_current_if_assigned() IS NULL AS fresh`
        assert.isTrue(row!.fresh, "the next unit starts a transaction of its own")
        // a savepoint left behind would make this RELEASE succeed: it must not exist
        const stale = yield* Effect.exit(Session.transact(env.s.unsafe("RELEASE SAVEPOINT sfx_statement")))
        assert.isTrue(Exit.isFailure(stale), "no sfx_statement savepoint is left on the connection")
        return row!.pid
      })
    )
  )

layer(PgServer.layer(), { timeout: 120_000, excludeTestServices: true })("PostgreSQL windows", (it) => {
  it.effect(
    "1. a forked fiber interrupted while its guard's SAVEPOINT is in flight: its statement is never sent, the unit goes on and commits its own",
    () =>
      Effect.gen(function* () {
        const env = yield* setup
        const { proxy, s, run } = env
        // `first`: the child's statement is the unit's first, its SAVEPOINT in the same write as the deferred BEGIN
        for (const then of ["statement", "end", "first"] as const) {
          const [own, child, after] = [freshId(), freshId(), freshId()]
          const pid = yield* run(Session.transact(Session.connectionId))
          const destroyedBefore = (yield* env.stats).destroyed
          const probed = yield* env.probe
          const bodyDone = yield* Deferred.make<void>()
          const unit = yield* Effect.fork(
            run(
              Session.transact(
                Effect.gen(function* () {
                  if (then !== "first") yield* s`INSERT INTO win (id, who) VALUES (${own}, 'own')`
                  yield* proxy.holdNext(carries("SAVEPOINT sfx_statement"))
                  const fiber = yield* Effect.fork(
                    s`INSERT INTO win (id, who) SELECT ${child}, 'child ' || nextval('win_probe')`
                  )
                  yield* eventually(proxy.holding, "the guard's SAVEPOINT is held on its way to the server")
                  // nothing of the child's statement has been sent: the interruption returns at once
                  yield* Fiber.interrupt(fiber)
                  assert.isTrue(yield* proxy.holding, "the SAVEPOINT is still in flight")
                  if (then !== "end") {
                    // the unit's next statement waits for the guard to be undone, then runs in the transaction
                    const next = yield* Effect.fork(s`INSERT INTO win (id, who) VALUES (${after}, 'after')`)
                    assert.isAbove(yield* proxy.releaseHeld, 0)
                    yield* Fiber.join(next)
                  }
                  yield* Deferred.succeed(bodyDone, undefined)
                })
              )
            )
          )
          yield* Deferred.await(bodyDone)
          if (then === "end") {
            // the unit's end waits for the frame the guard holds: COMMIT is not sent before the guard is undone
            assert.isTrue(Option.isNone(yield* Fiber.poll(unit)))
            assert.isAbove(yield* proxy.releaseHeld, 0)
          }
          yield* Fiber.join(unit)
          const rows = yield* env.who([own, child, after])
          assert.deepStrictEqual(
            rows,
            then === "statement"
              ? { [own]: "own", [after]: "after" }
              : then === "end"
                ? { [own]: "own" }
                : { [after]: "after" }
          )
          assert.strictEqual(yield* env.probe, probed, "the child's statement never reached the server")
          assert.strictEqual(yield* env.backend(pid), "idle")
          assert.strictEqual(yield* nextUnit(env), pid, "the same connection serves the next unit")
          assert.strictEqual((yield* env.stats).destroyed, destroyedBefore)
        }
      }).pipe(Effect.scoped)
  )
  it.effect(
    "1b. the connection lost while the guard's ROLLBACK TO is in flight: ConnectionLost (retryable), nothing kept; retry: true commits once",
    () =>
      Effect.gen(function* () {
        const env = yield* setup
        const { proxy, s, run } = env
        for (const retry of [false, true]) {
          const [own, child] = [freshId(), freshId()]
          const attempts = yield* Ref.make(0)
          const exit = yield* Effect.exit(
            run(
              Session.transact(
                Effect.gen(function* () {
                  const attempt = yield* Ref.updateAndGet(attempts, (n) => n + 1)
                  yield* s`INSERT INTO win (id, who) VALUES (${own}, 'own')`
                  if (attempt > 1) return
                  yield* proxy.holdNext(carries("ROLLBACK TO SAVEPOINT sfx_statement"))
                  // the child's write then a long sleep: the interruption cancels it, the guard rolls back to its
                  // savepoint — and that ROLLBACK TO never arrives
                  const fiber = yield* Effect.fork(
                    s`INSERT INTO win (id, who) SELECT ${child}, 'child' FROM pg_sleep(30)`
                  )
                  yield* eventually(env.active("pg_sleep(30)"), "the child's statement runs")
                  yield* Effect.fork(Fiber.interrupt(fiber))
                  yield* eventually(proxy.holding, "the guard's ROLLBACK TO is held on its way to the server")
                  assert.isAbove(yield* proxy.resetAll, 0)
                  // the unit's next statement: the unit is aborted, its connection gone
                  const next = yield* Effect.flip(s`INSERT INTO win (id, who) VALUES (${-own}, 'next')`)
                  assert.include(String(next.message), "connection")
                }),
                retry ? { retry: true } : {}
              )
            )
          )
          const rows = yield* env.who([own, child, -own])
          if (retry) {
            assert.isTrue(Exit.isSuccess(exit), String(Exit.isFailure(exit) && exit.cause))
            assert.strictEqual(yield* Ref.get(attempts), 2)
            assert.deepStrictEqual(rows, { [own]: "own" })
          } else {
            const error = failureOf(exit) as { _tag?: string; retryable?: boolean } | undefined
            assert.strictEqual(error?._tag, "ConnectionLost", String(Exit.isFailure(exit) && exit.cause))
            assert.isTrue(error?.retryable)
            assert.deepStrictEqual(rows, {})
          }
          const next = yield* nextUnit(env)
          assert.strictEqual(yield* env.backend(next), "idle")
        }
      }).pipe(Effect.scoped)
  )

  it.effect(
    "2. a guarded statement that answered: its fiber has its rows before RELEASE (an interruption then is too late to matter), the unit's next statement and its end wait for RELEASE; RELEASE lost aborts the unit; the unit interrupted meanwhile rolls back",
    () =>
      Effect.gen(function* () {
        const env = yield* setup
        const { proxy, s, run } = env
        for (const then of ["statement", "end", "lost", "interrupted"] as const) {
          const [own, child, after] = [freshId(), freshId(), freshId()]
          const pid = yield* run(Session.transact(Session.connectionId))
          const destroyedBefore = (yield* env.stats).destroyed
          const hooks = yield* Ref.make(0)
          const bodyDone = yield* Deferred.make<void>()
          const body = Effect.gen(function* () {
            yield* Session.afterCommit(Ref.update(hooks, (n) => n + 1))
            yield* s`INSERT INTO win (id, who) VALUES (${own}, 'own')`
            yield* proxy.holdNext(carries("RELEASE SAVEPOINT sfx_statement"))
            const fiber = yield* Effect.fork(s`INSERT INTO win (id, who) VALUES (${child}, 'child') RETURNING id`)
            // the child's statement answered and its fiber went on while its RELEASE is still on the way
            const done = yield* Fiber.await(fiber)
            assert.deepStrictEqual(done, Exit.succeed([{ id: child }]))
            yield* eventually(proxy.holding, "the guard's RELEASE is held on its way to the server")
            assert.isTrue(Exit.isSuccess(yield* Fiber.interrupt(fiber)), "too late to matter")
            if (then === "lost") {
              assert.isAbove(yield* proxy.resetAll, 0)
              const next = yield* Effect.flip(s`INSERT INTO win (id, who) VALUES (${after}, 'after')`)
              assert.include(String(next.message), "connection")
              return
            }
            if (then === "interrupted")
              return yield* Deferred.succeed(bodyDone, undefined).pipe(Effect.zipRight(Effect.never))
            if (then === "statement") {
              // the unit's next statement waits for RELEASE
              const next = yield* Effect.fork(s`INSERT INTO win (id, who) VALUES (${after}, 'after')`)
              assert.isTrue(Option.isNone(yield* Fiber.poll(next)))
              assert.isAbove(yield* proxy.releaseHeld, 0)
              yield* Fiber.join(next)
            }
            yield* Deferred.succeed(bodyDone, undefined)
          })
          const unit = yield* Effect.fork(
            run(Session.transact(Effect.ensuring(body, Deferred.succeed(bodyDone, undefined))))
          )
          if (then !== "lost") yield* Deferred.await(bodyDone)
          const interrupter = then === "interrupted" ? yield* Effect.fork(Fiber.interrupt(unit)) : undefined
          if (then === "end" || then === "interrupted") {
            // the unit's end waits for the frame the guard holds: COMMIT / ROLLBACK after RELEASE
            assert.isTrue(Option.isNone(yield* Fiber.poll(unit)))
            assert.isAbove(yield* proxy.releaseHeld, 0)
          }
          if (interrupter !== undefined) yield* Fiber.join(interrupter)
          const exit = yield* Fiber.await(unit)
          const rows = yield* env.who([own, child, after])
          if (then === "statement" || then === "end") {
            assert.isTrue(Exit.isSuccess(exit), String(exit))
            assert.strictEqual(yield* Ref.get(hooks), 1)
            assert.deepStrictEqual(
              rows,
              then === "statement"
                ? { [own]: "own", [child]: "child", [after]: "after" }
                : { [own]: "own", [child]: "child" }
            )
          } else {
            if (then === "lost") {
              const error = failureOf(exit) as { _tag?: string; retryable?: boolean } | undefined
              assert.strictEqual(error?._tag, "ConnectionLost", String(exit))
              assert.isTrue(error?.retryable)
            } else assert.isTrue(Exit.isInterrupted(exit), String(exit))
            assert.strictEqual(yield* Ref.get(hooks), 0)
            assert.deepStrictEqual(rows, {}, "nothing of the unit is kept")
          }
          const next = yield* nextUnit(env)
          assert.strictEqual(yield* env.backend(next), "idle")
          if (then !== "lost") {
            assert.strictEqual(next, pid, "the same connection serves the next unit")
            assert.strictEqual((yield* env.stats).destroyed, destroyedBefore)
          }
        }
      }).pipe(Effect.scoped)
  )

  it.effect(
    "3. a COMMIT that fails on its own (a deferred unique / foreign key violation): CommitFailed with the constraint's error, not retried, nothing kept, the key not consumed",
    () =>
      Effect.gen(function* () {
        const env = yield* setup
        const { s, run, a } = env
        yield* a`CREATE TABLE IF NOT EXISTS win_unique (id INT PRIMARY KEY, v INT NOT NULL, CONSTRAINT win_unique_v UNIQUE (v) DEFERRABLE INITIALLY DEFERRED)`
        yield* a`CREATE TABLE IF NOT EXISTS win_parent (id INT PRIMARY KEY)`
        yield* a`CREATE TABLE IF NOT EXISTS win_child (id INT PRIMARY KEY, parent INT NOT NULL REFERENCES win_parent (id) DEFERRABLE INITIALLY DEFERRED)`
        yield* a`GRANT ALL ON win_unique, win_parent, win_child TO PUBLIC`
        yield* run(Session.createKeyTable)
        const count = (table: string, ids: ReadonlyArray<number>) =>
          Effect.map(
            a.unsafe<{ n: string }>(`SELECT count(*)::text AS n FROM ${table} WHERE id IN (${ids.join(", ")})`),
            (rows) => Number(rows[0]!.n)
          )
        const violations = {
          unique: {
            tag: "DuplicateKey",
            table: "win_unique",
            write: (x: number, y: number) =>
              Effect.zipRight(
                s`INSERT INTO win_unique (id, v) VALUES (${x}, ${x})`,
                // the same v: accepted now, refused at COMMIT
                s`INSERT INTO win_unique (id, v) VALUES (${y}, ${x})`
              )
          },
          foreignKey: {
            tag: "ForeignKeyViolation",
            table: "win_child",
            write: (x: number, y: number) =>
              Effect.zipRight(
                s`INSERT INTO win_child (id, parent) VALUES (${x}, ${-x})`,
                s`INSERT INTO win_child (id, parent) VALUES (${y}, ${-x})`
              )
          }
        }
        for (const [name, v] of Object.entries(violations)) {
          for (const key of [undefined, `deferred-${name}-${freshId()}`]) {
            const [x, y, own] = [freshId(), freshId(), freshId()]
            const pid = yield* run(Session.transact(Session.connectionId))
            const destroyedBefore = (yield* env.stats).destroyed
            const attempts = yield* Ref.make(0)
            const hooks = yield* Ref.make(0)
            const exit = yield* Effect.exit(
              run(
                Session.transact(
                  Effect.gen(function* () {
                    yield* Ref.update(attempts, (n) => n + 1)
                    yield* Session.afterCommit(Ref.update(hooks, (n) => n + 1))
                    yield* s`INSERT INTO win (id, who) VALUES (${own}, 'own')`
                    yield* v.write(x, y)
                  }),
                  key === undefined ? { retry: true } : { retry: true, key }
                )
              )
            )
            const error = failureOf(exit) as
              { _tag?: string; retryable?: boolean; cause?: { _tag?: string; code?: string } } | undefined
            assert.strictEqual(error?._tag, "CommitFailed", String(Exit.isFailure(exit) && exit.cause))
            assert.strictEqual(error?.cause?._tag, v.tag)
            assert.isFalse(error?.retryable, "a constraint violation is not retryable")
            assert.strictEqual(yield* Ref.get(attempts), 1, "retry: true does not re-run it")
            assert.strictEqual(yield* Ref.get(hooks), 0)
            assert.deepStrictEqual(yield* env.who([own]), {})
            assert.strictEqual(yield* count(v.table, [x, y]), 0)
            assert.strictEqual(yield* env.backend(pid), "idle")
            assert.strictEqual(yield* nextUnit(env), pid, "the same connection serves the next unit")
            assert.strictEqual((yield* env.stats).destroyed, destroyedBefore)
            if (key !== undefined) {
              // not committed, and the key is free: the unit, fixed, is applied once under it
              assert.strictEqual(yield* run(Session.outcome(key)), "absent")
              yield* run(Session.transact(s`INSERT INTO win (id, who) VALUES (${own}, 'own')`, { key }))
              assert.strictEqual(yield* run(Session.outcome(key)), "committed")
              assert.deepStrictEqual(yield* env.who([own]), { [own]: "own" })
            }
          }
        }
      }).pipe(Effect.scoped)
  )

  it.effect(
    "3b. a forked fiber's statement in a transaction already failed: the unit ends as without it, CommitFailed typed as the first error",
    () =>
      Effect.gen(function* () {
        const env = yield* setup
        const { s, run } = env
        for (const forked of [false, true]) {
          const own = freshId()
          const exit = yield* Effect.exit(
            run(
              Session.transact(
                Effect.gen(function* () {
                  yield* s`INSERT INTO win (id, who) VALUES (${own}, 'own')`
                  // caught: the transaction is failed (25P02 from here on)
                  yield* Effect.ignore(s`INSERT INTO win (id, who) VALUES (${own}, 'again')`)
                  const later = s`SELECT 1`
                  const failed = yield* Effect.flip(forked ? Effect.flatMap(Effect.fork(later), Fiber.join) : later)
                  assert.include(String(failed.message), "aborted")
                })
              )
            )
          )
          const error = failureOf(exit) as
            { _tag?: string; message?: string; retryable?: boolean; cause?: { _tag?: string } } | undefined
          assert.strictEqual(error?._tag, "CommitFailed", `${forked}: ${String(exit)}`)
          assert.include(error?.message, "duplicate key", `${forked}: ${String(exit)}`)
          // typed as the failure that caused it, as when a deferred constraint refuses COMMIT (window 3)
          assert.strictEqual(error?.cause?._tag, "DuplicateKey")
          assert.isFalse(error?.retryable)
          assert.deepStrictEqual(yield* env.who([own]), {})
          assert.strictEqual(yield* env.backend(yield* nextUnit(env)), "idle")
        }
        // a caught failure that is retryable (a lock wait timeout): the refused COMMIT is too, and retry: true re-runs
        // the unit, as a lock wait that aborts the unit would be retried
        const [locked, own] = [freshId(), freshId()]
        yield* env.a`INSERT INTO win (id, who) VALUES (${locked}, 'locked')`
        const holding = yield* Deferred.make<void>()
        const release = yield* Deferred.make<void>()
        const holder = yield* Effect.fork(
          env.a.withTransaction(
            Effect.zipRight(
              Effect.zipRight(
                env.a`SELECT * FROM win WHERE id = ${locked} FOR UPDATE`,
                Deferred.succeed(holding, undefined)
              ),
              Deferred.await(release)
            )
          )
        )
        yield* Deferred.await(holding)
        const attempts = yield* Ref.make(0)
        yield* run(
          Session.transact(
            Effect.gen(function* () {
              const attempt = yield* Ref.updateAndGet(attempts, (n) => n + 1)
              yield* s`INSERT INTO win (id, who) VALUES (${own}, 'own')`
              const update = s`UPDATE win SET who = 'mine' WHERE id = ${locked}`
              if (attempt > 1) return yield* update
              // caught: the transaction is failed, COMMIT is refused
              const waited = yield* Effect.flip(update)
              assert.strictEqual(waited.message.includes("lock"), true, waited.message)
              yield* Deferred.succeed(release, undefined)
            }),
            { retry: true, lockWaitTimeout: "100 millis" }
          )
        )
        yield* Fiber.join(holder)
        assert.strictEqual(yield* Ref.get(attempts), 2)
        assert.deepStrictEqual(yield* env.who([own, locked]), { [own]: "own", [locked]: "mine" })
      }).pipe(Effect.scoped)
  )

  it.effect(
    "4. a cancel racing its statement's own completion never reaches the guard's ROLLBACK TO, the next statement or the next unit",
    () =>
      Effect.gen(function* () {
        const env = yield* setup
        const { s, run } = env
        const pid = yield* run(Session.transact(Session.connectionId))
        const destroyedBefore = (yield* env.stats).destroyed
        const tally = { completed: 0, undone: 0, poisoned: 0 }
        // on loopback, then with 1 ms each way (the cancel travels through the proxy too: it lands later)
        for (const [latency, rounds, timeout] of [
          [0, 200, 8],
          [1, 100, 12]
        ] as const) {
          yield* env.proxy.setLatency(latency)
          const base = freshId() * 1000
          yield* Effect.sync(() => (nextId += 1000))
          for (let i = 0; i < rounds; i++) {
            const id = base + i
            // around the timeout: the cancel lands before, while and after the statement ends on its own
            const sleepMs = 2 + (i % 13)
            const exit = yield* Effect.exit(
              run(
                Session.transact(
                  Effect.gen(function* () {
                    yield* s`INSERT INTO win (id, who) VALUES (${id}, 'own')`
                    const child = yield* Effect.either(
                      Effect.timeout(
                        s`INSERT INTO win (id, who) SELECT ${-id}, 'child' FROM pg_sleep(${sleepMs}::int / 1000.0)`,
                        `${timeout} millis`
                      )
                    )
                    // the next statement on the connection: never cancelled by the child's cancel
                    // (it runs for a few ms: a stray cancel would find it running)
                    yield* s`UPDATE win SET who = 'after' FROM pg_sleep(0.003) WHERE id = ${id}`
                    return child._tag
                  })
                )
              )
            )
            const rows = yield* env.who([id, -id])
            if (Exit.isSuccess(exit) && exit.value === "Right") {
              tally.completed++
              assert.deepStrictEqual(rows, { [-id]: "child", [id]: "after" })
            } else if (Exit.isSuccess(exit)) {
              tally.undone++
              assert.deepStrictEqual(rows, { [id]: "after" }, "the timed-out statement is undone alone")
            } else {
              // interrupted after its statement answered, before its fiber went on: the unit rolled back, nothing kept
              assert.strictEqual(failureOf(exit)?._tag, "StatementInterrupted", String(exit.cause))
              tally.poisoned++
              assert.deepStrictEqual(rows, {})
            }
          }
          yield* Effect.log(`cancel race up to latency ${latency} ms (cumulative): ${JSON.stringify(tally)}`)
        }
        yield* env.proxy.setLatency(0)
        assert.isAbove(tally.completed, 0, JSON.stringify(tally))
        assert.isAbove(tally.undone, 0, JSON.stringify(tally))
        assert.strictEqual(yield* nextUnit(env), pid, "the same connection serves the next unit")
        assert.strictEqual((yield* env.stats).destroyed, destroyedBefore)
      }).pipe(Effect.scoped)
  )

  it.effect(
    "5. a unit's deferred BEGIN on a connection gone before its first command: ConnectionLost (retryable), nothing kept; retry: true commits once on a fresh connection",
    () =>
      Effect.gen(function* () {
        const env = yield* setup
        const { proxy, s, run, a } = env
        const faults = {
          // the server ends the backend (and it has exited) before the unit sends anything
          terminated: (pid: number) => Effect.asVoid(a`SELECT pg_terminate_backend(${pid}, 5000)`),
          // the network drops the connection before the unit sends anything
          reset: () => Effect.asVoid(proxy.resetAll),
          // the first command (BEGIN and the statement, one write) is lost on the way and the connection reset
          dropped: () => proxy.resetNextAfter({ match: carries("BEGIN"), forward: false })
        }
        for (const [name, fault] of Object.entries(faults)) {
          // `swallowed`: the unit catches its statement's failure and succeeds — it must not be reported committed
          for (const [retry, swallowed] of [
            [false, false],
            [false, true],
            [true, false],
            [true, true]
          ] as const) {
            const id = freshId()
            const attempts = yield* Ref.make(0)
            const pids: Array<number> = []
            const exit = yield* Effect.exit(
              run(
                Session.transact(
                  Effect.gen(function* () {
                    const pid = yield* Session.connectionId
                    pids.push(pid)
                    if ((yield* Ref.updateAndGet(attempts, (n) => n + 1)) === 1) yield* fault(pid)
                    const insert = s`INSERT INTO win (id, who) VALUES (${id}, ${name})`
                    yield* swallowed ? Effect.ignore(insert) : insert
                  }),
                  { retry }
                )
              )
            )
            if (retry) {
              assert.isTrue(
                Exit.isSuccess(exit),
                `${name}, ${swallowed}: ${String(Exit.isFailure(exit) && exit.cause)}`
              )
              assert.strictEqual(yield* Ref.get(attempts), 2)
              assert.notStrictEqual(pids[1], pids[0], "the retry runs on a fresh connection")
              assert.deepStrictEqual(yield* env.who([id]), { [id]: name })
            } else {
              const error = failureOf(exit) as { _tag?: string; retryable?: boolean } | undefined
              assert.strictEqual(
                error?._tag,
                "ConnectionLost",
                `${name}, ${swallowed}: ${String(Exit.isFailure(exit) && exit.cause)}`
              )
              assert.isTrue(error?.retryable)
              assert.deepStrictEqual(yield* env.who([id]), {})
            }
            assert.isFalse(yield* proxy.armed)
            // the pool's only connection is a working one again
            const next = yield* nextUnit(env)
            assert.notStrictEqual(next, pids[0])
            assert.strictEqual(yield* env.backend(next), "idle")
          }
        }
      }).pipe(Effect.scoped)
  )
})
