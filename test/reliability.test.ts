/**
 * Reliability under faults: the bank workload (test/support/bank.ts) runs while one kind of fault is injected, then
 * every unit's outcome is reconciled with the database and the pool / server / process are checked for leaks.
 * One embedded server for the whole file; the tally is printed (and its invariants asserted) at the end.
 * `SESSIONFX_SOAK=1` multiplies the load.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { afterAll, assert, layer } from "@effect/vitest"
import { Engine, SessionError } from "@sessionfx/session"
import { FaultProxy, MysqlServer } from "@sessionfx/testing"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import type * as Redacted from "effect/Redacted"
import * as Admin from "./support/admin.js"
import * as Bank from "./support/bank.js"
import { assertClean, assertClosed, settle, tcpSockets } from "./support/clean.js"
import * as Tally from "./support/tally.js"

const SCALE = Bank.SOAK ? 10 : 1
const WRITERS = Bank.SOAK ? 12 : 6
const UNITS = 20 * SCALE

interface Env {
  readonly server: Admin.Server
  readonly proxy: FaultProxy.FaultProxy["Type"] | undefined
  readonly faults: Record<string, number>
  /** Connection ids of the units running now. */
  readonly live: Set<number>
  readonly acked: () => number
  readonly writing: () => boolean
}

interface Scenario {
  readonly name: string
  readonly pool?: number
  readonly engine?: Partial<Engine.EngineOptions>
  readonly proxy?: boolean
  readonly workload: Omit<Bank.WorkloadOptions, "name" | "onConnection">
  /** Runs beside the workload; must end soon after `env.writing()` turns false. */
  readonly fault?: (env: Env) => Effect.Effect<void, unknown, Engine.Engine>
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

const runScenario = (s: Scenario) =>
  Effect.gen(function* () {
    const server = yield* MysqlServer.MysqlServer
    const started = Date.now()
    const pool = s.pool ?? 4
    const baseline = tcpSockets()
    const live = new Set<number>()
    let writing = true
    let acked = 0
    const env0 = { server, faults: {} as Record<string, number>, live }
    const result = yield* Effect.scoped(
      Effect.gen(function* () {
        const proxy = s.proxy ? yield* FaultProxy.make({ target: { host: server.host, port: server.port } }) : undefined
        const url: Redacted.Redacted<string> = proxy ? proxy.urlFor(server) : server.url
        const env: Env = { ...env0, proxy, acked: () => acked, writing: () => writing }
        const ctx = yield* Layer.build(
          Engine.layer({
            killGrace: "1 second",
            connectTimeout: "3 seconds",
            shutdownTimeout: "5 seconds",
            ...s.engine,
            url,
            pool: { size: pool, acquireTimeout: "5 seconds", validateAfterIdle: "200 millis", ...s.engine?.pool }
          })
        )
        return yield* Effect.gen(function* () {
          yield* Bank.setup(10, 1000)
          const faultFiber = s.fault ? yield* Effect.fork(s.fault(env)) : undefined
          if (process.env.SFX_DEBUG) {
            yield* Effect.forkScoped(
              Effect.flatMap(
                Effect.all([
                  Engine.stats,
                  env.proxy ? env.proxy.counters : Effect.succeed({}),
                  env.proxy ? env.proxy.connections : Effect.succeed(0)
                ]),
                ([st, c, n]) =>
                  Effect.sync(() =>
                    console.log(
                      s.name,
                      Date.now() - started,
                      acked,
                      writing,
                      JSON.stringify(st),
                      live.size,
                      JSON.stringify(c),
                      n
                    )
                  )
              ).pipe(Effect.delay("1 second"), Effect.forever)
            )
          }
          const run = yield* Bank.run({
            ...s.workload,
            name: s.name,
            onConnection: (id, open) => {
              if (open) live.add(id)
              else live.delete(id)
            },
            onAck: () => {
              acked++
            }
          }).pipe(Effect.ensuring(Effect.sync(() => (writing = false))))
          if (faultFiber) yield* Fiber.join(faultFiber)
          let outcomes = run.outcomes
          if (s.recovery) {
            const again = yield* Bank.run({
              name: `${s.name}-recovery`,
              writers: 2,
              unitsPerWriter: s.recovery,
              seed: 99
            })
            assert.strictEqual(
              again.outcomes.acked.length,
              2 * s.recovery,
              `recovery: ${JSON.stringify(again.outcomes.errors)}`
            )
            outcomes = merge(outcomes, again.outcomes)
          }
          const verdict = yield* Bank.verify({ ...run, outcomes })
          const clean = yield* assertClean(server, pool)
          return { verdict, outcomes, env, clean }
        }).pipe(Effect.provide(ctx))
      })
    )
    const stray = yield* assertClosed(server, baseline)
    const { verdict: v, outcomes: o, env } = result
    Tally.add({
      ...v,
      scenario: s.name,
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

layer(MysqlServer.layer(), { timeout: 120_000, excludeTestServices: true })("reliability (bank workload)", (it) => {
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
            return Effect.zipRight(
              Deferred.succeed(gate.reached, undefined),
              Effect.flatMap(SqlClient.SqlClient, (sql) => sql`SELECT SLEEP(5)`)
            )
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

  it.effect("KILL QUERY and KILL CONNECTION of random session connections", () =>
    runScenario({
      name: "kill",
      workload: {
        writers: WRITERS,
        unitsPerWriter: UNITS,
        // keep units on the server long enough to be hit
        at: (_ctx, step) =>
          step === "debited" ? Effect.flatMap(SqlClient.SqlClient, (sql) => sql`SELECT SLEEP(0.01)`) : Effect.void
      },
      fault: (env) =>
        Effect.gen(function* () {
          let i = 0
          while (env.writing()) {
            yield* pace(15 + Math.floor(Math.random() * 30))
            const id = pick(env.live)
            if (id === undefined) continue
            const kind = i++ % 2 === 0 ? "QUERY" : "CONNECTION"
            if (yield* Admin.kill(env.server, kind, id)) fault(env, `KILL ${kind}`)
          }
        }),
      recovery: 5,
      check: (_v, _o, env) => {
        assert.isAbove(env.faults["KILL QUERY"] ?? 0, 0)
        assert.isAbove(env.faults["KILL CONNECTION"] ?? 0, 0)
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
          yield* env.server.restart
          fault(env, "restart")
        }),
      recovery: 10,
      check: (_v, _o, env) => assert.strictEqual(env.faults["restart"], 1)
    })
  )

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
            if (yield* env.proxy!.armed) continue
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
            if (yield* env.proxy!.armed) continue
            const forward = Math.random() < 0.5
            // readers roll back, so every COMMIT on the wire is a transfer's
            yield* env.proxy!.resetNextAfter({
              match: (chunk) => {
                // exactly a COM_QUERY "COMMIT" packet (3-byte length, sequence id, 0x03, text)
                const hit = chunk.length === 11 && chunk[4] === 3 && chunk.subarray(5).toString("latin1") === "COMMIT"
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
      engine: { pool: { size: 2, acquireTimeout: "50 millis", validateAfterIdle: "200 millis" } },
      workload: {
        writers: WRITERS * 2,
        unitsPerWriter: Math.ceil(UNITS / 2),
        readers: 1,
        options: { retry: false },
        at: (_ctx, step) =>
          step === "locked" ? Effect.flatMap(SqlClient.SqlClient, (sql) => sql`SELECT SLEEP(0.02)`) : Effect.void
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
      fault: (env) =>
        Effect.scoped(
          Effect.gen(function* () {
            const conn = yield* Admin.connection(env.server)
            yield* Effect.promise(() => conn.query("START TRANSACTION"))
            yield* Effect.promise(() => conn.query("SELECT * FROM bank_accounts WHERE id = 1 FOR UPDATE"))
            fault(env, "held row lock")
            // hold it for a while, then let the rest of the load through
            yield* pace(3_000)
            yield* Effect.promise(() => conn.query("ROLLBACK"))
          })
        ),
      recovery: 5,
      check: (_v, o) => assert.isAbove(o.errors["LockWaitTimeout"] ?? 0, 0, JSON.stringify(o.errors))
    })
  )
})

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
