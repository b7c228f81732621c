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
