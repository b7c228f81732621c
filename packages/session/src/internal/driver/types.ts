/**
 * The driver seam: what the core needs from a database, and nothing more. A driver is a folder beside this file
 * (`mysql/`); nothing above the seam imports a client library, knows an error number or writes a statement of the
 * dialect's own (transactions, savepoints, settings, KILL, causality waits).
 *
 * Everything here is callback-shaped on purpose: the pool and the unit hand connections over synchronously (no
 * late arrival can barge in), and a statement costs one `Effect.async` in the core and the driver's own calls.
 *
 * @internal
 */

/**
 * TLS options of a connection: node:tls's, plus mysql2's `verifyIdentity` (each driver takes what it knows).
 *
 * @internal
 */
export type SslOptions = import("node:tls").ConnectionOptions & { readonly verifyIdentity?: boolean | undefined }

/** Where a driver connects, as every driver takes it (from the Engine's url and options). @internal */
export interface DriverTarget {
  readonly host: string
  readonly port: number
  readonly database: string | undefined
  readonly user: string | undefined
  readonly password: string | undefined
  /** A unix socket (MySQL: its path; PostgreSQL: its directory). */
  readonly socketPath: string | undefined
  /** The url's `sslmode` / `ssl` parameter, or the `ssl` option's TLS options. */
  readonly ssl: string | SslOptions | undefined
  readonly connectTimeoutMs: number
}

/** How a command ended on the server: the rows, and what the server said about the session. @internal */
export interface Reply {
  /** What the caller gets: rows, or the result header of a statement without a result set. */
  readonly rows: unknown
  /** The server's word on its transaction at the end of the command (`undefined`: it did not say). */
  readonly inTransaction: boolean | undefined
  /**
   * The server's word on the session's autocommit at the end of the command (`undefined`: it did not say, or the
   * database has no such mode). Off, the server opens a transaction at the first statement that needs one.
   */
  readonly autocommit: boolean | undefined
  /** The server flagged a change of session state (other than the commit's causality token). */
  readonly stateChanged: boolean
  /** The causality token of the commit this command made, if the server reported one. */
  readonly token: string | undefined
}

/** @internal */
export type ReplyCallback = (err: unknown, reply: Reply | undefined) => void

/** Where a streamed statement delivers its rows; exactly one `end`. @internal */
export interface RowSink {
  readonly row: (row: unknown) => void
  readonly end: ReplyCallback
}

/** A streamed statement in flight. @internal */
export interface RowStream {
  /** Rows nobody will read are dropped without being parsed; the end of the result still arrives. */
  readonly skipRest: () => void
}

/**
 * One connection to the server, as the core uses it. A command may be given while another is in flight (the engine's
 * control connection: the KILLs of several interruptions at once): the connection runs them one after the other, in
 * order, each started once the one before has been answered in full. @internal
 */
export interface RawConnection {
  /** The server's id of this connection (what a KILL names). */
  readonly threadId: number
  /** A text-protocol statement without values. */
  readonly query: (sql: string, rowsAsArray: boolean, cb: ReplyCallback) => void
  /** A prepared statement (binary protocol) with its values, already through `Driver.bind`. */
  readonly execute: (sql: string, values: ReadonlyArray<unknown>, rowsAsArray: boolean, cb: ReplyCallback) => void
  /** A prepared statement whose rows are delivered one by one, with backpressure (`pause`/`resume`). */
  readonly stream: (sql: string, values: ReadonlyArray<unknown>, sink: RowSink) => RowStream
  readonly ping: (cb: (err: unknown) => void) => void
  /** Back to a fresh session: rolls back, clears session state and prepared statements. */
  readonly reset: (cb: (err: unknown) => void) => void
  /** Stops reading from the server (it blocks on its writes). */
  readonly pause: () => void
  readonly resume: () => void
  /** Bytes read from the server so far (0 where the transport does not say). */
  readonly bytesRead: () => number
  /** Closes at once; the server ends whatever the connection had open. */
  readonly destroy: () => void
  /** Called once if the server or the network closes the connection. Returns the detach. */
  readonly onGone: (listener: (err: unknown) => void) => () => void
}

/** Opens connections to one server. @internal */
export type Connector = (cb: (err: unknown, conn?: RawConnection) => void) => void

/** What kind of failure a driver error is (the `SessionError` it becomes). @internal */
export type ErrorKind =
  | "Deadlock"
  | "LockWaitTimeout"
  | "DuplicateKey"
  | "ForeignKeyViolation"
  | "CheckViolation"
  | "NotNullViolation"
  | "ReadOnlyTransaction"
  | "StatementTimeout"
  | "SerializationFailure"
  | "NodeNotReady"
  | "ConnectionError"
  | "ConnectionLost"

/** A driver error, described. @internal */
export interface ErrorDescription {
  readonly kind: ErrorKind | undefined
  readonly errno: number | undefined
  readonly code: string | undefined
  readonly text: string
  readonly key: string | undefined
  readonly constraint: string | undefined
  readonly column: string | undefined
}

/** What a failure to open a connection means for the user. @internal */
export interface ConnectAdvice {
  readonly retryable: boolean
  readonly advice: string | undefined
}

/** The per-unit settings as they stand on a connection, in the server's units. @internal */
export interface Settings {
  readonly lockWait: number
  readonly statementTime: number
  readonly isolation: string
  /**
   * The session's autocommit as sessionfx set it. Units want it off where the database has the mode (their first
   * statement then opens the transaction: no START TRANSACTION travels); statements outside units want it on.
   */
  readonly autocommit: boolean
}

/** The dialect's statements: the core never writes one of its own. @internal */
export interface Dialect {
  /**
   * The database has a session mode with autocommit off in which the server opens a transaction at the first
   * statement that needs one and reports it in each reply (`Reply.autocommit`, `Reply.inTransaction`): units then
   * send no START TRANSACTION of their own.
   */
  readonly autocommitOff: boolean
  /**
   * A statement that fails inside a transaction fails the whole transaction (PostgreSQL: only ROLLBACK or ROLLBACK
   * TO can end it), where MySQL undoes the statement alone. A statement that a unit may stop while the unit goes on
   * (one of another fiber's) then runs under a savepoint of its own (`frame.ts`).
   */
  readonly failedStatementFailsTransaction: boolean
  readonly begin: (o: {
    readonly readOnly: boolean
    readonly consistentSnapshot: boolean
    readonly deferrable: boolean
  }) => string
  /** The database has PostgreSQL's `DEFERRABLE` mode (a serializable read-only transaction that cannot fail). */
  readonly deferrable: boolean
  readonly commit: string
  readonly rollback: string
  readonly savepoint: (name: string) => string
  readonly releaseSavepoint: (name: string) => string
  readonly rollbackToSavepoint: (name: string) => string
  /** A statement that does nothing: its reply carries the server's transaction status. */
  readonly statusProbe: string
  /** The SET that takes a connection from `current` to `wanted`, or `undefined` when they are equal. */
  readonly settingsSql: (current: Settings, wanted: Settings) => string | undefined
  readonly killQuery: (threadId: number) => string
  readonly killConnection: (threadId: number) => string
}

/**
 * One server, as its driver knows it: how to connect, its dialect, the server's values of the per-unit settings,
 * and what every new (or reset) connection is asked before it is lent.
 *
 * @internal
 */
export interface ServerDriver {
  readonly connect: Connector
  readonly dialect: Dialect
  /** The server's values of the per-unit settings (known once a connection has been prepared). */
  readonly baseline: Settings | undefined
  /** Learns the server family from its version string. */
  setVersion(version: string): void
  /** The server's version string, asked on `conn`. */
  readVersion(conn: RawConnection, cb: (err: unknown, version?: string) => void): void
  /** Prepares a new or reset connection; calls back with its settings. */
  prepare(conn: RawConnection, cb: (err: unknown, settings?: Settings) => void): void
  /** Whether a user statement leaves the connection needing a reset even if the server says nothing. */
  marksDirty(sql: string): boolean
  /** A statement time limit (ms; 0 = none) in the server's unit. */
  statementTime(ms: number): number
  /** The values of one statement as the driver sends them, or why one cannot be sent exactly (a `BindError`). */
  bind(values: ReadonlyArray<unknown>): ReadonlyArray<unknown> | Error
  /** The statements of a text that holds several, each with how many of its values are its own; else `undefined`. */
  split(sql: string): ReadonlyArray<{ readonly sql: string; readonly count: number }> | undefined
  readonly errors: DriverErrors
  /** Health checks and causality waits of a topology. */
  readonly topology: TopologyTexts
  /** The statements of the keyed-unit table named `table`. */
  keysSql(table: string): KeysTexts
}

/** What a driver error means, where the core must know. @internal */
export interface DriverErrors {
  /** The connection can no longer be used. */
  isFatal(cause: unknown): boolean
  /** A cluster node out of its primary component refused the statement before running it. */
  isNodeNotReady(cause: unknown): boolean
  /**
   * A COMMIT that failed this way may have committed all the same (a cluster node that lost its primary component
   * while it replicated the transaction): its outcome is unknown, never a failure to retry.
   */
  isCommitAmbiguous(cause: unknown): boolean
  /** A KILL for a connection that is already gone. */
  isNoSuchThread(cause: unknown): boolean
  /** A wait for a causality token ran out of time. */
  isWaitTimeout(cause: unknown): boolean
  /** The table does not exist. */
  isNoSuchTable(cause: unknown): boolean
}

/**
 * A topology's statements (see `topology.ts`). Positions (`pos`, `applied`) are texts that `tokens.ts` parses: GTID
 * lists, or PostgreSQL's `system_identifier:LSN`.
 *
 * @internal
 */
export interface TopologyTexts {
  /** The primary's health check: `pos`, its position. */
  readonly primary: string
  /**
   * A replica's health check: `pos` (what it has applied), `running` (`ON` while it replicates) and, optionally,
   * `reason` (why not, in the driver's words).
   */
  readonly replica: string
  readonly node: string
  /** Where a server stands, without waiting: `applied`. */
  readonly position: string
  /**
   * Waits on a replica for a token (bound as a value) up to a number of seconds (a value); 0 = applied. `undefined`:
   * the database has no such wait (PostgreSQL), and the core polls `position` instead, bounded the same way.
   */
  readonly replicaWait: string | undefined
  /** Waits for a token on a cluster node; 1 = applied. */
  readonly nodeWait: string
  readonly causalReads: string
  /**
   * A replica runs `SERIALIZABLE` transactions (MariaDB). PostgreSQL's standbys refuse them (0A000, "cannot use
   * serializable mode in a hot standby"): such units are routed to the primary.
   */
  readonly serializableOnReplica: boolean
}

/** The keyed-unit table's statements. @internal */
export interface KeysTexts {
  readonly create: string
  readonly insert: string
  /**
   * Answers a row when the key is committed; waits for a transaction that has inserted the key and not yet ended (so
   * the answer is that unit's outcome, never an answer given before it has one).
   */
  readonly find: string
  /**
   * Set when `find` waits by writing (PostgreSQL: a read does not wait for an uncommitted row, an insert into its
   * unique index does): `find` then runs after `begin` and before `end` (a ROLLBACK), on one connection.
   */
  readonly findWithin?: {
    readonly begin: string
    /** Bounds the probe's lock wait for this transaction, in milliseconds (`$1`, a string; 0 = none). */
    readonly bound: string
    readonly end: string
  }
  /** Deletes up to `PRUNE_BATCH` keys committed more than `?` seconds ago. */
  readonly prune: string
}
