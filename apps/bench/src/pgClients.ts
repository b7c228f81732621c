/**
 * `pnpm bench pg-clients`: which PostgreSQL client the PostgreSQL driver should wrap, by measurement. The transfer
 * unit (BEGIN; SELECT … FOR UPDATE of 2 rows; 2 UPDATEs; INSERT; COMMIT) hand-written with `pg` (node-postgres, what
 * `@effect/sql-pg` wraps) and with `postgres` (postgres.js), both with a pool of 16 and prepared statements, against
 * a private `PgServer` (or `PG_URL`'s). Concurrency 1/16/64; client CPU per transfer (`process.cpuUsage`) and
 * transfers/s; the median of `--reps` repetitions, the libraries interleaved within each repetition.
 *
 *   pnpm bench pg-clients [--transfers 3000] [--accounts 1000] [--concurrency 1,16,64] [--reps 3] [--seed 42]
 */
import { PgServer } from "@sessionfx/testing"
import * as Effect from "effect/Effect"
import * as Redacted from "effect/Redacted"
import * as Pg from "pg"
import postgres from "postgres"
import { makePlan, type Plan } from "./workload.js"

const POOL_SIZE = 16
const SELECT_FOR_UPDATE = "SELECT balance FROM accounts WHERE id IN ($1, $2) FOR UPDATE"
const DEBIT = "UPDATE accounts SET balance = balance - $1 WHERE id = $2"
const CREDIT = "UPDATE accounts SET balance = balance + $1 WHERE id = $2"
const INSERT_TRANSFER = "INSERT INTO transfers (src, dst, amount) VALUES ($1, $2, $3)"

/** Deadlock and serialization failure: the unit is run again, as every implementation of the workload does. */
const isRetryable = (error: unknown): boolean => {
  const code = (error as { readonly code?: unknown } | null)?.code
  return code === "40P01" || code === "40001"
}

const retry = async (unit: () => Promise<void>): Promise<void> => {
  for (let attempt = 1; ; attempt++) {
    try {
      return await unit()
    } catch (error) {
      if (attempt >= 20 || !isRetryable(error)) throw error
    }
  }
}

interface Client {
  readonly name: string
  readonly transfer: (a: number, b: number, amount: number) => Promise<void>
  readonly close: () => Promise<void>
}

/** node-postgres: a Pool, named (prepared) statements, BEGIN / COMMIT, ROLLBACK on error. */
const nodePostgres = (url: string): Client => {
  const pool = new Pg.Pool({ connectionString: url, max: POOL_SIZE })
  const unit = async (a: number, b: number, amount: number) => {
    const client = await pool.connect()
    try {
      await client.query("BEGIN")
      await client.query({ name: "select_for_update", text: SELECT_FOR_UPDATE, values: [a, b] })
      await client.query({ name: "debit", text: DEBIT, values: [amount, a] })
      await client.query({ name: "credit", text: CREDIT, values: [amount, b] })
      await client.query({ name: "insert_transfer", text: INSERT_TRANSFER, values: [a, b, amount] })
      await client.query("COMMIT")
      client.release()
    } catch (error) {
      await client.query("ROLLBACK").then(
        () => client.release(),
        () => client.release(true)
      )
      throw error
    }
  }
  return { name: "pg", transfer: (a, b, amount) => retry(() => unit(a, b, amount)), close: () => pool.end() }
}

/** postgres.js: `sql.begin` (BEGIN / COMMIT, ROLLBACK on error), its default prepared statements. */
const postgresJs = (url: string): Client => {
  const sql = postgres(url, { max: POOL_SIZE, onnotice: () => {} })
  const unit = (a: number, b: number, amount: number) =>
    sql
      .begin(async (tx) => {
        await tx`SELECT balance FROM accounts WHERE id IN (${a}, ${b}) FOR UPDATE`
        await tx`UPDATE accounts SET balance = balance - ${amount} WHERE id = ${a}`
        await tx`UPDATE accounts SET balance = balance + ${amount} WHERE id = ${b}`
        await tx`INSERT INTO transfers (src, dst, amount) VALUES (${a}, ${b}, ${amount})`
      })
      .then(() => undefined)
  return { name: "postgres", transfer: (a, b, amount) => retry(() => unit(a, b, amount)), close: () => sql.end() }
}

const clients: ReadonlyArray<(url: string) => Client> = [nodePostgres, postgresJs]

const resetSchema = async (url: string, accounts: number, create: boolean) => {
  const sql = postgres(url, { max: 1, onnotice: () => {} })
  try {
    if (create) {
      await sql`DROP TABLE IF EXISTS transfers, accounts`
      await sql`CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL)`
      await sql`CREATE TABLE transfers (id BIGSERIAL PRIMARY KEY, src INT NOT NULL, dst INT NOT NULL, amount BIGINT NOT NULL)`
      await sql`INSERT INTO accounts SELECT g, 1000000 FROM generate_series(1, ${accounts}) AS g`
    } else {
      await sql`TRUNCATE transfers`
      await sql`UPDATE accounts SET balance = 1000000`
    }
    await sql`VACUUM ANALYZE accounts`
    await sql`CHECKPOINT`.catch(() => undefined) // the application role may not: nothing to measure then
  } finally {
    await sql.end()
  }
}

/** The total is conserved and every transfer is recorded: both clients did the whole unit. */
const check = async (url: string, accounts: number, transfers: number) => {
  const sql = postgres(url, { max: 1, onnotice: () => {} })
  try {
    const [row] = await sql<Array<{ total: string; n: string }>>`
      SELECT (SELECT SUM(balance) FROM accounts)::text AS total, (SELECT COUNT(*) FROM transfers)::text AS n`
    if (row?.total !== String(accounts * 1000000) || row?.n !== String(transfers)) {
      throw new Error(`the workload was not conserved: ${JSON.stringify(row)}`)
    }
  } finally {
    await sql.end()
  }
}

interface Sample {
  readonly client: string
  readonly concurrency: number
  readonly transfersPerSecond: number
  readonly cpuMicrosPerTransfer: number
}

const runOnce = async (client: Client, plan: Plan, concurrency: number, from: number, count: number) => {
  let next = from
  const end = from + count
  const worker = async () => {
    while (next < end) {
      const i = next++
      await client.transfer(plan.src[i]!, plan.dst[i]!, plan.amount[i]!)
    }
  }
  const cpu = process.cpuUsage()
  const started = process.hrtime.bigint()
  await Promise.all(Array.from({ length: concurrency }, worker))
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  const used = process.cpuUsage(cpu)
  return { transfersPerSecond: count / seconds, cpuMicrosPerTransfer: (used.user + used.system) / count }
}

const median = (values: ReadonlyArray<number>): number => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]!
}

export interface PgClientsOptions {
  readonly transfers: number
  readonly accounts: number
  readonly concurrency: ReadonlyArray<number>
  readonly reps: number
  readonly seed: number
}

export const pgClients = (options: PgClientsOptions): Effect.Effect<void, PgServer.PgServerError> =>
  Effect.scoped(
    Effect.gen(function* () {
      const server = yield* PgServer.make()
      const url = Redacted.value(server.url)
      yield* Effect.logInfo(`server: PostgreSQL ${server.version} (${server.kind}) at ${server.host}:${server.port}`)
      yield* Effect.promise(() => measure(url, options))
    })
  )

const measure = async (url: string, options: PgClientsOptions) => {
  const warmup = 500
  const plan = makePlan(options.transfers + warmup, options.accounts, options.seed)
  await resetSchema(url, options.accounts, true)
  const samples: Array<Sample> = []
  for (let rep = 1; rep <= options.reps; rep++) {
    for (const concurrency of options.concurrency) {
      // interleaved: each library in turn, on the same plan and a freshly reset table
      const order = rep % 2 === 1 ? clients : [...clients].reverse()
      for (const make of order) {
        await resetSchema(url, options.accounts, false)
        const client = make(url)
        try {
          await runOnce(client, plan, concurrency, 0, warmup) // connections opened, statements prepared, JIT warm
          global.gc?.()
          const result = await runOnce(client, plan, concurrency, warmup, options.transfers)
          samples.push({ client: client.name, concurrency, ...result })
          process.stdout.write(
            `rep ${rep} c=${concurrency} ${client.name}: ${result.transfersPerSecond.toFixed(0)} transfers/s, ` +
              `${result.cpuMicrosPerTransfer.toFixed(0)} µs CPU/transfer\n`
          )
        } finally {
          await client.close()
        }
        await check(url, options.accounts, options.transfers + warmup)
      }
    }
  }
  const lines = [
    `| concurrency | client | transfers/s (median) | client CPU µs/transfer (median) |`,
    `| ---: | --- | ---: | ---: |`
  ]
  for (const concurrency of options.concurrency) {
    for (const name of ["pg", "postgres"]) {
      const mine = samples.filter((s) => s.client === name && s.concurrency === concurrency)
      lines.push(
        `| ${concurrency} | ${name} | ${median(mine.map((s) => s.transfersPerSecond)).toFixed(0)} | ${median(mine.map((s) => s.cpuMicrosPerTransfer)).toFixed(0)} |`
      )
    }
  }
  process.stdout.write(`\n${lines.join("\n")}\n`)
}
