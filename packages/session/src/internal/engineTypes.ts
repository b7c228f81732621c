/**
 * What an engine of one server is made of and works with: its options, the per-unit settings it applies, the
 * commands it sends, and what a topology and the units ask of it.
 *
 * @internal
 */
import type * as Statement from "@effect/sql/Statement"
import type * as Effect from "effect/Effect"
import type * as SessionError from "../SessionError.js"
import type { ServerDriver } from "./driver/types.js"
import type { Holding } from "./holding.js"
import type { Restore } from "./lock.js"
import type { PooledConn } from "./pool.js"
import type { Route } from "./tokens.js"

/**
 * What a server of a topology is told (see `topology.ts`, which implements it): a lost connection or a silent
 * statement takes it out; its own commits are known to it.
 *
 * @internal
 */
export interface MemberHooks {
  takeOut(reason: string): void
  noteApplied(gtid: string): void
}

/** Where a topology sends a unit (see `topology.ts`). @internal */
export interface Router {
  readonly multiPrimary: boolean
  borrow(restore: Restore, route: Route): Effect.Effect<PooledConn, BorrowError>
}

/** @internal */
export type Isolation = "READ UNCOMMITTED" | "READ COMMITTED" | "REPEATABLE READ" | "SERIALIZABLE"

/** @internal */
export interface SessionDefaults {
  readonly isolation: Isolation | undefined
  readonly lockWaitTimeoutSeconds: number | undefined
  readonly statementTimeoutMs: number | undefined
}

type Transform = (<A extends object>(row: ReadonlyArray<A>) => ReadonlyArray<A>) | undefined

/**
 * A fiber's current frame of this engine (a `Frame`, see `frame.ts`), as the engine stores it: the unit it belongs
 * to, and its detached view — what a fiber sees that holds the frame without having been forked by a fiber of the
 * unit (a `ManagedRuntime`'s request, a memoized layer's other user): every use of it fails with `SharedSession`.
 *
 * @internal
 */
export interface CurrentFrame {
  readonly unit: Holding
  readonly detached: boolean
  detach(): CurrentFrame
  /** The view of a fiber started from inside the unit without it (see `Held.spawned`). */
  spawn(): CurrentFrame
}

/**
 * Why a unit got no connection: the pool's wait, the server, or (a read with a causality token) a token the
 * topology never produced. @internal
 */
export type BorrowError = SessionError.PoolTimeout | SessionError.ConnectionError | SessionError.InvalidOption

/** One command to send. @internal */
export interface CommandSpec {
  readonly method: "query" | "execute"
  readonly sql: string
  /** Already through `bindValues`; travel only through the binary protocol. */
  readonly values?: ReadonlyArray<unknown> | undefined
  readonly rowsAsArray?: boolean | undefined
  /** Past it, the connection is destroyed (an unknown state). */
  readonly deadlineMs?: number | undefined
  /** One of sessionfx's own statements, whose session state changes are accounted for rather than dirty. */
  readonly internal?: boolean | undefined
}

/** What a statement wants of the per-unit settings; `undefined` fields mean the server's value. @internal */
export interface Want {
  readonly lockWait?: number | undefined
  readonly statementTime?: number | undefined
  readonly isolation?: string | undefined
  /** The session's autocommit: off for units, on outside them (`undefined`: as it is). */
  readonly autocommit?: boolean | undefined
}

/** @internal */
export interface EngineImplOptions {
  /** The server's label (metrics, messages, `ServerStatus.name`). */
  readonly name: string
  /** The engine's label when this server is one of a topology's (metrics: `engine` and `server` labels). */
  readonly engineName?: string | undefined
  /** Its place in the topology (default `primary`). */
  readonly role?: "primary" | "replica" | "node" | undefined
  /** The server, as its driver knows it: connections, dialect, settings. */
  readonly driver: ServerDriver
  readonly describe: string
  readonly pool: {
    readonly size: number
    readonly minIdle: number
    readonly acquireTimeoutMs: number
    readonly idleTimeoutMs: number
    readonly maxLifetimeMs: number
    readonly validateAfterIdleMs: number
    readonly queueLimit: number
  }
  readonly killGraceMs: number
  readonly defaults: SessionDefaults
  readonly spanAttributes: ReadonlyArray<readonly [string, unknown]>
  readonly compiler: Statement.Compiler
  readonly transformRows: Transform
  /** Bound on COMMIT when the unit has no `timeout` of its own (default 10 s): past it, `CommitOutcomeUnknown`. */
  readonly commitTimeoutMs?: number | undefined
  /** A unit open longer than this is logged once with where it was opened (default 60 s; 0 = never). */
  readonly longUnitThresholdMs?: number | undefined
  /** Record the SQL text on statement spans (`db.query.text`). */
  readonly queryTextInSpans?: boolean | undefined
}

/** A unit of work the engine watches for running too long (see `longUnits.ts`). @internal */
export interface Watched {
  readonly startedAt: number
  warned: boolean
  readonly describe: () => string
  readonly log: (message: string) => void
}
