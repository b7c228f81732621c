/**
 * Causality tokens and routes: what a unit asks of a topology, and the one parser of tokens (MariaDB GTID lists:
 * `domain-server-sequence`, comma-separated; PostgreSQL WAL positions: `system_identifier:LSN`, e.g.
 * `7715455669126898549:0/1501250`; MySQL GTID sets are accepted as opaque text).
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

/**
 * A MariaDB GTID list (`domain-server-sequence`, comma-separated), a list of PostgreSQL WAL positions
 * (`system_identifier:LSN`, comma-separated: one per cluster) or a MySQL GTID set (`uuid:1-5,…`).
 *
 * @internal
 */
export const TOKEN_PATTERN =
  /^(?:\d{1,10}-\d{1,10}-\d{1,20}(?:,\d{1,10}-\d{1,10}-\d{1,20})*|\d{1,20}:[0-9A-Fa-f]{1,8}\/[0-9A-Fa-f]{1,8}(?:,\d{1,20}:[0-9A-Fa-f]{1,8}\/[0-9A-Fa-f]{1,8})*|[0-9a-fA-F-]{36}:\d+(?:-\d+)?(?::\d+(?:-\d+)?)*(?:,[0-9a-fA-F-]{36}:\d+(?:-\d+)?(?::\d+(?:-\d+)?)*)*)$/

/**
 * A position: per replication domain, the highest sequence number. A MariaDB domain is its number; a PostgreSQL
 * cluster (a primary and its physical replicas share its `system_identifier`) is `pg:` and that identifier, its
 * sequence the LSN as a 64-bit number.
 *
 * @internal
 */
export type Positions = Map<string, bigint>

const GTID = /^(\d+)-\d+-(\d+)$/
const LSN = /^(\d+):([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/

/** One element of a token: its domain, its sequence, its text as the server wrote it. */
const entryOf = (text: string): { readonly domain: string; readonly seq: bigint } | undefined => {
  const g = GTID.exec(text)
  if (g !== null) return { domain: g[1]!, seq: BigInt(g[2]!) }
  const l = LSN.exec(text)
  if (l !== null) return { domain: `pg:${l[1]!}`, seq: (BigInt(`0x${l[2]!}`) << 32n) + BigInt(`0x${l[3]!}`) }
  return undefined
}

/**
 * The position a token (or a server's position) names; `undefined` when it is neither a MariaDB GTID list nor a list
 * of PostgreSQL WAL positions.
 *
 * @internal
 */
export const positions = (text: string): Positions | undefined => {
  const out: Positions = new Map()
  if (text.trim() === "") return out
  for (const part of text.split(",")) {
    const e = entryOf(part.trim())
    if (e === undefined) return undefined
    const cur = out.get(e.domain)
    if (cur === undefined || e.seq > cur) out.set(e.domain, e.seq)
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

/**
 * Merges two causality tokens: per replication domain (or PostgreSQL cluster), the later GTID or WAL position (its
 * text kept as the server wrote it).
 *
 * @internal
 */
export const mergeTokens = (a: string | undefined, b: string | undefined): string | undefined => {
  if (a === undefined || a === b) return b
  if (b === undefined) return a
  const byDomain = new Map<string, { readonly text: string; readonly seq: bigint }>()
  for (const raw of `${a},${b}`.split(",")) {
    const text = raw.trim()
    const e = entryOf(text)
    if (e === undefined) return b // not a list of GTIDs or WAL positions (MySQL GTID sets): the later token
    const cur = byDomain.get(e.domain)
    if (cur === undefined || e.seq > cur.seq) byDomain.set(e.domain, { text, seq: e.seq })
  }
  return [...byDomain.values()].map((g) => g.text).join(",")
}
