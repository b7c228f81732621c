/**
 * Reliability under faults, on MariaDB and on PostgreSQL from this one file: the bank workload
 * (test/support/bank.ts) runs while one kind of fault is injected, then every unit's outcome is reconciled with the
 * database and the pool / server / process are checked for leaks. One embedded server per database (test/support/
 * db.ts says how each is asked and hurt); the tally of both is printed (and its invariants asserted) at the end.
 * `SESSIONFX_SOAK=1` multiplies the load.
 */
import { afterAll, assert, layer, type Vitest } from "@effect/vitest"
import { Engine, Session, SessionError } from "@sessionfx/session"
import { FaultProxy } from "@sessionfx/testing"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import type * as Redacted from "effect/Redacted"
import * as Bank from "./support/bank.js"
import { assertClean, assertClosed, settle, tcpSockets } from "./support/clean.js"
import { type Db, type DbName, DbTag, dialects } from "./support/db.js"
import * as Tally from "./support/tally.js"

const SCALE = Bank.SOAK ? 10 : 1
const WRITERS = Bank.SOAK ? 12 : 6
const UNITS = 20 * SCALE
/**
 * At most this many proxy resets per scenario: a reset costs a new connection, which takes ~55 ms on PostgreSQL (a
 * backend forked, a SCRAM exchange) against a few on MariaDB, so uncapped the PostgreSQL runs reset most units.
 */
const RESETS = 16 * SCALE
/** At most this many KILL QUERY / KILL CONNECTION (pg_cancel_backend / pg_terminate_backend) per scenario, alternating. */
const KILLS = 40 * SCALE

interface Env {
  readonly db: Db
  readonly proxy: FaultProxy.FaultProxy["Type"] | undefined
  readonly faults: Record<string, number>
  /** Connection ids of the units running now. */
  readonly live: Set<number>
  readonly acked: () => number
  readonly writing: () => boolean
  /** The fault is in place (`Scenario.faultFirst`: the load starts only then). */
  readonly faultReady: Deferred.Deferred<void>
}

interface Scenario {
  readonly name: string
  readonly pool?: number
  readonly engine?: Partial<Engine.EngineOptions>
  readonly proxy?: boolean
  readonly workload: Omit<Bank.WorkloadOptions, "name" | "onConnection">
  /** Runs beside the workload; must end soon after `env.writing()` turns false. */
  readonly fault?: (env: Env) => Effect.Effect<void, unknown, Engine.Engine>
  /** The load starts once the fault has completed `env.faultReady` (a fault that must be in place first). */
  readonly faultFirst?: boolean
  /** Waits until the pool holds `pool.minIdle` idle connections before the load starts. */
  readonly warm?: boolean
  /** Units run after the fault, all of which must succeed. */
  readonly recovery?: number
  readonly check?: (v: Bank.Verdict, o: Bank.Outcomes, env: Env) => void
}

const fault = (env: Env, kind: string, n = 1) => {
  env.faults[kind] = (env.faults[kind] ?? 0) + n
}

const pick = <A>(set: ReadonlySet<A>): A | undefined => {
  const all = [...set]
  return all.length === 0 ? undefined : all[Math.floor(Math.random() * all.length)]
}

/** Paces a fault loop (not synchronisation: the loop only decides when to inject the next fault). */
const pace = (ms: number) => Effect.sleep(`${ms} millis`)

const merge = (a: Bank.Outcomes, b: Bank.Outcomes): Bank.Outcomes => ({
  acked: [...a.acked, ...b.acked],
  unknown: [...a.unknown, ...b.unknown],
  indeterminate: [...a.indeterminate, ...b.indeterminate],
  interruptedBeforeCommit: [...a.interruptedBeforeCommit, ...b.interruptedBeforeCommit],
  failed: [...a.failed, ...b.failed],
  errors: Object.fromEntries(
    [...new Set([...Object.keys(a.errors), ...Object.keys(b.errors)])].map((k) => [
      k,
      (a.errors[k] ?? 0) + (b.errors[k] ?? 0)
    ])
  ),
  reads: a.reads + b.reads,
  readFailures: a.readFailures + b.readFailures,
  readViolations: [...a.readViolations, ...b.readViolations],
  maxUnitMs: Math.max(a.maxUnitMs, b.maxUnitMs)
})

/** Prints the pool, the proxy and the progress every second while `SFX_DEBUG` is set. */
const debugTicker = (name: string, env: Env, started: number) =>
  Effect.flatMap(
    Effect.all([
      Engine.stats,
      env.proxy ? env.proxy.counters : Effect.succeed({}),
      env.proxy ? env.proxy.connections : Effect.succeed(0)
    ]),
    ([st, c, n]) =>
      Effect.sync(() =>
        console.log(
          name,
          Date.now() - started,
          env.acked(),
          env.writing(),
          JSON.stringify(st),
          env.live.size,
          JSON.stringify(c),
          n
        )
      )
  ).pipe(Effect.delay("1 second"), Effect.forever)

/** The workload with its fault beside it, then the recovery units, the reconciliation and the clean check. */
const workload = (s: Scenario, env: Env, progress: { acked: number; writing: boolean }, started: number) =>
  Effect.gen(function* () {
    if (s.warm) {
      const want = s.engine?.pool?.minIdle ?? 0
      const stats = yield* settle(Engine.stats, (st) => st.idle >= want)
      assert.isAtLeast(stats.idle, want, "the pool warmed up")
    }
    yield* Bank.setup(10, 1000)
    const faultFiber = s.fault ? yield* Effect.fork(s.fault(env)) : undefined
    // a fault that ends (or fails) before it is in place does not hold the load back
    if (s.faultFirst && faultFiber) yield* Effect.raceFirst(Deferred.await(env.faultReady), Fiber.join(faultFiber))
    if (process.env.SFX_DEBUG) yield* Effect.forkScoped(debugTicker(s.name, env, started))
    const run = yield* Bank.run({
      ...s.workload,
      name: s.name,
      onConnection: (id, open) => {
        if (open) env.live.add(id)
        else env.live.delete(id)
      },
      onAck: () => {
        progress.acked++
      }
    }).pipe(Effect.ensuring(Effect.sync(() => (progress.writing = false))))
    if (faultFiber) yield* Fiber.join(faultFiber)
    let outcomes = run.outcomes
    if (s.recovery) {
      const again = yield* Bank.run({ name: `${s.name}-recovery`, writers: 2, unitsPerWriter: s.recovery, seed: 99 })
      assert.strictEqual(
        again.outcomes.acked.length,
        2 * s.recovery,
        `recovery: ${JSON.stringify(again.outcomes.errors)}`
      )
      outcomes = merge(outcomes, again.outcomes)
    }
    const verdict = yield* Bank.verify({ ...run, outcomes })
    const clean = yield* assertClean(env.db, s.pool ?? 4)
    return { verdict, outcomes, clean }
  })

const engineLayer = (s: Scenario, url: Redacted.Redacted<string>) =>
  Engine.layer({
    killGrace: "1 second",
    connectTimeout: "3 seconds",
    shutdownTimeout: "5 seconds",
    ...s.engine,
    url,
    pool: { size: s.pool ?? 4, acquireTimeout: "5 seconds", validateAfterIdle: "200 millis", ...s.engine?.pool }
  })

const runScenario = (s: Scenario) =>
  Effect.gen(function* () {
    const db = yield* DbTag
    const started = Date.now()
    const baseline = tcpSockets()
    const progress = { acked: 0, writing: true }
    const result = yield* Effect.scoped(
      Effect.gen(function* () {
        const proxy = s.proxy ? yield* FaultProxy.make({ target: { host: db.host, port: db.port } }) : undefined
        const env: Env = {
          db,
          proxy,
          faults: {},
          live: new Set(),
          acked: () => progress.acked,
          writing: () => progress.writing,
          faultReady: yield* Deferred.make<void>()
        }
        const ctx = yield* Layer.build(engineLayer(s, proxy ? proxy.urlFor(db) : db.url))
        return { env, ...(yield* Effect.provide(workload(s, env, progress, started), ctx)) }
      })
    )
    const stray = yield* assertClosed(db, baseline)
    const { verdict: v, outcomes: o, env } = result
    Tally.add({
      ...v,
      scenario: `${db.name}: ${s.name}`,
      faults: env.faults,
      errors: o.errors,
      reads: o.reads,
      readViolations: o.readViolations.length,
      leaks: result.clean.leaks + stray,
      maxUnitMs: o.maxUnitMs,
      durationMs: Date.now() - started
    })
    const summary = JSON.stringify({ ...v, errors: o.errors, faults: env.faults, reads: o.reads })
    assert.strictEqual(v.lost, 0, `lost: ${summary}`)
    assert.strictEqual(v.duplicated, 0, `duplicated: ${summary}`)
    assert.strictEqual(v.phantom, 0, `phantom: ${summary}`)
    assert.strictEqual(v.total, 10_000, `total: ${summary}`)
    assert.strictEqual(v.negative, 0, `negative: ${summary}`)
    assert.deepStrictEqual(o.readViolations, [], `read violations: ${summary}`)
    assert.isAbove(o.reads, 0, "readers read")
    assert.strictEqual(v.unknownCommitted + v.unknownAborted, v.unknown)
    s.check?.(v, o, env)
    return v
  })

/** Polls until `n` units have been acknowledged or writing is over (bounded by the workload). */
const awaitProgress = (env: Env, n: number) =>
  settle(
    Effect.sync(() => env.acked()),
    (a) => a >= n || !env.writing(),
    60_000
  )

/** What stops a statement and what ends a connection, as each database names it. */
const killNames = {
  mariadb: { QUERY: "KILL QUERY", CONNECTION: "KILL CONNECTION" },
  postgres: { QUERY: "pg_cancel_backend", CONNECTION: "pg_terminate_backend" }
} as const

/**
 * Parks a unit inside its open transaction until the server has ended its connection for idling (polled, bounded:
 * a connection still there after 15 s fails the scenario).
 */
const idleUntilEnded = (db: Db) =>
  Effect.gen(function* () {
    const id = yield* Session.connectionId
    const held = yield* settle(db.holds(id), (h) => !h, 15_000)
    if (held) return yield* Effect.dieMessage(`connection ${id} still open after idling 15 s in its transaction`)
  })

const scenarios = (it: Vitest.MethodsNonLive<DbTag, true>, name: DbName) => {
  it.effect("baseline: no fault", () =>
    runScenario({
      name: "baseline",
      workload: { writers: WRITERS, unitsPerWriter: UNITS },
      check: (v) => assert.strictEqual(v.acked, v.units)
    })
  )

  it.effect("interruption storm: timeouts at random points, interrupts at known points and mid-statement", () => {
    // an interrupted statement ends by KILL QUERY (resent until it lands) or, after killGrace, with its connection
    const gates = new Map<string, { reached: Deferred.Deferred<void>; step: Bank.Step | "sleep" }>()
    return runScenario({
      name: "interruptions",
      workload: {
        writers: WRITERS,
        unitsPerWriter: UNITS,
        at: (ctx, step) => {
          const gate = gates.get(ctx.key)
          if (gate === undefined) return Effect.void
          if (gate.step === "sleep" && step === "inserted") {
            return Effect.zipRight(Deferred.succeed(gate.reached, undefined), Bank.sleep(5))
          }
          if (gate.step !== step) return Effect.void
          // park here until interrupted
          return Effect.zipRight(Deferred.succeed(gate.reached, undefined), Effect.never)
        },
        wrap: (ctx, unit) =>
          Effect.gen(function* () {
            const r = ctx.random()
            if (r < 0.3) {
              // a random tiny deadline: before the first statement, during a statement, or during COMMIT
              return yield* Effect.timeout(unit, `${Math.floor(ctx.random() * 15)} millis`)
            }
            if (r < 0.55) {
              const steps = ["begin", "locked", "debited", "inserted", "sleep"] as const
              const step = steps[Math.floor(ctx.random() * steps.length)]!
              const reached = yield* Deferred.make<void>()
              gates.set(ctx.key, { reached, step })
              const fiber = yield* Effect.fork(unit)
              // the unit may end before it reaches its gate (a failure, retries used up): then there is nothing to
              // interrupt
              const parked = yield* Effect.raceFirst(
                Effect.as(Deferred.await(reached), true),
                Effect.as(Fiber.await(fiber), false)
              )
              if (!parked) return yield* Fiber.join(fiber)
              const t0 = Date.now()
              yield* Fiber.interrupt(fiber)
              const took = Date.now() - t0
              // guarantee 3: a running statement is stopped and the fiber returns promptly (within killGrace)
              if (took > 5_000) return yield* Effect.dieMessage(`interrupt of ${ctx.key} took ${took} ms`)
              ctx.markInterruptedBeforeCommit()
              return yield* Effect.interrupt
            }
            return yield* unit
          })
      },
      check: (v, o) => {
        assert.isAbove(o.interruptedBeforeCommit.length, 0)
        assert.isAbove(v.acked, 0)
      },
      recovery: 5
    }).pipe(
      Effect.tap((v) => {
        const row = Tally.rows[Tally.rows.length - 1]!
        ;(row.faults as Record<string, number>)["interrupt"] = v.failed + v.indeterminate
      })
    )
  })

  const kills = killNames[name]
  it.effect(`${kills.QUERY} and ${kills.CONNECTION} of random session connections`, () =>
    runScenario({
      name: "kill",
      workload: {
        writers: WRITERS,
        unitsPerWriter: UNITS,
        // keep units on the server long enough to be hit
        at: (_ctx, step) => (step === "debited" ? Bank.sleep(0.01) : Effect.void)
      },
      fault: (env) =>
        Effect.gen(function* () {
          const kill = yield* env.db.killer
          let i = 0
          while (env.writing()) {
            yield* pace(15 + Math.floor(Math.random() * 30))
            const id = pick(env.live)
            // at most KILLS: each ended connection is a new one to open (~55 ms on PostgreSQL)
            if (id === undefined || i >= KILLS) continue
            const kind = i++ % 2 === 0 ? "QUERY" : "CONNECTION"
            if (yield* kill(kind, id)) fault(env, kills[kind])
          }
        }).pipe(Effect.scoped),
      recovery: 5,
      check: (_v, _o, env) => {
        assert.isAbove(env.faults[kills.QUERY] ?? 0, 0)
        assert.isAbove(env.faults[kills.CONNECTION] ?? 0, 0)
      }
    })
  )

  it.effect("server restart in the middle of the load", () =>
    runScenario({
      name: "restart",
      workload: { writers: WRITERS, unitsPerWriter: UNITS },
      fault: (env) =>
        Effect.gen(function* () {
          yield* awaitProgress(env, Math.floor((WRITERS * UNITS) / 4))
          yield* env.db.restart
          fault(env, "restart")
        }),
      recovery: 10,
      check: (_v, _o, env) => assert.strictEqual(env.faults["restart"], 1)
    })
  )

  it.effect("server crash (SIGKILL) in the middle of the load, then crash recovery", () =>
    runScenario({
      name: "crash",
      workload: { writers: WRITERS, unitsPerWriter: UNITS },
      fault: (env) =>
        Effect.gen(function* () {
          yield* awaitProgress(env, Math.floor((WRITERS * UNITS) / 4))
          yield* env.db.crash
          fault(env, "crash")
        }),
      recovery: 10,
      // acknowledged units survive the crash: checked by the reconciliation (lost 0)
      check: (v, _o, env) => {
        assert.strictEqual(env.faults["crash"], 1)
        assert.isAbove(v.acked, 0)
      }
    })
  )

  const idleTimeout = name === "mariadb" ? "idle_transaction_timeout" : "idle_in_transaction_session_timeout"
  it.effect(`${idleTimeout}: a unit idle inside its transaction fails typed, nothing of it kept, no leak`, () => {
    const idlers = new Set<string>()
    return Effect.gen(function* () {
      const db = yield* DbTag
      // whole seconds on MariaDB; milliseconds on PostgreSQL
      yield* db.idleInTransactionTimeout(name === "mariadb" ? 1 : 0.3)
      return yield* runScenario({
        name: "idle in transaction",
        workload: {
          writers: WRITERS,
          unitsPerWriter: Math.ceil(UNITS / 4),
          options: { retry: false },
          // the second unit of each writer stops after its UPDATEs until the server ends its connection
          at: (ctx, step) =>
            step === "debited" && ctx.index === 1
              ? Effect.zipRight(
                  Effect.sync(() => idlers.add(ctx.key)),
                  idleUntilEnded(db)
                )
              : Effect.void
        },
        recovery: 5,
        check: (_v, o, env) => {
          fault(env, "idle past the timeout", idlers.size)
          assert.strictEqual(idlers.size, WRITERS)
          // each idler failed (not acknowledged, not unknown) with ConnectionLost; the reconciliation found none kept
          for (const key of idlers) assert.include(o.failed, key)
          assert.strictEqual(o.errors["ConnectionLost"], WRITERS, JSON.stringify(o.errors))
        }
      })
    }).pipe(Effect.scoped)
  })

  it.effect("proxy: added latency", () =>
    runScenario({
      name: "latency",
      proxy: true,
      workload: { writers: WRITERS, unitsPerWriter: Math.ceil(UNITS / 2) },
      fault: (env) =>
        Effect.gen(function* () {
          while (env.writing()) {
            yield* env.proxy!.setLatency(1 + Math.floor(Math.random() * 15))
            fault(env, "latency change")
            yield* pace(200)
          }
          yield* env.proxy!.setLatency(0)
        }),
      check: (v) => assert.strictEqual(v.acked, v.units)
    })
  )

  it.effect("proxy: connections reset mid-statement", () =>
    runScenario({
      name: "reset mid-statement",
      proxy: true,
      workload: { writers: WRITERS, unitsPerWriter: UNITS },
      fault: (env) =>
        Effect.gen(function* () {
          while (env.writing()) {
            yield* pace(20)
            if ((yield* env.proxy!.armed) || (yield* env.proxy!.counters).triggered >= RESETS) continue
            // statements are prepared once per connection (COM_STMT_EXECUTE carries no SQL text afterwards), so
            // the trigger is a byte count: the reset lands inside whatever the next connection is sending
            yield* env.proxy!.resetNextAfter({ bytesFromClient: 1 + Math.floor(Math.random() * 3000) })
          }
          const c = yield* env.proxy!.counters
          yield* env.proxy!.resetNextAfter({ bytesFromClient: Number.MAX_SAFE_INTEGER })
          fault(env, "reset", c.triggered)
        }),
      recovery: 5,
      check: (_v, _o, env) => assert.isAbove(env.faults["reset"] ?? 0, 0)
    })
  )

  it.effect("proxy: connections reset mid-COMMIT (dropped or delivered): CommitOutcomeUnknown, reconciled", () => {
    let delivered = 0
    let dropped = 0
    return runScenario({
      name: "reset mid-COMMIT",
      proxy: true,
      workload: { writers: WRITERS, unitsPerWriter: UNITS },
      fault: (env) =>
        Effect.gen(function* () {
          while (env.writing()) {
            yield* pace(25)
            if ((yield* env.proxy!.armed) || delivered + dropped >= RESETS) continue
            const forward = Math.random() < 0.5
            // readers roll back, so every COMMIT on the wire is a transfer's
            yield* env.proxy!.resetNextAfter({
              match: (chunk) => {
                const hit = env.db.isCommit(chunk)
                if (hit) {
                  if (forward) delivered++
                  else dropped++
                }
                return hit
              },
              forward
            })
          }
          yield* env.proxy!.resetNextAfter({ bytesFromClient: Number.MAX_SAFE_INTEGER })
          fault(env, "reset at COMMIT (delivered)", delivered)
          fault(env, "reset at COMMIT (dropped)", dropped)
        }),
      recovery: 5,
      check: (v) => {
        // each reset hit one transfer's COMMIT: exactly that many outcomes are unknown, and all are resolved
        assert.isAbove(v.unknown, 0)
        assert.strictEqual(v.unknown, delivered + dropped)
        assert.isAtMost(v.unknownCommitted, delivered)
        assert.isAtLeast(v.unknownAborted, dropped)
      }
    })
  })

  it.effect("proxy: black hole, then recovery", () =>
    runScenario({
      name: "black hole",
      proxy: true,
      engine: {
        pool: { size: 4, acquireTimeout: "1 second", validateAfterIdle: "100 millis" },
        connectTimeout: "1 second",
        killGrace: "500 millis"
      },
      // units bounded by a Session `timeout`: a statement stuck in the hole is interrupted, cannot be KILLed (the
      // KILL connection is black-holed too), and its connection is destroyed after killGrace
      workload: { writers: WRITERS, unitsPerWriter: UNITS, options: { timeout: "1 second" } },
      fault: (env) =>
        Effect.gen(function* () {
          yield* awaitProgress(env, Math.floor((WRITERS * UNITS) / 4))
          yield* env.proxy!.blackhole(true)
          fault(env, "black hole")
          const before = (yield* Engine.stats).acquireTimeouts
          yield* pace(2_000)
          fault(env, "PoolTimeout while black-holed", (yield* Engine.stats).acquireTimeouts - before)
          yield* env.proxy!.blackhole(false)
        }).pipe(Effect.ensuring(env.proxy!.blackhole(false))),
      recovery: 10,
      // units in the hole end with TransactionTimeout; waiters time out with PoolTimeout (retried by `retry: true`)
      check: (_v, o, env) =>
        assert.isAbove((o.errors["TransactionTimeout"] ?? 0) + (env.faults["PoolTimeout while black-holed"] ?? 0), 0)
    })
  )

  it.effect("pool exhaustion with a short acquire timeout: PoolTimeout, retryable, nothing leaks", () =>
    runScenario({
      name: "pool exhaustion",
      pool: 2,
      // warm: the timeouts are the pool's, not a connection still being opened (one takes longer than 50 ms on
      // PostgreSQL: a backend process forked and a SCRAM exchange)
      engine: { pool: { size: 2, minIdle: 2, acquireTimeout: "50 millis", validateAfterIdle: "200 millis" } },
      warm: true,
      workload: {
        writers: WRITERS * 2,
        unitsPerWriter: Math.ceil(UNITS / 2),
        readers: 1,
        options: { retry: false },
        at: (_ctx, step) => (step === "locked" ? Bank.sleep(0.02) : Effect.void)
      },
      recovery: 5,
      check: (v, o) => {
        assert.isAbove(o.errors["PoolTimeout"] ?? 0, 0, JSON.stringify(o.errors))
        assert.isTrue(new SessionError.PoolTimeout({ message: "", stats: {} as any }).retryable)
        assert.isAbove(v.acked, 0)
      }
    }).pipe(
      Effect.tap(() =>
        Effect.sync(() => {
          const row = Tally.rows[Tally.rows.length - 1]!
          ;(row.faults as Record<string, number>)["PoolTimeout"] = row.errors["PoolTimeout"] ?? 0
        })
      )
    )
  )

  it.effect("lock wait timeouts behind a held row lock", () =>
    runScenario({
      name: "lock wait",
      workload: {
        writers: WRITERS,
        unitsPerWriter: Math.ceil(UNITS / 2),
        options: { retry: false, lockWaitTimeout: "1 second" }
      },
      // the lock is taken before the load starts: a load that ended before it was held (a slow superuser
      // connection on a busy machine) met no lock wait (CI, PostgreSQL: no LockWaitTimeout at all)
      faultFirst: true,
      fault: (env) =>
        Effect.scoped(
          Effect.gen(function* () {
            yield* env.db.holdLocks("SELECT * FROM bank_accounts WHERE id = 1 FOR UPDATE")
            fault(env, "held row lock")
            yield* Deferred.succeed(env.faultReady, undefined)
            // hold it for a while, then let the rest of the load through (rolled back with the scope)
            yield* pace(2_000)
          })
        ),
      recovery: 5,
      check: (_v, o) => assert.isAbove(o.errors["LockWaitTimeout"] ?? 0, 0, JSON.stringify(o.errors))
    })
  )
}

for (const [name, db] of dialects) {
  layer(db, { timeout: 120_000, excludeTestServices: true })(`reliability (bank workload, ${name})`, (it) =>
    scenarios(it, name)
  )
}

afterAll(() => {
  const t = Tally.totals()
  console.log(
    `\nsessionfx reliability summary (${Bank.SOAK ? "soak" : "default"} mode)\n${Tally.render()}\n${JSON.stringify(t, null, 2)}`
  )
  assert.strictEqual(t.lost, 0, "lost")
  assert.strictEqual(t.duplicated, 0, "duplicated")
  assert.strictEqual(t.phantom, 0, "phantom")
  assert.strictEqual(t.leaks, 0, "leaked connections")
})
