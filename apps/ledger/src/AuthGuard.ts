/**
 * A budget of failed authentications per peer (its IP address), shared by both transports: a few failures are free,
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

/** The key of a peer: its address (an IPv4 address mapped into IPv6 is the IPv4 address). */
export const peerOf = (address: string | undefined): string =>
  address === undefined ? "unknown" : address.startsWith("::ffff:") ? address.slice(7) : address

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
