/**
 * Units of work open longer than `longUnitThreshold`: each is logged (with where it was opened) and counted once —
 * by the engine's once-a-second check while it runs, or when it ends.
 *
 * @internal
 */
import type { Watched } from "./engineTypes.js"

/** @internal */
export class LongUnits {
  private readonly open = new Set<Watched>()

  constructor(
    /** 0 or less: units are not watched. */
    readonly thresholdMs: number,
    private readonly report: (u: Watched, openMs: number, ended: boolean) => void
  ) {}

  get watching(): boolean {
    return this.thresholdMs > 0
  }

  add(u: Watched): void {
    this.open.add(u)
  }

  /** `u` has ended: reported now if it ran too long and no check saw it yet. */
  end(u: Watched): void {
    this.open.delete(u)
    this.check(u, Date.now(), true)
  }

  /** The periodic check of every unit still open. */
  checkAll(): void {
    if (!this.watching || this.open.size === 0) return
    const now = Date.now()
    for (const u of this.open) this.check(u, now, false)
  }

  private check(u: Watched, now: number, ended: boolean): void {
    if (u.warned || !this.watching || now - u.startedAt < this.thresholdMs) return
    u.warned = true
    this.report(u, now - u.startedAt, ended)
  }
}
