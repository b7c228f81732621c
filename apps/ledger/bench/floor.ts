/**
 * The floor of the ledger benchmark: what a transfer costs a Node process that does nothing but the work itself.
 *
 * A minimal server of the ledger's TCP line protocol written directly on `node:net` and `mysql2` callbacks — no
 * Effect, no sessionfx, no schema decoding, no metrics, no logging — over a pool of 10 connections, sending the
 * database exactly what the ledger sends for a transfer: `START TRANSACTION`, the ledger's three statements
 * (`SELECT … FOR UPDATE` in id order, `INSERT INTO transfers`, `UPDATE … CASE`) as prepared statements with the same
 * text and every integer bound as BIGINT (as sessionfx binds it), then `COMMIT`; deadlocks and lock wait timeouts
 * re-run the unit, as in the ledger. One write per response.
 *
 * Only what the demo client needs is implemented: `auth`, `transfer`, and (for the demo's set-up, not measured)
 * `batch` of `create_account`, `deposit` and `balance`; any other `op` is `unknown_operation`. Validation is minimal.
 * It is a measuring stick for `src/bench.ts` (`--floor`), not a server.
 *
 *   node --import tsx bench/floor.ts --url mysql://user:pass@127.0.0.1:3306/db --port 7072 --token T
 */
import * as Mysql from "mysql2"
import * as Net from "node:net"

const argv = process.argv.slice(2)
const arg = (name: string, fallback?: string): string => {
  const i = argv.indexOf(`--${name}`)
  if (i !== -1) return argv[i + 1]!
  if (fallback === undefined) throw new Error(`--${name} is required`)
  return fallback
}
const url = arg("url")
const port = Number(arg("port", "7072"))
const token = arg("token")
const POOL = Number(arg("pool", "10"))

// the same statement texts as src/Ledger.ts (the template literals' whitespace included)
const LOCK_ONE = `SELECT id, name, balance FROM accounts WHERE id = ? FOR UPDATE`
const LOCK_TWO = `
            SELECT id, name, balance FROM accounts WHERE id IN (?, ?) ORDER BY id FOR UPDATE`
const INSERT = `
      INSERT INTO transfers (src, dst, amount, idempotency_key)
      VALUES (?, ?, CAST(? AS SIGNED), ?)`
const MOVE = `
        UPDATE accounts SET balance = balance + CASE WHEN id = ? THEN -CAST(? AS SIGNED)
          ELSE CAST(? AS SIGNED) END
        WHERE id IN (?, ?)`
const DEPOSIT = `UPDATE accounts SET balance = balance + CAST(? AS SIGNED) WHERE id = ?`
const CREATE = `INSERT INTO accounts (name, balance) VALUES (?, 0)`
const BALANCE = `SELECT id, name, balance FROM accounts WHERE id = ?`

/** mysql2's typed BIGINT parameter (on the default export under Node's ESM loader). */
const Typed = ((Mysql as unknown as { TypedParameter?: unknown }).TypedParameter ??
  (Mysql as unknown as { default: { TypedParameter: unknown } }).default.TypedParameter) as {
  LONGLONG: (v: bigint) => unknown
}
const big = (v: number | bigint) => Typed.LONGLONG(BigInt(v))

type Conn = Mysql.Connection
type Done<A> = (error: (Error & { errno?: number }) | null, value?: A) => void

const parsed = new URL(url)
const socketPath = parsed.searchParams.get("socket")
// the connection options of sessionfx's Engine (src/Engine.ts in packages/session)
const config: Mysql.ConnectionOptions = {
  host: parsed.hostname,
  port: Number(parsed.port || 3306),
  ...(socketPath !== null ? { socketPath } : {}),
  user: decodeURIComponent(parsed.username),
  password: decodeURIComponent(parsed.password),
  database: decodeURIComponent(parsed.pathname.slice(1)),
  supportBigNumbers: true,
  multipleStatements: true,
  enableKeepAlive: true
}
const idle: Array<Conn> = []
const waiting: Array<(c: Conn) => void> = []
const acquire = (k: (c: Conn) => void) => {
  const c = idle.pop()
  if (c !== undefined) k(c)
  else waiting.push(k)
}
const release = (c: Conn) => {
  const w = waiting.shift()
  if (w !== undefined) w(c)
  else idle.push(c)
}

/** A domain refusal: the unit rolls back and the client gets `{ code, message }`. */
class Refused {
  constructor(readonly body: Record<string, unknown>) {}
}

interface Row {
  readonly id: number | string
  readonly balance: number | string
}

/**
 * One unit: START TRANSACTION, `body`, COMMIT (ROLLBACK on a failure); deadlocks and lock wait timeouts re-run it
 * (at most 6 attempts, as the reference).
 */
const unit = <A>(body: (c: Conn, k: Done<A>) => void, k: (e: unknown, a?: A) => void, attempt = 0) =>
  acquire((c) => {
    const fail = (e: unknown) =>
      c.query("ROLLBACK", () => {
        release(c)
        const errno = (e as { errno?: number }).errno
        if ((errno === 1213 || errno === 1205) && attempt < 5) unit(body, k, attempt + 1)
        else k(e)
      })
    c.query("START TRANSACTION", (e) => {
      if (e) return fail(e)
      body(c, (e, a) => {
        if (e) return fail(e)
        c.query("COMMIT", (e) => {
          if (e) return fail(e)
          release(c)
          k(null, a)
        })
      })
    })
  })

/** Moves `amount` (`from` or `to` may be null: a deposit or a withdrawal) inside an open transaction. */
const move = (c: Conn, from: number | null, to: number | null, amount: bigint, k: Done<Record<string, unknown>>) => {
  const lock =
    from !== null && to !== null
      ? c.execute<Array<Row & Mysql.RowDataPacket>>(
          LOCK_TWO,
          from < to ? [big(from), big(to)] : [big(to), big(from)],
          locked
        )
      : c.execute<Array<Row & Mysql.RowDataPacket>>(LOCK_ONE, [big((from ?? to)!)], locked)
  void lock
  function locked(e: Error | null, rows?: Array<Row>) {
    if (e) return k(e)
    let fromBalance: bigint | undefined
    let found = 0
    for (const r of rows!) {
      found++
      if (Number(r.id) === from) fromBalance = BigInt(r.balance)
    }
    if (found !== (from !== null && to !== null ? 2 : 1)) {
      return k(new Refused({ code: "account_not_found", message: "account does not exist" }) as never)
    }
    if (fromBalance !== undefined && fromBalance < amount) {
      return k(
        new Refused({
          code: "insufficient_funds",
          message: `account ${from} has ${fromBalance}, cannot take ${amount}`,
          account: from,
          balance: Number(fromBalance),
          amount: Number(amount)
        }) as never
      )
    }
    c.execute<Mysql.ResultSetHeader>(
      INSERT,
      [from === null ? null : big(from), to === null ? null : big(to), big(amount), null],
      (e, inserted) => {
        if (e) return k(e)
        const done = (e: Error | null) =>
          e
            ? k(e)
            : k(null, {
                id: inserted!.insertId,
                kind: from === null ? "deposit" : to === null ? "withdrawal" : "transfer",
                from,
                to,
                amount: Number(amount),
                idempotencyKey: null
              })
        if (from !== null && to !== null) {
          c.execute(MOVE, [big(from), big(amount), big(amount), big(from), big(to)], done)
        } else {
          c.execute(DEPOSIT, [big(from === null ? amount : -amount), big((to ?? from)!)], done)
        }
      }
    )
  }
}

/** The demo's set-up (not measured): a batch of create_account / deposit / balance in one unit. */
const batchOps = (c: Conn, ops: Array<Record<string, any>>, k: Done<unknown>) => {
  const results: Array<unknown> = []
  const next = (i: number) => {
    if (i === ops.length) return k(null, { results })
    const o = ops[i]!
    const push = (e: Error | null, r?: unknown) => {
      if (e) return k(e)
      results.push(r)
      next(i + 1)
    }
    switch (o.op) {
      case "create_account":
        return c.execute<Mysql.ResultSetHeader>(CREATE, [String(o.name)], (e, r) =>
          push(e, e ? undefined : { id: r!.insertId, name: o.name, balance: 0 })
        )
      case "deposit":
        return move(c, null, Number(o.account), BigInt(o.amount), push)
      case "balance":
        return c.execute<Array<Row & Mysql.RowDataPacket>>(BALANCE, [big(Number(o.account))], (e, rows) =>
          push(e, e ? undefined : { id: Number(rows![0]!.id), balance: String(rows![0]!.balance) })
        )
      default:
        return k(new Refused({ code: "unknown_operation", message: "unknown operation" }) as never)
    }
  }
  next(0)
}

const isPositiveInt = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v > 0

const serve = (socket: Net.Socket) => {
  socket.setNoDelay(true)
  socket.setEncoding("utf8")
  let buffer = ""
  let authenticated = false
  let busy = false
  const lines: Array<string> = []
  const reply = (id: unknown, body: Record<string, unknown>) => {
    if (socket.writable) socket.write(JSON.stringify({ id, ...body }) + "\n")
  }
  const answer = (id: unknown) => (e: unknown, result?: unknown) => {
    if (e === null || e === undefined) reply(id, { ok: true, result })
    else if (e instanceof Refused) reply(id, { ok: false, error: e.body })
    else {
      process.stderr.write(`request failed: ${String(e)}\n`)
      reply(id, { ok: false, error: { code: "unavailable", message: "try again later" } })
    }
    busy = false
    pump()
  }
  // one request at a time per connection, in order
  const pump = () => {
    while (!busy && lines.length > 0) {
      const line = lines.shift()!
      let req: Record<string, any>
      try {
        req = JSON.parse(line)
        if (typeof req !== "object" || req === null) throw new Error()
      } catch {
        reply(null, { ok: false, error: { code: "invalid_request", message: "malformed JSON" } })
        continue
      }
      const id = typeof req.id === "number" || typeof req.id === "string" ? req.id : null
      if (!authenticated) {
        if (req.op === "auth" && req.token === token) {
          authenticated = true
          reply(id, { ok: true, result: { authenticated: true } })
          continue
        }
        reply(id, { ok: false, error: { code: "unauthorized", message: "authenticate first" } })
        socket.end()
        return
      }
      if (req.op === "transfer") {
        const { from, to, amount } = req
        if (!isPositiveInt(from) || !isPositiveInt(to) || !isPositiveInt(amount) || from === to) {
          reply(id, { ok: false, error: { code: "invalid_request", message: "invalid transfer" } })
          continue
        }
        busy = true
        unit<Record<string, unknown>>((c, k) => move(c, from, to, BigInt(amount), k), answer(id))
      } else if (req.op === "batch" && Array.isArray(req.ops)) {
        busy = true
        unit<unknown>((c, k) => batchOps(c, req.ops, k), answer(id))
      } else {
        reply(id, {
          ok: false,
          error: {
            code: "unknown_operation",
            message: "unknown operation",
            op: typeof req.op === "string" ? req.op : null
          }
        })
      }
    }
  }
  socket.on("data", (chunk: string) => {
    buffer += chunk
    let nl: number
    while ((nl = buffer.indexOf("\n")) !== -1) {
      const line = buffer.slice(0, nl).trim()
      buffer = buffer.slice(nl + 1)
      if (line.length > 0) lines.push(line)
    }
    pump()
  })
  socket.on("error", () => socket.destroy())
}

let opened = 0
for (let i = 0; i < POOL; i++) {
  const c = Mysql.createConnection(config)
  c.on("error", (e) => {
    process.stderr.write(`database connection error: ${e.message}\n`)
    process.exit(1)
  })
  c.connect((e) => {
    if (e) {
      process.stderr.write(`cannot connect: ${e.message}\n`)
      process.exit(1)
    }
    release(c)
    if (++opened === POOL) {
      Net.createServer(serve).listen(port, "127.0.0.1", () => {
        process.stdout.write(`floor server listening on 127.0.0.1:${port}\n`)
      })
    }
  })
}
process.on("SIGTERM", () => process.exit(0))
