import { mysqlWorkload, type Workload } from "../workload.js"
import { pgWorkload } from "../workloadPg.js"
import { drizzle } from "./drizzle.js"
import { drizzlePg } from "./drizzlePg.js"
import { effectSql } from "./effectSql.js"
import { effectSqlPg } from "./effectSqlPg.js"
import type { Impl } from "./Impl.js"
import { kysely } from "./kysely.js"
import { kyselyPg } from "./kyselyPg.js"
import { mysql2 } from "./mysql2.js"
import { mysql2Effect } from "./mysql2Effect.js"
import { pg } from "./pg.js"
import { pgEffect } from "./pgEffect.js"
import { sessionfxLayer } from "./sessionfxLayer.js"
import { sessionfxTransact } from "./sessionfxTransact.js"

export type { EffectImpl, Impl, PromiseImpl } from "./Impl.js"

export type DatabaseName = "mariadb" | "postgres"

/** The implementations run against one database, the baseline their ratios are to, and the targets. */
export interface Suite {
  readonly database: DatabaseName
  readonly workload: Workload
  /** every implementation, by name, in the order they run */
  readonly implementations: Record<string, () => Impl>
  /** the hand-written client every ratio is to */
  readonly baseline: string
  /** sessionfx-transact at concurrency 64: throughput ≥ this × the baseline's… */
  readonly throughputGoal: number
  /** …and CPU per transfer ≤ this × the baseline's */
  readonly cpuGoal: number
  /** the `@effect/sql` implementation sessionfx-transact is to be `effectSqlGoal` × as fast as, if any */
  readonly effectSql?: { readonly impl: string; readonly goal: number }
}

export const mariadb: Suite = {
  database: "mariadb",
  workload: mysqlWorkload,
  implementations: {
    mysql2,
    "mysql2-effect": mysql2Effect,
    "sessionfx-transact": sessionfxTransact,
    "sessionfx-layer": sessionfxLayer,
    "effect-sql-mysql2": effectSql,
    kysely,
    drizzle
  },
  baseline: "mysql2",
  throughputGoal: 1.0,
  cpuGoal: 1.2,
  effectSql: { impl: "effect-sql-mysql2", goal: 2.5 }
}

/** Issue 22: on PostgreSQL, against hand-written `pg`. */
export const postgres: Suite = {
  database: "postgres",
  workload: pgWorkload,
  implementations: {
    pg: () => pg(),
    "pg-unnamed": () => pg(false),
    "pg-effect": pgEffect,
    "sessionfx-transact": sessionfxTransact,
    "sessionfx-layer": sessionfxLayer,
    "effect-sql-pg": effectSqlPg,
    "kysely-pg": kyselyPg,
    "drizzle-pg": drizzlePg
  },
  baseline: "pg",
  throughputGoal: 1.0,
  cpuGoal: 1.1
}

export const suites: Record<DatabaseName, Suite> = { mariadb, postgres }
