import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import * as SessionError from "../SessionError.js"
import type { EngineImplOptions } from "./engine.js"

/** The longest delay a Node.js timer honours (2^31 - 1 ms, about 24.8 days); a longer one fires at once. */
const MAX_TIMER_MS = 2_147_483_647
const MAX_POOL_SIZE = 10_000
const ISOLATIONS = ["READ UNCOMMITTED", "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"] as const

const show = (u: unknown): string => {
  if (typeof u === "string") return JSON.stringify(u)
  if (typeof u === "number" || typeof u === "bigint" || typeof u === "boolean" || u == null) return String(u)
  if (Duration.isDuration(u)) return Duration.format(u)
  try {
    return JSON.stringify(u) ?? String(u)
  } catch {
    return String(u)
  }
}

const hint = (u: unknown): string =>
  typeof u === "number" && Number.isNaN(u)
    ? " (NaN is what Number() gives for an unset or non-numeric variable: read it with Config.integer, or give a default)"
    : ""

const fail = (ast: Schema.Schema.Any["ast"], actual: unknown, accepted: string) =>
  ParseResult.fail(new ParseResult.Type(ast, actual, `expected ${accepted}, got ${show(actual)}${hint(actual)}`))

/** An integer in [min, max]. */
const Int = (min: number, max: number, accepted = `an integer from ${min} to ${max}`) =>
  Schema.transformOrFail(Schema.Unknown, Schema.Number, {
    strict: true,
    decode: (u, _, ast) =>
      typeof u === "number" && Number.isInteger(u) && u >= min && u <= max
        ? ParseResult.succeed(u)
        : fail(ast, u, accepted),
    encode: ParseResult.succeed
  })

/**
 * A `Duration.DurationInput` decoded to milliseconds, in [min, max]; `Duration.infinity` (and `Infinity`) only when
 * `infinite` is allowed. Negative and `NaN` numbers are refused here: `Duration.decode` would turn them into zero.
 */
const Millis = (options: { readonly min: number; readonly max: number; readonly infinite: boolean }) => {
  const accepted =
    `a duration (e.g. "5 seconds", 5000 for milliseconds, Duration.seconds(5)) ` +
    (options.min === 0 ? "of zero or more" : `of at least ${options.min} ms`) +
    (options.infinite ? ", or Duration.infinity" : ` and at most ${options.max} ms (about 24 days)`)
  return Schema.transformOrFail(Schema.Unknown, Schema.Number, {
    strict: true,
    decode: (u, _, ast) => {
      if (typeof u === "number" && (Number.isNaN(u) || u < 0)) return fail(ast, u, accepted)
      const ms = Option.map(Duration.decodeUnknown(u), Duration.toMillis)
      if (Option.isNone(ms) || Number.isNaN(ms.value)) return fail(ast, u, accepted)
      const value = ms.value
      if (value === Infinity) return options.infinite ? ParseResult.succeed(value) : fail(ast, u, accepted)
      return value >= options.min && value <= options.max ? ParseResult.succeed(value) : fail(ast, u, accepted)
    },
    encode: ParseResult.succeed
  })
}

const opt = <S extends Schema.Schema.Any>(schema: S) => Schema.optional(schema)

const positive = Millis({ min: 1, max: MAX_TIMER_MS, infinite: false })

const PoolOptions = Schema.Struct({
  size: opt(Int(1, MAX_POOL_SIZE)),
  minIdle: opt(Int(0, MAX_POOL_SIZE)),
  acquireTimeout: opt(positive),
  idleTimeout: opt(Millis({ min: 1, max: Number.MAX_SAFE_INTEGER, infinite: true })),
  maxLifetime: opt(Millis({ min: 1, max: Number.MAX_SAFE_INTEGER, infinite: true })),
  validateAfterIdle: opt(Millis({ min: 0, max: Number.MAX_SAFE_INTEGER, infinite: true })),
  queueLimit: opt(Int(0, Number.MAX_SAFE_INTEGER, "an integer of zero (no limit) or more"))
})

const EngineOptions = Schema.Struct({
  port: opt(Int(1, 65_535)),
  pool: opt(PoolOptions),
  connectTimeout: opt(positive),
  shutdownTimeout: opt(Millis({ min: 0, max: MAX_TIMER_MS, infinite: false })),
  killGrace: opt(Millis({ min: 0, max: MAX_TIMER_MS, infinite: false })),
  commitTimeout: opt(positive),
  longUnitThreshold: opt(Millis({ min: 1, max: Number.MAX_SAFE_INTEGER, infinite: true })),
  isolation: opt(
    Schema.Literal(...ISOLATIONS).annotations({
      message: (issue) => ({
        message: `expected one of ${ISOLATIONS.join(", ")}, got ${show(issue.actual)}`,
        override: true
      })
    })
  ),
  lockWaitTimeout: opt(Millis({ min: 1, max: Number.MAX_SAFE_INTEGER, infinite: true })),
  statementTimeout: opt(Millis({ min: 1, max: Number.MAX_SAFE_INTEGER, infinite: true })),
  maxReplicaLag: opt(positive),
  readYourWritesTimeout: opt(Millis({ min: 0, max: MAX_TIMER_MS, infinite: false })),
  healthCheckInterval: opt(Millis({ min: 50, max: MAX_TIMER_MS, infinite: false })),
  loadBalancing: opt(
    Schema.Literal("spread", "failover").annotations({
      message: (issue) => ({ message: `expected "spread" or "failover", got ${show(issue.actual)}`, override: true })
    })
  )
})

/** The Engine's numeric and enumerated options, checked and in milliseconds. @internal */
export interface Checked {
  readonly port: number | undefined
  /**
   * `idleTimeoutMs` 0: idle connections are never closed; `maxLifetimeMs` 0: never retired for age;
   * `validateAfterIdleMs` -1: never validated, 0: validated on every borrow; `queueLimit` 0: unbounded.
   */
  readonly pool: EngineImplOptions["pool"]
  readonly connectTimeoutMs: number
  readonly shutdownTimeoutMs: number
  readonly killGraceMs: number
  readonly lockWaitTimeoutSeconds: number | undefined
  readonly statementTimeoutMs: number | undefined
  readonly maxReplicaLagMs: number
  readonly readYourWritesTimeoutMs: number
  readonly healthCheckIntervalMs: number
  readonly loadBalancing: "spread" | "failover"
}

const decode = Schema.decodeUnknownEither(EngineOptions, { errors: "first", onExcessProperty: "ignore" })

/**
 * Checks the Engine's options when the layer is built: a value out of range is an `InvalidOption` naming the option
 * and the accepted range, never a silently changed value, a defect or a pool that waits forever. @internal
 */
export const check = (options: unknown): Effect.Effect<Checked, SessionError.InvalidOption> =>
  Effect.suspend(() => {
    const decoded = decode(options)
    if (Either.isLeft(decoded)) {
      const [issue] = ParseResult.ArrayFormatter.formatErrorSync(decoded.left)
      const option = issue ? issue.path.join(".") : "options"
      return Effect.fail(
        new SessionError.InvalidOption({
          option,
          message: `Engine option ${option}: ${issue?.message ?? "invalid"}`
        })
      )
    }
    const o = decoded.right
    const size = o.pool?.size ?? 10
    const minIdle = o.pool?.minIdle ?? size
    if (minIdle > size) {
      return Effect.fail(
        new SessionError.InvalidOption({
          option: "pool.minIdle",
          message: `Engine option pool.minIdle: expected an integer from 0 to pool.size (${size}), got ${minIdle}`
        })
      )
    }
    const never = (ms: number | undefined, fallback: number, whenInfinite: number) =>
      ms === undefined ? fallback : ms === Infinity ? whenInfinite : ms
    return Effect.succeed<Checked>({
      port: o.port,
      pool: {
        size,
        minIdle,
        acquireTimeoutMs: o.pool?.acquireTimeout ?? 10_000,
        idleTimeoutMs: never(o.pool?.idleTimeout, 600_000, 0),
        maxLifetimeMs: never(o.pool?.maxLifetime, 1_800_000, 0),
        validateAfterIdleMs: never(o.pool?.validateAfterIdle, 30_000, -1),
        queueLimit: o.pool?.queueLimit ?? 0
      },
      connectTimeoutMs: o.connectTimeout ?? 10_000,
      shutdownTimeoutMs: o.shutdownTimeout ?? 30_000,
      killGraceMs: o.killGrace ?? 2_000,
      lockWaitTimeoutSeconds: o.lockWaitTimeout === undefined ? undefined : o.lockWaitTimeout / 1000,
      statementTimeoutMs: o.statementTimeout,
      maxReplicaLagMs: o.maxReplicaLag ?? 5_000,
      readYourWritesTimeoutMs: o.readYourWritesTimeout ?? 1_000,
      healthCheckIntervalMs: o.healthCheckInterval ?? 1_000,
      loadBalancing: o.loadBalancing ?? "spread"
    })
  })

/**
 * Which topologies a server family supports: replicas on MariaDB (GTID replication) and PostgreSQL (streaming
 * replication, WAL positions as causality tokens), multi-primary clusters on MariaDB (Galera) only. `undefined` when
 * the engine's topology is supported, else the `InvalidOption` that refuses it.
 *
 * @internal
 */
export const topologyRefused = (o: {
  readonly flavor: "mariadb" | "mysql" | "postgresql"
  readonly version: string
  readonly urls: ReadonlyArray<unknown>
  readonly replicaUrls: ReadonlyArray<unknown>
  /** The first server, described. */
  readonly server: string
}): SessionError.InvalidOption | undefined => {
  const nodes = o.urls.length > 1
  if (o.flavor === "mariadb" || (!nodes && o.replicaUrls.length === 0)) return undefined
  if (o.flavor === "postgresql" && !nodes) return undefined
  const option = nodes ? "url" : "replicas"
  const why = nodes
    ? "multi-primary clusters are supported on MariaDB (Galera)"
    : "replicas are supported on MariaDB (GTID replication) and PostgreSQL (streaming replication), not MySQL"
  return new SessionError.InvalidOption({
    option,
    message: `Engine option ${option}: ${why}; ${o.server} is ${o.flavor === "postgresql" ? "PostgreSQL" : "MySQL"} ${o.version}. Use one Engine per server for now`
  })
}
