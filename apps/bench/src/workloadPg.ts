/**
 * The transfer workload on PostgreSQL: the same schema, reset and conservation check as `workload.ts`'s on MariaDB,
 * written with `pg`.
 */
import * as Pg from "pg"
import { type Conservation, INITIAL_BALANCE, type Workload } from "./workload.js"

const withClient = async <A>(url: string, f: (client: Pg.Client) => Promise<A>): Promise<A> => {
  const client = new Pg.Client({ connectionString: url })
  await client.connect()
  try {
    return await f(client)
  } finally {
    await client.end()
  }
}

/** Drops and creates `accounts` and `transfers`, then fills `accounts`. */
const createSchema = (url: string, accounts: number): Promise<void> =>
  withClient(url, async (client) => {
    await client.query("DROP TABLE IF EXISTS transfers, accounts")
    await client.query("CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL)")
    await client.query(
      "CREATE TABLE transfers (id BIGSERIAL PRIMARY KEY, src INT NOT NULL, dst INT NOT NULL, amount BIGINT NOT NULL)"
    )
    await client.query("INSERT INTO accounts SELECT g, $1 FROM generate_series(1, $2::int) AS g", [
      INITIAL_BALANCE,
      accounts
    ])
    await client.query("VACUUM ANALYZE accounts")
  })

/**
 * Every balance back to the initial amount, no transfer rows; VACUUM so that no run inherits the dead row versions
 * of the one before it.
 */
const resetAccounts = (url: string): Promise<void> =>
  withClient(url, async (client) => {
    await client.query("TRUNCATE TABLE transfers")
    await client.query("UPDATE accounts SET balance = $1", [INITIAL_BALANCE])
    await client.query("VACUUM ANALYZE accounts")
  })

/** As on MariaDB: the sum unchanged, one transfer row per completed unit, every balance its net of the transfers. */
const checkConservation = (url: string, accounts: number, completed: number): Promise<Conservation> =>
  withClient(url, async (client) => {
    const { rows } = await client.query<{ s: string; n: string; t: string; moved: string; mismatch: string }>(
      `SELECT (SELECT COALESCE(SUM(balance), 0) FROM accounts)::text AS s,
              (SELECT COUNT(*) FROM accounts)::text AS n,
              (SELECT COUNT(*) FROM transfers)::text AS t,
              (SELECT COALESCE(SUM(amount), 0) FROM transfers)::text AS moved,
              (SELECT COUNT(*) FROM accounts a
                 LEFT JOIN (SELECT id, SUM(delta) AS delta FROM (
                   SELECT src AS id, -amount AS delta FROM transfers UNION ALL SELECT dst AS id, amount AS delta FROM transfers
                 ) d GROUP BY id) t ON t.id = a.id
               WHERE a.balance <> $1 + COALESCE(t.delta, 0))::text AS mismatch`,
      [INITIAL_BALANCE]
    )
    const row = rows[0]!
    const balanceSum = Number(row.s)
    const expectedSum = accounts * INITIAL_BALANCE
    const transferRows = Number(row.t)
    return {
      ok:
        balanceSum === expectedSum && Number(row.n) === accounts && transferRows === completed && row.mismatch === "0",
      balanceSum,
      expectedSum,
      transferRows,
      completed,
      movedAmount: Number(row.moved)
    }
  })

/** The workload on PostgreSQL. */
export const pgWorkload: Workload = { createSchema, resetAccounts, checkConservation }
