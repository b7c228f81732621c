/**
 * A connection of a pool and what the pool is told to do with its connections.
 *
 * @internal
 */
import type { Connector, RawConnection, Reply, Settings } from "./driver/types.js"

export type { Settings } from "./driver/types.js"

/** @internal */
export type DestroyReason =
  | "broken"
  | "closedByServer"
  | "validation"
  | "resetFailed"
  | "maxLifetime"
  | "idleTimeout"
  | "interrupted"
  | "shutdown"
  | "stateUnknown"

/** Why a connection came back needing a reset (`sessionfx_pool_dirty_returns_total{reason}`). @internal */
export type DirtyReason = "transaction" | "state"

/** @internal */
export interface PoolConfig {
  readonly size: number
  readonly minIdle: number
  readonly acquireTimeoutMs: number
  readonly idleTimeoutMs: number
  readonly maxLifetimeMs: number
  readonly lifetimeJitter: number
  readonly validateAfterIdleMs: number
  readonly queueLimit: number
  /** Opens a connection to the server. */
  readonly connect: Connector
  readonly describe: string
  readonly onCreated: () => void
  readonly onDestroyed: (reason: DestroyReason) => void
  readonly onTimeout: () => void
  readonly onWait: (millis: number) => void
  /** Runs on every new connection and after every reset, before it is lent: session tracking, baseline settings. */
  readonly prepare: (pc: PooledConn, cb: (err: unknown) => void) => void
  /** A connection came back with a transaction open or its session state changed. */
  readonly onDirtyReturn: (reason: DirtyReason) => void
  /** A connection was closed by the server or the network (not by the pool). */
  readonly onLost?: ((err: unknown) => void) | undefined
  /** Bound on a reset or a validation ping; past it the connection is destroyed. */
  readonly controlTimeoutMs: number
}

/** @internal */
export class PooledConn {
  readonly createdAt = Date.now()
  lastUsedAt = Date.now()
  retireAt: number
  broken = false
  /**
   * Session state may differ from a fresh connection (the server flagged a change, a statement the server does not
   * flag, or an unknown outcome): reset before the next borrower.
   */
  dirty = false
  /** The server's word, from the status flags of the last OK or EOF packet: a transaction is open. */
  inTrans = false
  /** The per-unit settings on this connection (see `Settings`); set by `PoolConfig.prepare`. */
  settings: Settings = { lockWait: 0, statementTime: 0, isolation: "", autocommit: true }
  /**
   * The server's word on the session's autocommit, from the status flags of the last reply (`undefined`: not said
   * since the connection was opened or reset). A unit skips START TRANSACTION only when this says off.
   */
  autocommit: boolean | undefined = undefined
  /**
   * KILL QUERY statements sent for this connection and not answered yet. While any is in flight nothing else is
   * sent on it (a late KILL would stop the next statement) and it is not given back to the pool.
   */
  kills = 0
  /** Commands and a release waiting for `kills` to reach 0. */
  afterKills: Array<() => void> | undefined = undefined
  inUse = false
  closed = false
  /** Settles the command in flight, if any (see `EngineImpl.startCommand`). */
  pending: ((err: unknown, reply: Reply | undefined) => void) | undefined = undefined
  /**
   * The server (an Engine of a topology) this connection belongs to: what is done to the connection (commands,
   * KILL, release) is done by that server. Set when the connection is prepared.
   */
  owner: unknown = undefined
  /** The GTID the server reported with the last commit on this connection (`last_gtid` tracking), if any. */
  lastGtid: string | undefined = undefined
  readonly threadId: number
  constructor(
    readonly conn: RawConnection,
    lifetimeMs: number,
    jitter: number
  ) {
    this.threadId = conn.threadId
    this.retireAt = lifetimeMs > 0 ? this.createdAt + lifetimeMs * (1 - Math.random() * jitter) : Infinity
  }
}

/** @internal */
export const describeCause = (cause: unknown): string => {
  if (cause && typeof cause === "object") {
    const c = cause as { code?: unknown; errno?: unknown; message?: unknown; sqlMessage?: unknown }
    const text = String(c.sqlMessage ?? c.message ?? "")
    const code = typeof c.code === "string" ? c.code : undefined
    if (code && text && !text.includes(code)) return `${code}: ${text}`
    return text || code || String(cause)
  }
  return String(cause)
}
