import { drizzle } from "./drizzle.js"
import { effectSql } from "./effectSql.js"
import type { Impl } from "./Impl.js"
import { kysely } from "./kysely.js"
import { mysql2 } from "./mysql2.js"
import { mysql2Effect } from "./mysql2Effect.js"
import { sessionfxLayer } from "./sessionfxLayer.js"
import { sessionfxTransact } from "./sessionfxTransact.js"

export type { EffectImpl, Impl, PromiseImpl } from "./Impl.js"

/** Every implementation, by name, in the order they run. */
export const implementations: Record<string, () => Impl> = {
  mysql2,
  "mysql2-effect": mysql2Effect,
  "sessionfx-transact": sessionfxTransact,
  "sessionfx-layer": sessionfxLayer,
  "effect-sql-mysql2": effectSql,
  kysely,
  drizzle
}

export const BASELINE = "mysql2"
