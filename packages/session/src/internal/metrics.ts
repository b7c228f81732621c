import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"

const ms = MetricBoundaries.exponential({ start: 0.5, factor: 2, count: 18 })

/** @internal */
export const poolSize = Metric.gauge("sessionfx_pool_size", { description: "open connections" })
/** @internal */
export const poolInUse = Metric.gauge("sessionfx_pool_in_use", { description: "connections lent out" })
/** @internal */
export const poolIdle = Metric.gauge("sessionfx_pool_idle", { description: "idle connections" })
/** @internal */
export const poolWaiting = Metric.gauge("sessionfx_pool_waiting", { description: "fibers waiting for a connection" })
/** @internal */
export const acquireWait = Metric.histogram(
  "sessionfx_pool_acquire_wait_ms",
  ms,
  "time from asking the pool for a connection to getting one, in milliseconds"
)
/** @internal */
export const created = Metric.counter("sessionfx_pool_connections_created_total", { incremental: true })
/** @internal */
export const destroyed = Metric.counter("sessionfx_pool_connections_destroyed_total", { incremental: true })
/** @internal */
export const acquireTimeouts = Metric.counter("sessionfx_pool_acquire_timeouts_total", { incremental: true })
/** @internal */
export const commits = Metric.counter("sessionfx_session_commits_total", { incremental: true })
/** @internal */
export const rollbacks = Metric.counter("sessionfx_session_rollbacks_total", { incremental: true })
/** @internal */
export const retries = Metric.counter("sessionfx_session_retries_total", { incremental: true })
/** @internal */
export const sessionDuration = Metric.histogram(
  "sessionfx_session_duration_ms",
  ms,
  "duration of a unit of work from first acquire to commit or rollback, in milliseconds"
)
/** @internal */
export const dirtyReturns = Metric.counter("sessionfx_pool_dirty_returns_total", {
  description: "connections that came back with a transaction open or their session state changed, and were reset",
  incremental: true
})
/** @internal */
export const longUnits = Metric.counter("sessionfx_session_long_units_total", {
  description: "units of work open longer than longUnitThreshold",
  incremental: true
})
/** @internal */
export const implicitCommits = Metric.counter("sessionfx_session_implicit_commits_total", {
  description: "transactions of a unit that the server ended by committing (DDL, a literal COMMIT)",
  incremental: true
})
/** @internal */
export const unknownOutcomes = Metric.counter("sessionfx_session_commit_outcome_unknown_total", {
  description: "COMMITs whose outcome is unknown (connection lost, timed out or interrupted while in flight)",
  incremental: true
})

/** @internal */
export const readFallbacks = Metric.counter("sessionfx_read_fallbacks_total", {
  description: "read-only units sent to the primary instead of a replica, by reason",
  incremental: true
})
/** @internal */
export const causalWait = Metric.histogram(
  "sessionfx_causal_wait_ms",
  MetricBoundaries.exponential({ start: 0.25, factor: 2, count: 16 }),
  "how long read-only units waited for a replica (or node) to apply the fiber's causality token"
)
/** @internal */
export const serverHealthy = Metric.gauge("sessionfx_server_healthy", {
  description: "1 while a server of the topology takes units, 0 while it is taken out"
})
/** @internal */
export const replicaLag = Metric.gauge("sessionfx_replica_lag_ms", {
  description: "how far behind the primary a replica was at its last health check (milliseconds)"
})
