/**
 * `pnpm bench reads10`: a unit of 10 primary-key reads (one transaction, ten `SELECT … WHERE id = ?` of random
 * accounts), hand-written mysql2 (promise pool, BEGIN, prepared statements, COMMIT) against sessionfx
 * `Session.transact`, interleaved repetitions, client CPU per statement and its ratio to mysql2 (issue 21: ≤ 1.05×).
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { Engine, Session } from "@sessionfx/session"
import * as Effect from "effect/Effect"
import * as ManagedRuntime from "effect/ManagedRuntime"
import * as Mysql from "mysql2/promise"
import { POOL_SIZE } from "./impls/Impl.js"

const READ = "SELECT balance FROM accounts WHERE id = ?"
const READS = 10

interface Reader {
  readonly name: string
  readonly run: (ids: Int32Array, units: number, concurrency: number) => Promise<void>
  readonly close: () => Promise<void>
}

const mysql2Reader = async (url: string): Promise<Reader> => {
  const pool = Mysql.createPool({ uri: url, connectionLimit: POOL_SIZE })
  await pool.query("SELECT 1")
  const unit = async (ids: Int32Array, k: number) => {
    const conn = await pool.getConnection()
    try {
      await conn.query("BEGIN")
      for (let i = 0; i < READS; i++) await conn.execute(READ, [ids[k * READS + i]])
      await conn.query("COMMIT")
    } catch (e) {
      await conn.query("ROLLBACK").catch(() => conn.destroy())
      throw e
    } finally {
      conn.release()
    }
  }
  return {
    name: "mysql2",
    run: async (ids, units, concurrency) => {
      let next = 0
      const worker = async () => {
        for (let k = next++; k < units; k = next++) await unit(ids, k)
      }
      await Promise.all(Array.from({ length: concurrency }, worker))
    },
    close: () => pool.end()
  }
}

/** `concurrency` workers, each running its units one after another (as the mysql2 reader's workers do). */
const workers = async (units: number, concurrency: number, unit: (k: number) => Promise<void>) => {
  let next = 0
  const worker = async () => {
    for (let k = next++; k < units; k = next++) await unit(k)
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
}

const sessionfxReader = async (url: string): Promise<Reader> => {
  const runtime = ManagedRuntime.make(Engine.layer({ url, pool: { size: POOL_SIZE, acquireTimeout: "5 minutes" } }))
  await runtime.runtime()
  const unit = (ids: Int32Array, k: number) =>
    Session.transact(
      Effect.flatMap(SqlClient.SqlClient, (sql) =>
        Effect.gen(function* () {
          for (let i = 0; i < READS; i++) yield* sql`SELECT balance FROM accounts WHERE id = ${ids[k * READS + i]!}`
        })
      )
    )
  return {
    name: "sessionfx-transact",
    run: (ids, units, concurrency) => workers(units, concurrency, (k) => runtime.runPromise(unit(ids, k))),
    close: () => runtime.dispose()
  }
}

const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

/** Runs the comparison and writes a table; the accounts table must exist (`createSchema`). */
export const reads10 = async (
  url: string,
  o: {
    readonly units: number
    readonly accounts: number
    readonly concurrency: ReadonlyArray<number>
    readonly reps: number
    readonly seed: number
  }
): Promise<void> => {
  const readers = [await mysql2Reader(url), await sessionfxReader(url)]
  const gc = (globalThis as { gc?: () => void }).gc
  let seed = o.seed
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648) * o.accounts
  const ids = Int32Array.from({ length: o.units * READS }, () => 1 + Math.floor(random()))
  const cpu = new Map<string, Array<number>>()
  try {
    for (const r of readers) for (const c of o.concurrency) await r.run(ids, Math.min(o.units, 500), c) // warm-up
    for (let rep = 1; rep <= o.reps; rep++) {
      for (const c of o.concurrency) {
        const order = rep % 2 === 0 ? [...readers].reverse() : readers
        for (const r of order) {
          gc?.()
          const before = process.cpuUsage()
          await r.run(ids, o.units, c)
          const used = process.cpuUsage(before)
          const perStatement = (used.user + used.system) / (o.units * READS)
          const key = `${r.name}\u0000${c}`
          cpu.set(key, [...(cpu.get(key) ?? []), perStatement])
        }
      }
    }
  } finally {
    for (const r of readers) await r.close()
  }
  process.stdout.write(
    `\n# A unit of 10 primary-key reads\n\n${o.units} units per run, pool ${POOL_SIZE}, median of ${o.reps} interleaved repetitions\n\n`
  )
  process.stdout.write(
    "| concurrency | mysql2 CPU µs/statement | sessionfx CPU µs/statement | × mysql2 | per repetition |\n"
  )
  process.stdout.write("| ---: | ---: | ---: | ---: | ---: |\n")
  for (const c of o.concurrency) {
    const base = cpu.get(`mysql2\u0000${c}`)!
    const ours = cpu.get(`sessionfx-transact\u0000${c}`)!
    const per = ours.map((v, i) => (v / base[i]!).toFixed(2)).join(" / ")
    process.stdout.write(
      `| ${c} | ${median(base).toFixed(1)} | ${median(ours).toFixed(1)} | ${(median(ours) / median(base)).toFixed(2)} | ${per} |\n`
    )
  }
}
