/**
 * Causality tokens and routes: what a unit asks of a topology, and the one parser of tokens (MariaDB GTID lists:
 * `domain-server-sequence`, comma-separated; MySQL GTID sets are accepted as opaque text).
 *
 * @internal
 */

import type * as Brand from "effect/Brand"

/** A causality token (see `Session.CausalityToken`). @internal */
export type CausalityToken = string & Brand.Brand<"@sessionfx/session/CausalityToken">

/** How a read-only unit reads: see `docs/scale-out.md`. @internal */
export type Consistency = "read-your-writes" | "replica" | "primary"

/** What a unit asks of the topology. @internal */
export interface Route {
  readonly readOnly: boolean
  readonly consistency: Consistency
  /** What the unit must see: the fiber's causality token merged with the unit's `after`. */
  readonly token: string | undefined
}

/** A write, or a statement outside any unit: the primary. @internal */
export const WRITE: Route = { readOnly: false, consistency: "primary", token: undefined }

/** A MariaDB GTID list (`domain-server-sequence`, comma-separated) or a MySQL GTID set (`uuid:1-5,…`). @internal */
export const TOKEN_PATTERN =
  /^(?:\d{1,10}-\d{1,10}-\d{1,20}(?:,\d{1,10}-\d{1,10}-\d{1,20})*|[0-9a-fA-F-]{36}:\d+(?:-\d+)?(?::\d+(?:-\d+)?)*(?:,[0-9a-fA-F-]{36}:\d+(?:-\d+)?(?::\d+(?:-\d+)?)*)*)$/

/** A position: per replication domain, the highest sequence number. @internal */
export type Positions = Map<string, bigint>

const GTID = /^(\d+)-\d+-(\d+)$/

/** The position a token (or a server's GTID position) names; `undefined` when it is not a MariaDB GTID list. @internal */
export const positions = (text: string): Positions | undefined => {
  const out: Positions = new Map()
  if (text.trim() === "") return out
  for (const part of text.split(",")) {
    const m = GTID.exec(part.trim())
    if (m === null) return undefined
    const seq = BigInt(m[2]!)
    const cur = out.get(m[1]!)
    if (cur === undefined || seq > cur) out.set(m[1]!, seq)
  }
  return out
}

/** Whether `applied` (a server's position) includes every transaction of `wanted`. @internal */
export const covers = (applied: Positions | undefined, wanted: Positions | undefined): boolean => {
  if (applied === undefined || wanted === undefined) return false
  for (const [domain, seq] of wanted) {
    const have = applied.get(domain)
    if (have === undefined || have < seq) return false
  }
  return true
}

/** The later of two positions, per domain. @internal */
export const mergePositions = (a: Positions | undefined, b: Positions): Positions => {
  const out = new Map(a ?? [])
  for (const [d, s] of b) {
    const cur = out.get(d)
    if (cur === undefined || s > cur) out.set(d, s)
  }
  return out
}

/** Merges two causality tokens: per replication domain, the later GTID (its text kept as the server wrote it). @internal */
export const mergeTokens = (a: string | undefined, b: string | undefined): string | undefined => {
  if (a === undefined || a === b) return b
  if (b === undefined) return a
  const byDomain = new Map<string, { readonly text: string; readonly seq: bigint }>()
  for (const raw of `${a},${b}`.split(",")) {
    const text = raw.trim()
    const m = GTID.exec(text)
    if (m === null) return b // not a MariaDB GTID list (MySQL GTID sets): the later token
    const cur = byDomain.get(m[1]!)
    const seq = BigInt(m[2]!)
    if (cur === undefined || seq > cur.seq) byDomain.set(m[1]!, { text, seq })
  }
  return [...byDomain.values()].map((g) => g.text).join(",")
}
