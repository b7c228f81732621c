/**
 * A node-postgres connection behind the seam (`RawConnection`): every reply carries the transaction status of the
 * ReadyForQuery that ended it (`I` idle, `T` in a transaction, `E` in a failed transaction), statements go through
 * the extended protocol (one statement per command, values never in the text), and streamed rows are read through
 * a cursor in batches, the next batch asked for only while the consumer is not paused. The client is given one
 * query at a time (`ClientQueue`): what the connection sends while a query runs waits for its ReadyForQuery.
 *
 * @internal
 */
import * as Pg from "pg"
import Cursor from "pg-cursor"
import type { Connector, RawConnection, Reply, ReplyCallback, RowSink, RowStream } from "../types.js"
import { AfterBegin, isBegin } from "./begin.js"
import { commitKind, mayHaveWritten, TOKEN_AFTER, tokenOf, TRACKED_COMMIT } from "./commitToken.js"
import { isFatal, mark } from "./errors.js"
import { ClientQueue } from "./queue.js"

/** Rows asked of the server by a cursor's first read; later reads ask for about `BATCH_BYTES` of rows. */
const BATCH = 128
const BATCH_BYTES = 512 * 1024
const MAX_BATCH = 2048

/** The next read's row count: about `BATCH_BYTES` at the last read's bytes per row. */
const nextBatch = (bytes: number, rows: number): number =>
  rows === 0 || bytes <= 0 ? BATCH : Math.max(16, Math.min(MAX_BATCH, Math.floor((BATCH_BYTES * rows) / bytes)))

// node-postgres's protocol connection is untyped in @types/pg
type Protocol = any

/** The transaction status of the last ReadyForQuery: `I`, `T` or `E` (`null` before the first). */
const statusOf = (client: Pg.Client): string | null =>
  (client as unknown as { getTransactionStatus(): string | null }).getTransactionStatus()

const ignore = () => undefined

/** The savepoint a stream inside a transaction runs under. */
const STREAM_SAVEPOINT = "sessionfx_stream"

/** A statement of the driver's own, through the extended protocol. */
const extended = (text: string): Pg.QueryConfig => ({ text, queryMode: "extended" }) as Pg.QueryConfig

const codeOf = (err: unknown): unknown =>
  err !== null && typeof err === "object" ? (err as { readonly code?: unknown }).code : undefined

/** sessionfx's own settings statement (`Dialect.settingsSql`) and each setting in it. */
const SET_CONFIG = "SELECT set_config("
const SETTING = /set_config\('([^']+)', '((?:[^']|'')*)', false\)/g

interface Result {
  readonly command: string | null
  readonly rowCount: number | null
  readonly rows: Array<unknown>
  readonly fields: ReadonlyArray<unknown>
}

/** The rows of a result; a statement without a result set also says how many rows it touched (`affectedRows`). */
const rowsOf = (result: Result): unknown => {
  const rows = result.rows
  if (result.fields.length === 0) {
    Object.defineProperty(rows, "affectedRows", { value: result.rowCount ?? 0, enumerable: false })
  }
  return rows
}

class PgConnection implements RawConnection {
  readonly threadId: number
  private readonly protocol: Protocol
  /** Every query of this connection, one at a time. */
  private readonly queue: ClientQueue
  /** Gone: closed by the server, the network or `destroy`. */
  private gone = false
  /** A ParameterStatus arrived (the server reports a change of a reported setting) since the last command began. */
  private parameterChanged = false
  /** The first error of the failed transaction (`E`), for what the COMMIT that can only roll back says. */
  private failure: unknown = undefined
  private lastError: unknown = undefined
  /** The session settings sessionfx gave this connection (`set_config`), as the core believes them to be. */
  private readonly settings = new Map<string, string>()
  /** One of them was set inside the open transaction: a rollback (or ROLLBACK TO) undoes it on the server. */
  private settingsInTransaction = false
  /** A BEGIN answered but not yet sent: it goes in the same write as the next command (`begin.ts`). */
  private pendingBegin: string | undefined = undefined
  /** The cursor streaming now, paused by the core for backpressure. */
  private reading: { paused: boolean; next: (() => void) | undefined } | undefined = undefined

  /** Commits yield causality tokens (an engine with replicas): see `commitToken.ts`. */
  private readonly tracking: boolean

  constructor(
    readonly client: Pg.Client,
    tracking = false
  ) {
    this.tracking = tracking
    this.threadId = (client as unknown as { processID: number }).processID ?? 0
    this.protocol = (client as unknown as { connection: Protocol }).connection
    client.removeAllListeners("error")
    // an error nobody listens for must never reach the process
    client.on("error", ignore)
    client.on("end", () => (this.gone = true))
    this.queue = new ClientQueue(client, this.protocol)
    this.protocol.on("parameterStatus", () => (this.parameterChanged = true))
    // before the client's own listener (which calls the query back): the first error of a failed transaction
    this.protocol.prependListener("readyForQuery", (msg: { status?: string }) => {
      if (msg.status === "E") this.failure ??= this.lastError
      else this.failure = undefined
    })
  }

  private reply(rows: unknown): Reply {
    const status = statusOf(this.client)
    const changed = this.parameterChanged
    this.parameterChanged = false
    return {
      rows,
      inTransaction: status === null ? undefined : status !== "I",
      autocommit: undefined,
      stateChanged: changed,
      token: undefined
    }
  }

  private error(err: unknown): unknown {
    this.lastError = err
    return mark(err, this.gone)
  }

  /**
   * A command failed: its error (recorded now, for the ReadyForQuery's listener) once the command has ended. node-postgres
   * calls a query back at its ErrorResponse, before the ReadyForQuery that ends it: until then the client's transaction
   * status is the previous command's and the backend still reports the statement as running (the server flushes an
   * error before it goes idle). The queue runs the answer once that ReadyForQuery has arrived (or the client is gone).
   */
  private failed(err: unknown, cb: ReplyCallback): void {
    this.lastError = err
    // whether it ended the connection is decided as it arrived: a COMMIT the server refused stays refused if the
    // connection is lost before the ReadyForQuery after it
    const marked = mark(err, this.gone)
    this.queue.then(() => cb(marked, undefined))
  }

  /**
   * A COMMIT of a failed transaction answers ROLLBACK: it is a refused COMMIT, classified as the failure that caused
   * it (its SQLSTATE and details: a caught duplicate key is `DuplicateKey`, a caught deadlock `Deadlock`, retryable —
   * as a COMMIT refused by a deferred constraint, or a deadlock that aborts a unit on MariaDB); 25P02 when there is
   * none, or when it was one that ends a connection (that is not what happened to this COMMIT).
   */
  private commitRefused(failure: unknown): Error {
    const first = (failure ?? {}) as Record<string, unknown>
    const own = typeof first.code === "string" && !isFatal(failure)
    return mark(
      Object.assign(
        new Error(
          `COMMIT rolled the transaction back: it had failed earlier${first.message !== undefined ? ` (${String(first.message)})` : ""}`
        ),
        own
          ? {
              code: first.code,
              detail: first.detail,
              constraint: first.constraint,
              column: first.column,
              cause: failure
            }
          : { code: "25P02", cause: failure }
      )
    )
  }

  readonly query = (sql: string, rowsAsArray: boolean, cb: ReplyCallback): void =>
    this.execute(sql, [], rowsAsArray, cb)

  readonly execute = (sql: string, values: ReadonlyArray<unknown>, rowsAsArray: boolean, cb: ReplyCallback): void =>
    this.queue.then(() => this.run(sql, values, rowsAsArray, cb))

  /** One command, the client idle: the transaction status it reads is the last reply's. */
  private run(sql: string, values: ReadonlyArray<unknown>, rowsAsArray: boolean, cb: ReplyCallback): void {
    if (this.pendingBegin === undefined && isBegin(sql, values) && statusOf(this.client) === "I" && !this.gone) {
      return this.deferBegin(sql, cb)
    }
    this.parameterChanged = false
    // the error a failed transaction records is this command's (or none), never an earlier one's
    this.lastError = undefined
    const before = statusOf(this.client)
    if (this.tracking && sql === "COMMIT" && before === "T") return this.trackedCommit(cb)
    const begin = this.pendingBegin
    this.pendingBegin = undefined
    // read before the reply: the COMMIT's own ReadyForQuery clears it
    const failure = sql === "COMMIT" ? this.failure : undefined
    const commit = sql === "COMMIT" && statusOf(this.client) === "E"
    // the empty statement (the status probe) through the simple protocol: the extended one refuses it in a
    // failed transaction (25P02), the simple one answers with the status (after a deferred BEGIN none is failed)
    const config = (
      sql === "" && begin === undefined
        ? { text: sql }
        : {
            text: sql,
            values: values as Array<unknown>,
            queryMode: "extended",
            ...(rowsAsArray ? { rowMode: "array" } : {})
          }
    ) as Pg.QueryConfig
    try {
      let answered = false
      const callback = (err: unknown, result: Result) => {
        // node-postgres can call a query back twice (a value that fails to bind: its error, then an empty success at
        // the ReadyForQuery); the first answer is the command's
        if (answered) return
        answered = true
        if (err) return this.failed(err, cb)
        const rolledBack = this.track(sql, result)
        const done = () =>
          commit || (sql === "COMMIT" && result.command === "ROLLBACK")
            ? cb(this.commitRefused(failure), undefined)
            : this.tracking && before === "I" && statusOf(this.client) === "I" && mayHaveWritten(sql, result.command)
              ? this.withToken(this.reply(rowsOf(result)), false, cb)
              : cb(null, this.reply(rowsOf(result)))
        if (!rolledBack) return done()
        this.reassert((e) => (e ? cb(this.error(e), undefined) : done()))
      }
      if (begin === undefined) this.queue.send(config, callback)
      else this.queue.send(new AfterBegin(begin, config, callback))
    } catch (e) {
      cb(this.error(e), undefined)
    }
  }

  /**
   * COMMIT and its causality token in one round trip (`TRACKED_COMMIT`: three statements in one simple Query). A
   * failure after COMMIT's own CommandComplete (the token statement's) leaves it committed: the token is asked again.
   */
  private trackedCommit(cb: ReplyCallback): void {
    let committed = false
    const onComplete = (msg: { readonly text?: string }) => {
      if (msg.text === "COMMIT") committed = true
    }
    this.protocol.on("commandComplete", onComplete)
    try {
      this.queue.send({ text: TRACKED_COMMIT } as Pg.QueryConfig, (err: unknown, out: unknown) => {
        const results = out as Array<Result>
        this.protocol.removeListener("commandComplete", onComplete)
        if (err && !committed) return this.failed(err, cb)
        if (err) return this.queue.then(() => this.withToken(this.reply([]), false, cb))
        const [first, commit, token] = results
        this.track("COMMIT", commit!)
        const kind = commitKind(first?.rows[0] as Record<string, unknown> | undefined)
        const reply = this.reply(rowsOf(commit!))
        cb(
          null,
          kind.wrote ? { ...reply, token: tokenOf(token?.rows[0] as Record<string, unknown>, kind.sync) } : reply
        )
      })
    } catch (e) {
      this.protocol.removeListener("commandComplete", onComplete)
      cb(this.error(e), undefined)
    }
  }

  /**
   * `reply` with the token of what was just committed, asked in a round trip of its own (`sync`: the commit was
   * synchronous; unknown, the insert position, past the commit either way). Without an answer, no token.
   */
  private withToken(reply: Reply, sync: boolean, cb: ReplyCallback): void {
    this.queue.submit({ text: TOKEN_AFTER } as Pg.QueryConfig, (err: unknown, result: Result) =>
      cb(null, err ? reply : { ...reply, token: tokenOf(result.rows[0] as Record<string, unknown>, sync) })
    )
  }

  /**
   * Answers BEGIN without sending it: it is sent with the next command, in the same write (`begin.ts`). The reply is
   * BEGIN's own (in a transaction, no rows), given on a later microtask as a server's reply would be.
   */
  private deferBegin(sql: string, cb: ReplyCallback): void {
    this.pendingBegin = sql
    const rows: Array<unknown> = []
    Object.defineProperty(rows, "affectedRows", { value: 0, enumerable: false })
    queueMicrotask(() =>
      cb(null, { rows, inTransaction: true, autocommit: undefined, stateChanged: false, token: undefined })
    )
  }

  /**
   * Follows sessionfx's own settings through transactions: records each `set_config` and whether it ran inside a
   * transaction; true when `result` rolled back (ROLLBACK, ROLLBACK TO, a refused COMMIT) what such a SET did.
   */
  private track(sql: string, result: Result): boolean {
    const status = statusOf(this.client)
    if (sql.startsWith(SET_CONFIG)) {
      for (const m of sql.matchAll(SETTING)) this.settings.set(m[1]!, m[2]!)
      if (status !== "I") this.settingsInTransaction = true
      return false
    }
    if (!this.settingsInTransaction) return false
    if (result.command === "ROLLBACK") {
      if (status === "I") this.settingsInTransaction = false
      return this.settings.size > 0
    }
    if (status === "I") this.settingsInTransaction = false
    return false
  }

  /** Sets again, for the session, the settings a rollback undid: the server's match what the core believes. */
  private reassert(cb: (err: unknown) => void): void {
    const parts = [...this.settings].map(([name, value]) => `set_config('${name}', '${value}', false)`)
    this.queue.submit({ text: `SELECT ${parts.join(", ")}`, queryMode: "extended" } as Pg.QueryConfig, (err: unknown) =>
      cb(err)
    )
  }

  readonly stream = (sql: string, values: ReadonlyArray<unknown>, sink: RowSink): RowStream => {
    this.parameterChanged = false
    this.lastError = undefined
    const cursor = new Cursor(sql, values as Array<unknown>)
    const reading = { paused: false, next: undefined as (() => void) | undefined }
    this.reading = reading
    let ended: Result | undefined = undefined
    let settled = false
    let skipping = false
    let guarded = false
    const settle = (err: unknown, result: Result | undefined) => {
      if (settled) return
      settled = true
      if (this.reading === reading) this.reading = undefined
      const stopped = err !== null && err !== undefined && skipping && codeOf(err) === "57014"
      const end = (e: unknown) =>
        e ? sink.end(this.error(e), undefined) : sink.end(null, this.reply(result === undefined ? [] : rowsOf(result)))
      if (!guarded || (err && !stopped)) return end(err)
      this.endGuard(stopped, end)
    }
    cursor.on("end", (result: Result) => (ended = result))
    // an error while no read is pending (the consumer paused) settles the stream too
    cursor.on("error", (e: unknown) => settle(e, undefined))
    let batch = BATCH
    const read = (): void => {
      reading.next = undefined
      const before = this.bytesRead()
      cursor.read(batch, (err: unknown, rows: Array<unknown>) => {
        if (err) return settle(err, undefined)
        batch = nextBatch(this.bytesRead() - before, rows.length)
        if (!skipping) for (const row of rows) sink.row(row)
        if (ended !== undefined) return settle(null, ended)
        if (skipping) return void cursor.close((e: unknown) => settle(e ?? null, ended))
        if (reading.paused) reading.next = read
        else read()
      })
    }
    this.queue.then(() => {
      guarded = this.openStreamGuard(cursor)
    })
    read()
    return {
      skipRest: () => {
        skipping = true
        const next = reading.next
        // between reads: close the portal now
        if (next !== undefined) {
          reading.next = undefined
          cursor.close((e: unknown) => settle(e ?? null, ended))
        }
      }
    }
  }

  /**
   * Inside a transaction a stream's statement runs under a savepoint of its own: a cancel that stops it after its
   * consumer stopped (the core's KILL) undoes the statement alone, as KILL QUERY does on MySQL, instead of failing
   * the whole transaction. A deferred BEGIN is sent first, as a command of its own; neither the savepoint nor the
   * cursor is sent if it failed (the cursor fails with its error). Sends the first and queues the rest, the client
   * idle. True when the stream is guarded.
   */
  private openStreamGuard(cursor: Cursor): boolean {
    const begin = this.pendingBegin
    this.pendingBegin = undefined
    const guarded = begin !== undefined || statusOf(this.client) === "T"
    let failed: unknown = undefined
    if (begin !== undefined) this.queue.send(extended(begin), (err: unknown) => (failed = err ?? undefined))
    this.queue.then(() => {
      if (guarded && failed === undefined) this.queue.send(extended(`SAVEPOINT ${STREAM_SAVEPOINT}`), ignore)
    })
    this.queue.then(() => {
      if (failed === undefined) this.queue.send(cursor)
      else (cursor as unknown as { handleError(e: unknown): void }).handleError(failed)
    })
    return guarded
  }

  /**
   * The stream's savepoint: released, or (`undo`: the statement was cancelled) rolled back to and released. A late
   * cancel of the core's (it resends until the stream has settled) that stops one of these is met by undoing again.
   */
  private endGuard(undo: boolean, cb: (err: unknown) => void, attempt = 0): void {
    const again = (err: unknown) =>
      codeOf(err) === "57014" && attempt < 5 ? this.endGuard(true, cb, attempt + 1) : cb(err)
    const release = () =>
      this.queue.submit(extended(`RELEASE SAVEPOINT ${STREAM_SAVEPOINT}`), (err: unknown) =>
        err ? again(err) : cb(null)
      )
    if (!undo) return void release()
    this.queue.submit(extended(`ROLLBACK TO SAVEPOINT ${STREAM_SAVEPOINT}`), (err: unknown) =>
      err ? again(err) : release()
    )
  }

  readonly ping = (cb: (err: unknown) => void): void =>
    this.execute("SELECT 1", [], false, (err) => cb(err ?? undefined))

  /** Back to a fresh session: ROLLBACK if a transaction is open, then DISCARD ALL (settings, prepared, temp). */
  readonly reset = (cb: (err: unknown) => void): void => {
    // a BEGIN not yet sent opened nothing: there is nothing to roll back
    this.pendingBegin = undefined
    this.settings.clear()
    this.settingsInTransaction = false
    const discard = () => this.execute("DISCARD ALL", [], false, (err) => cb(err ?? undefined))
    if (statusOf(this.client) === "I") return discard()
    this.execute("ROLLBACK", [], false, (err) => (err ? cb(err) : discard()))
  }

  readonly pause = (): void => {
    if (this.reading !== undefined) this.reading.paused = true
  }
  readonly resume = (): void => {
    const reading = this.reading
    if (reading === undefined) return
    reading.paused = false
    const next = reading.next
    if (next !== undefined) next()
  }
  readonly bytesRead = (): number => {
    const n = (this.protocol as { stream?: { bytesRead?: unknown } }).stream?.bytesRead
    return typeof n === "number" ? n : 0
  }
  readonly destroy = (): void => {
    this.gone = true
    this.pendingBegin = undefined
    try {
      ;(this.protocol as { stream?: { destroy?: () => void } }).stream?.destroy?.()
    } catch {
      // already gone
    }
    this.client.end().catch(ignore)
    this.queue.close()
  }
  readonly onGone = (listener: (err: unknown) => void): (() => void) => {
    const client = this.client
    const error = (e: unknown) => listener(mark(e, true))
    const end = () => listener(undefined)
    client.on("error", error)
    client.on("end", end)
    return () => {
      client.removeListener("error", error)
      client.removeListener("end", end)
    }
  }
}

/** Opens node-postgres connections with `config`. @internal */
export const connector =
  (config: Pg.ClientConfig, tracking = false): Connector =>
  (cb) => {
    const client = new Pg.Client(config)
    let settled = false
    const done = (err: unknown) => {
      if (settled) return
      settled = true
      if (err) {
        client.on("error", ignore)
        client.end().catch(ignore)
        cb(mark(err))
      } else cb(null, new PgConnection(client, tracking))
    }
    client.once("error", done)
    // node-postgres calls back inside its handling of the first ReadyForQuery, before it counts itself idle: the
    // connection is lent once that handling is over
    client.connect((err: unknown) => (err ? done(err) : queueMicrotask(() => done(undefined))))
  }
