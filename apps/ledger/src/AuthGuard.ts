/**
 * A budget of failed authentications per peer (its IPv4 address or IPv6 /64 network), shared by both transports: a few failures are free,
 * then each further one doubles the time that peer must wait before it may try again (up to a ceiling). While it
 * waits, its attempts are refused without looking at the token, so guessing costs time; other peers are never
 * affected, and a success clears the peer's record. The table of peers is bounded (the least recently failed are
 * forgotten first).
 */
import * as Context from "effect/Context"
import * as Layer from "effect/Layer"

export interface Options {
  /** Failures a peer may have before it must wait (the next attempt after the last free one waits). */
  readonly freeFailures: number
  /** The first wait; each further failure doubles it… */
  readonly baseDelayMs: number
  /** …up to this. A peer that has not failed for twice this long starts afresh. */
  readonly maxDelayMs: number
  /** How many peers are remembered. */
  readonly maxPeers: number
}

export const defaults: Options = { freeFailures: 5, baseDelayMs: 1_000, maxDelayMs: 60_000, maxPeers: 10_000 }

interface Peer {
  failures: number
  lastFailure: number
  until: number
}

export class AuthGuard extends Context.Tag("ledger/AuthGuard")<
  AuthGuard,
  {
    /** How long `peer` must still wait before its token is looked at (0: it may try now). */
    readonly waitFor: (peer: string) => number
    /** Records a failed attempt of `peer`. */
    readonly failed: (peer: string) => void
    /** Records a success of `peer`: its failures are forgotten. */
    readonly succeeded: (peer: string) => void
  }
>() {}

/** The first four groups of an IPv6 address (its /64 network), written in full; undefined if it is not one. */
const network64 = (address: string): string | undefined => {
  const [head = "", tail, ...more] = address.split("%")[0]!.split("::")
  if (more.length > 0) return undefined
  const left = head === "" ? [] : head.split(":")
  const right = tail === undefined || tail === "" ? [] : tail.split(":")
  const missing = 8 - left.length - right.length
  if (missing < 0 || (tail === undefined && missing !== 0)) return undefined
  const groups = [...left, ...Array<string>(missing).fill("0"), ...right]
  return (
    groups
      .slice(0, 4)
      .map((g) => g.toLowerCase().replace(/^0+(?=.)/, ""))
      .join(":") + "::/64"
  )
}

/**
 * The key of a peer: an IPv4 address (also when mapped into IPv6), or the /64 network of an IPv6 address — one host
 * usually holds a whole /64, so counting its addresses one by one would let it rotate through them.
 */
export const peerOf = (address: string | undefined): string => {
  if (address === undefined) return "unknown"
  if (address.startsWith("::ffff:") && address.includes(".")) return address.slice(7)
  if (!address.includes(":")) return address
  return network64(address) ?? address
}

export const make = (options: Options = defaults, now: () => number = Date.now): AuthGuard["Type"] => {
  const peers = new Map<string, Peer>()
  const current = (key: string, t: number) => {
    const p = peers.get(key)
    if (p !== undefined && t - p.lastFailure > 2 * options.maxDelayMs) {
      peers.delete(key)
      return undefined
    }
    return p
  }
  return {
    waitFor: (peer) => {
      if (peers.size === 0) return 0
      const t = now()
      const p = current(peerOf(peer), t)
      return p === undefined || p.until <= t ? 0 : p.until - t
    },
    failed: (peer) => {
      const key = peerOf(peer)
      const t = now()
      const p = current(key, t) ?? { failures: 0, lastFailure: t, until: 0 }
      p.failures++
      p.lastFailure = t
      const over = p.failures - options.freeFailures
      if (over >= 0) p.until = t + Math.min(options.maxDelayMs, options.baseDelayMs * 2 ** Math.min(over, 30))
      // most recently failed last: the first entries are the ones to forget
      peers.delete(key)
      peers.set(key, p)
      if (peers.size > options.maxPeers) peers.delete(peers.keys().next().value!)
    },
    succeeded: (peer) => {
      if (peers.size > 0) peers.delete(peerOf(peer))
    }
  }
}

export const layer = (options: Options = defaults) => Layer.sync(AuthGuard, () => make(options))
