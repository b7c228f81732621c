/**
 * One query at a time on a node-postgres client. pg 8 queues a `client.query()` made while another query runs (with a
 * DeprecationWarning: pg 9 drops that queue); the driver never makes one: every query of a connection (the core's commands, a
 * stream's BEGIN / savepoint / cursor and its ROLLBACK TO, the commit token, a reassertion of settings) and every
 * statement of the engine's control connection (`pg_cancel_backend` of several interruptions at once) goes through
 * this queue, which gives the client the next one only after the ReadyForQuery that ends the previous one.
 *
 * A query's callback runs before that ReadyForQuery when it fails (at the ErrorResponse) and inside the client's own
 * ReadyForQuery handling when it succeeds: what it sends next waits here until the client is idle, in order. Every
 * query the driver gives is answered by exactly one ReadyForQuery (one Sync each: a statement, BEGIN with the next
 * statement, a cursor through its close or its error), and node-postgres refuses none of them before sending (text
 * always, values always an array); a closed client fails what it is given at once.
 *
 * @internal
 */
import type * as Pg from "pg"

// node-postgres's protocol connection and submittables are untyped in @types/pg
type Protocol = any

/** What the client is given: a query's config or a submittable (a cursor, `AfterBegin`). */
export type Submittable = Pg.QueryConfig | { submit(connection: Protocol): unknown }

/** A query's callback. */
export type Callback = (err: unknown, result: any) => void

/** @internal */
export class ClientQueue {
  /** A query was given to the client and its ReadyForQuery has not arrived. */
  private busy = false
  /** The client is closed or failed: it refuses every query at once, nothing waits. */
  private dead = false
  /** What waits for the client, in order: each either gives it one query (`send`) or settles without one. */
  private readonly waiting: Array<() => void> = []

  constructor(
    private readonly client: Pg.Client,
    protocol: Protocol
  ) {
    // after the client's own listener: the finished query's callback has run, the client is idle
    protocol.on("readyForQuery", () => {
      this.busy = false
      this.drain()
    })
    const lost = () => {
      this.dead = true
      this.busy = false
      this.drain()
    }
    client.on("end", lost)
    client.on("error", lost)
  }

  /** Gives `query` to the client now if it is idle, else once the queries before it have ended. */
  submit(query: Submittable, callback?: Callback): void {
    this.then(() => this.send(query, callback))
  }

  /**
   * Runs `step` when the client is idle and every step before it has run: a step gives the client at most one query
   * (`send`), or settles without (a cursor whose BEGIN failed).
   */
  then(step: () => void): void {
    if (this.busy || this.waiting.length > 0) this.waiting.push(step)
    else step()
  }

  /**
   * Gives `query` to the client, which must be idle (inside a step); a closed client fails it at once, without a
   * ReadyForQuery. A query the client throws on fails through its callback (a submittable: its `handleError`).
   */
  send(query: Submittable, callback?: Callback): void {
    this.busy = !this.dead
    try {
      if (callback === undefined) this.client.query(query as Pg.QueryConfig)
      else this.client.query(query as Pg.QueryConfig, callback)
    } catch (e) {
      this.busy = false
      if (callback !== undefined) callback(e, undefined)
      else (query as { handleError?: (e: unknown) => void }).handleError?.(e)
    }
  }

  /** The client is being closed (`destroy`): what waits is given to it, and fails. */
  close(): void {
    this.dead = true
    this.busy = false
    this.drain()
  }

  private drain(): void {
    while (!this.busy && this.waiting.length > 0) this.waiting.shift()!()
  }
}
