/**
 * A unit's options: the one internal type (`Session.Options` is its public face), checked before anything is sent,
 * and the settings a root or nested unit asks for.
 *
 * @internal
 */
import * as Duration from "effect/Duration"
import type * as Schedule from "effect/Schedule"
import * as SessionError from "../SessionError.js"
import { type EngineImpl, type Isolation, type Want, wantOf } from "./engine.js"
import type { Dialect } from "./driver/types.js"
import * as keys from "./keys.js"
import { type CausalityToken, TOKEN_PATTERN } from "./tokens.js"

/** The options of a unit of work: `Session.Options` is this type. @internal */
export interface SessionOptions {
  /** Isolation level for this transaction (set before it starts). */
  readonly isolation?: Isolation | undefined
  /** `START TRANSACTION READ ONLY`: writes fail with `ReadOnlyTransaction`. */
  readonly readOnly?: boolean | undefined
  /** `START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY`. */
  readonly consistentSnapshot?: boolean | undefined
  /**
   * PostgreSQL's `DEFERRABLE`, for a `SERIALIZABLE` read-only unit: it waits at its start for a snapshot that no
   * serialization failure can hit (long reports under SSI). Refused on MariaDB and MySQL, which have no such mode.
   */
  readonly deferrable?: boolean | undefined
  /** `innodb_lock_wait_timeout` for this session. */
  readonly lockWaitTimeout?: Duration.DurationInput | undefined
  /** Per-statement limit, enforced by the server (MariaDB `max_statement_time`, MySQL `max_execution_time`). */
  readonly statementTimeout?: Duration.DurationInput | undefined
  /** Limit for the whole unit: exceeded → interrupted, rolled back, `TransactionTimeout`. (`transact` only.) */
  readonly timeout?: Duration.DurationInput | undefined
  /** `"nested"` (default): a savepoint inside an open session of the same engine; `"new"`: its own connection. */
  readonly propagation?: "nested" | "new" | undefined
  /** Re-run the whole unit in a fresh transaction on retryable errors: `true` for the default policy, or a Schedule. (`transact` only.) */
  readonly retry?: boolean | Schedule.Schedule<unknown, SessionError.SessionError> | undefined
  /** Span name for the unit. */
  readonly name?: string | undefined
  /** Always roll back, even on success (dry runs, tests). Nested: the savepoint is always rolled back. */
  readonly rollbackOnly?: boolean | undefined
  /**
   * A keyed unit: applied at most once. The key is recorded in sessionfx's key table (`createKeyTable`) inside the
   * unit's transaction; a unit whose key is already committed fails with `AlreadyApplied` and changes nothing, and
   * after a lost COMMIT the key tells whether the unit was applied (`outcome`). At most 255 bytes, compared byte for
   * byte.
   */
  readonly key?: string | undefined
  /**
   * Where a read-only unit (`readOnly`, `consistentSnapshot`) of an engine with replicas reads:
   * `"read-your-writes"` (default) a replica once it has applied the fiber's causality token (and `after`), else
   * the primary after `readYourWritesTimeout`; `"replica"` any healthy replica, no wait (may be stale);
   * `"primary"` the primary. Outermost units only.
   */
  readonly consistency?: "read-your-writes" | "replica" | "primary" | undefined
  /**
   * A causality token the unit must see, e.g. one received from another process (an HTTP header): a read-only
   * unit waits for a replica to have applied it. Outermost units only.
   */
  readonly after?: CausalityToken | undefined
}

/** A unit's options as the core takes them: the public ones, and SessionTest's. @internal */
export interface UnitOptions extends SessionOptions {
  /** `@sessionfx/testing`'s SessionTest: every unit below runs inside this one (nothing can escape it). */
  readonly containAll?: boolean | undefined
}

/** The largest `innodb_lock_wait_timeout` the server accepts (seconds). */
const MAX_LOCK_WAIT = 1_073_741_824
const ISOLATIONS: ReadonlyArray<string> = ["READ UNCOMMITTED", "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"]

/** @internal */
export const invalid = (option: string, message: string) =>
  new SessionError.InvalidOption({ option, message: `${option}: ${message}. Nothing was sent to the server` })

/** A duration option in milliseconds (`Infinity` for `Duration.infinity`), or the reason it is not one. */
const durationMs = (option: string, d: Duration.DurationInput): number | SessionError.InvalidOption => {
  let ms: number
  try {
    ms = Duration.toMillis(Duration.decode(d))
  } catch {
    return invalid(
      option,
      `${JSON.stringify(String(d))} is not a duration (e.g. "5 seconds", 5000, Duration.seconds(5))`
    )
  }
  if (Number.isNaN(ms) || ms <= 0) return invalid(option, `must be a positive duration, got ${String(d)}`)
  return ms
}

/** `deferrable`: PostgreSQL's, and only where it means something (a `SERIALIZABLE` read-only transaction). */
const checkDeferrable = (options: UnitOptions, dialect: Dialect): SessionError.InvalidOption | undefined => {
  if (options.deferrable === undefined || options.deferrable === false) return undefined
  if (options.deferrable !== true)
    return invalid("deferrable", `must be true or false, got ${JSON.stringify(options.deferrable)}`)
  if (!dialect.deferrable) {
    return invalid(
      "deferrable",
      "DEFERRABLE is PostgreSQL's; MariaDB and MySQL have no such transaction mode. Drop it on this engine"
    )
  }
  if (options.isolation !== "SERIALIZABLE" || (options.readOnly !== true && options.consistentSnapshot !== true)) {
    return invalid(
      "deferrable",
      'only a SERIALIZABLE read-only unit can be deferrable (PostgreSQL ignores DEFERRABLE otherwise): add isolation: "SERIALIZABLE" and readOnly: true'
    )
  }
  return undefined
}

/** A unit's options checked and in the server's units, before anything is sent. @internal */
export interface Checked {
  readonly lockWaitSeconds: number | undefined
  readonly statementTimeMs: number | undefined
  readonly timeoutMs: number | undefined
}

/** @internal */
export const checkOptions = (options: UnitOptions, dialect: Dialect): Checked | SessionError.InvalidOption => {
  const deferrable = checkDeferrable(options, dialect)
  if (deferrable !== undefined) return deferrable
  let lockWaitSeconds: number | undefined
  let statementTimeMs: number | undefined
  let timeoutMs: number | undefined
  if (options.lockWaitTimeout !== undefined) {
    const ms = durationMs("lockWaitTimeout", options.lockWaitTimeout)
    if (typeof ms !== "number") return ms
    // the server counts whole seconds, at least 1; Duration.infinity is its maximum
    lockWaitSeconds = Number.isFinite(ms) ? Math.min(MAX_LOCK_WAIT, Math.max(1, Math.ceil(ms / 1000))) : MAX_LOCK_WAIT
  }
  if (options.statementTimeout !== undefined) {
    const ms = durationMs("statementTimeout", options.statementTimeout)
    if (typeof ms !== "number") return ms
    // 0 is the server's "no limit"
    statementTimeMs = Number.isFinite(ms) ? Math.max(1, ms) : 0
  }
  if (options.timeout !== undefined) {
    const ms = durationMs("timeout", options.timeout)
    if (typeof ms !== "number") return ms
    timeoutMs = Number.isFinite(ms) ? ms : undefined
  }
  if (options.isolation !== undefined && !ISOLATIONS.includes(options.isolation)) {
    return invalid("isolation", `must be one of ${ISOLATIONS.join(", ")}, got ${JSON.stringify(options.isolation)}`)
  }
  if (options.propagation !== undefined && options.propagation !== "nested" && options.propagation !== "new") {
    return invalid("propagation", `must be "nested" or "new", got ${JSON.stringify(options.propagation)}`)
  }
  if (options.key !== undefined && (options.readOnly === true || options.consistentSnapshot === true)) {
    return invalid(
      options.consistentSnapshot === true ? "consistentSnapshot" : "readOnly",
      "a keyed unit records its key with an INSERT in its transaction, which a read-only transaction refuses; drop the key, or make the unit read-write"
    )
  }
  if (options.key !== undefined) {
    const bad = keys.checkKey(options.key)
    if (bad !== undefined) return invalid("key", bad)
  }
  if (
    options.consistency !== undefined &&
    options.consistency !== "read-your-writes" &&
    options.consistency !== "replica" &&
    options.consistency !== "primary"
  ) {
    return invalid(
      "consistency",
      `must be "read-your-writes", "replica" or "primary", got ${JSON.stringify(options.consistency)}`
    )
  }
  if (options.after !== undefined && (typeof options.after !== "string" || !TOKEN_PATTERN.test(options.after))) {
    return invalid(
      "after",
      `expected a causality token (a GTID list such as "0-1-42", from Session.causalityToken), got ${JSON.stringify(options.after)}`
    )
  }
  return { lockWaitSeconds, statementTimeMs, timeoutMs }
}

/** The settings a root unit wants: its options, else the engine's defaults. */
/** @internal */
export const rootWant = (engine: EngineImpl, options: UnitOptions, checked: Checked): Want => {
  // a unit without settings of its own wants the engine's defaults: computed once per engine
  if (
    checked.lockWaitSeconds === undefined &&
    checked.statementTimeMs === undefined &&
    options.isolation === undefined
  ) {
    return (defaultWants.get(engine) ??
      defaultWants.set(engine, computeRootWant(engine, options, checked)).get(engine))!
  }
  return computeRootWant(engine, options, checked)
}

const defaultWants = new WeakMap<EngineImpl, Want>()

const computeRootWant = (engine: EngineImpl, options: UnitOptions, checked: Checked): Want => {
  const d = engine.options.defaults
  return wantOf(engine, {
    lockWaitSeconds:
      checked.lockWaitSeconds ??
      (d.lockWaitTimeoutSeconds === undefined
        ? undefined
        : Number.isFinite(d.lockWaitTimeoutSeconds)
          ? Math.min(MAX_LOCK_WAIT, Math.max(1, Math.ceil(d.lockWaitTimeoutSeconds)))
          : MAX_LOCK_WAIT),
    statementTimeMs:
      checked.statementTimeMs ??
      (d.statementTimeoutMs === undefined
        ? undefined
        : Number.isFinite(d.statementTimeoutMs)
          ? d.statementTimeoutMs
          : 0),
    isolation: options.isolation ?? d.isolation,
    unit: true
  })
}

/** A nested unit's settings: its own where it sets them, else its parent's. */
/** @internal */
export const nestedWant = (engine: EngineImpl, parent: Want, checked: Checked): Want => {
  if (checked.lockWaitSeconds === undefined && checked.statementTimeMs === undefined) return parent
  const own = wantOf(engine, {
    lockWaitSeconds: checked.lockWaitSeconds,
    statementTimeMs: checked.statementTimeMs,
    isolation: undefined,
    unit: true
  })
  return {
    lockWait: own.lockWait ?? parent.lockWait,
    statementTime: own.statementTime ?? parent.statementTime,
    isolation: parent.isolation,
    autocommit: parent.autocommit
  }
}

/** What a nested unit needs to know of the unit it runs in. @internal */
export interface Enclosing {
  readonly options: UnitOptions
  readonly readOnly: boolean
  isolationName(): string
}

const retries = (o: UnitOptions): boolean => o.retry !== undefined && o.retry !== false

/**
 * A nested unit's retry is honoured by the outermost unit's: a retryable failure rolls back the whole transaction and
 * the outer unit runs again, this one with it (`retry: true`, or the very schedule the outer unit retries with).
 */
const defersTo = (outer: UnitOptions, nested: UnitOptions): boolean =>
  retries(outer) && (nested.retry === true || nested.retry === outer.retry)

/** What a nested unit cannot honour inside the transaction of `state`. @internal */
export const refuseNested = (state: Enclosing, options: UnitOptions): SessionError.InvalidOption | undefined => {
  const contained = state.options.containAll === true
  const where = contained
    ? "inside SessionTest every unit runs in the test's transaction; test this unit with a session of its own"
    : 'use propagation: "new" for a unit with a connection and transaction of its own'
  if (!contained && retries(options) && !defersTo(state.options, options)) {
    return invalid(
      "retry",
      "a nested unit cannot be retried on its own: a deadlock rolls back the whole transaction. Put retry on the outermost unit (a nested retry: true then defers to it), or " +
        where
    )
  }
  if (!contained && (options.after !== undefined || options.consistency !== undefined)) {
    return invalid(
      options.after !== undefined ? "after" : "consistency",
      `a nested unit runs in its enclosing transaction, on the server that one chose; put it on the outermost unit, or ${where}`
    )
  }
  if (!contained && options.key !== undefined) {
    return invalid("key", `a key belongs to the outermost unit, whose COMMIT it records; put it there, or ${where}`)
  }
  if ((options.readOnly === true || options.consistentSnapshot === true) && !state.readOnly) {
    return invalid(
      options.consistentSnapshot === true ? "consistentSnapshot" : "readOnly",
      `the enclosing transaction is read-write and the server cannot make part of it read-only; ${
        contained
          ? "test a read-only unit with SessionTest.layer({ readOnly: true }) on rows committed first (docs/testing.md)"
          : where
      }`
    )
  }
  if (options.deferrable === true && state.options.deferrable !== true) {
    return invalid("deferrable", `the enclosing transaction has already started without it; ${where}`)
  }
  if (options.consistentSnapshot === true && state.options.consistentSnapshot !== true) {
    return invalid("consistentSnapshot", `the enclosing transaction has already started without one; ${where}`)
  }
  if (options.isolation !== undefined && options.isolation !== state.isolationName()) {
    return invalid(
      "isolation",
      `the enclosing transaction runs at ${state.isolationName()} and the server cannot change it mid-transaction; ${where}`
    )
  }
  return undefined
}

/** No option of a nested unit's own (a plain savepoint). @internal */
export const noChecks: Checked = { lockWaitSeconds: undefined, statementTimeMs: undefined, timeoutMs: undefined }

/** A nested unit's options, as given and as checked. @internal */
export interface Nested {
  readonly options: UnitOptions
  readonly checked: Checked
}

/** A plain savepoint (`Session.savepoint`, `withTransaction` inside a unit). @internal */
export const PLAIN: Nested = { options: {}, checked: noChecks }
