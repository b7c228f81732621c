/**
 * Which fibers may use a unit of work (issue 24 #1). A unit belongs to one program: the fiber that opened it (or,
 * for the Layer spelling, the fiber the layer was provided to) and the fibers that program forks. A fiber that got
 * the unit any other way — each `runtime.runPromise(…)` of a `ManagedRuntime` whose layer opened it, the first one
 * included (it receives the builder's fiber refs wholesale), or the second user of a memoized layer — would share
 * one connection and one transaction with independent requests: it sees the unit detached, and every use fails
 * with `SharedSession` before anything is sent.
 *
 * The fiber's current frame travels in a FiberRef as a `Held`: the frame, and the root fiber of the program that
 * holds the unit. A fork from a fiber of the program carries the root on; a fork by anything else (a callback, a
 * fiber of another program) detaches. A frame set in the fiber itself (the Layer spelling, through Effect's layer
 * build: set, joined or patched into the fiber) names no root: the fiber whose own entry it is claims the unit on
 * first use; the unit then answers only to that root.
 *
 * @internal
 */
import type * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import type * as FiberRefs from "effect/FiberRefs"

/** What a unit keeps of its holder. @internal */
export interface Holding {
  /** The id of the root fiber of the program the unit belongs to, once known. */
  holder: number | undefined
  /** Set while the Layer spelling builds the unit: statements then (its key) claim nothing. */
  building: boolean
}

/** A frame as the holding rule sees it. @internal */
export interface HeldFrame {
  readonly unit: Holding
}

/**
 * How a fiber holds its frame: as a fiber of the unit's program; detached (it got the frame without belonging to the
 * program: every use is refused); or spawned — started from inside the unit without it, from a snapshot of fiber refs
 * taken outside any unit (a time-window data loader's batch, `Runtime.runFork` of a runtime captured outside): it may
 * open units of its own, its statements outside them are refused. @internal
 */
export type Access = "attached" | "detached" | "spawned"

/** A fiber's current frame, the root of the program it belongs to, and how it holds it (see the module). @internal */
export class Held<F extends HeldFrame = HeldFrame> {
  constructor(
    readonly frame: F,
    readonly root: number | undefined,
    readonly access: Access = "attached"
  ) {}
}

/**
 * "No unit", which the Engine puts in the fibers it is provided to: a snapshot of fiber refs taken outside any unit
 * carries it, so a fiber started from such a snapshot by a fiber of a unit can be told apart (see `makeHeldRef`).
 *
 * @internal
 */
export const NO_UNIT: Held<never> = new Held<never>(undefined as never, undefined)

/** Effect's current-fiber slot: the fiber running now, if any. */
const runningFiber = (): Fiber.RuntimeFiber<unknown, unknown> | undefined =>
  (globalThis as { "effect/FiberCurrent"?: Fiber.RuntimeFiber<unknown, unknown> })["effect/FiberCurrent"]

/** The fiber's refs without `getFiberRefs`' copy (it first writes the runtime flags into a new map). */
const refsOf = (fiber: Fiber.RuntimeFiber<unknown, unknown>): FiberRefs.FiberRefs =>
  (fiber as unknown as { _fiberRefs?: FiberRefs.FiberRefs })._fiberRefs ?? fiber.getFiberRefs()

/**
 * The root of the program `fiber` belongs to, for its `held` frame: the root it carries, else the fiber itself when
 * the value is its own entry (it set it, or Effect joined or patched it into this fiber), else none.
 *
 * @internal
 */
export const rootOf = (
  fiber: Fiber.RuntimeFiber<unknown, unknown>,
  ref: FiberRef.FiberRef<Held | undefined>,
  held: Held
): number | undefined => {
  if (held.access !== "attached") return undefined
  if (held.root !== undefined) return held.root
  const id = fiber.id().id
  const top = refsOf(fiber).locals.get(ref)?.[0]
  return top !== undefined && top[1] === held && (top[0] as { readonly id?: number }).id === id ? id : undefined
}

/**
 * Whether `fiber`, holding `held`, may use the unit now: it belongs to the unit's program (claiming the unit for
 * its root on first use, unless the unit is being built).
 *
 * @internal
 */
export const mayUse = (
  fiber: Fiber.RuntimeFiber<unknown, unknown>,
  ref: FiberRef.FiberRef<Held | undefined>,
  held: Held
): boolean => {
  const root = rootOf(fiber, ref, held)
  if (root === undefined) return false
  const unit = held.frame.unit
  if (unit.holder === undefined) {
    if (!unit.building) unit.holder = root
    return true
  }
  return unit.holder === root
}

/** The FiberRef of a fiber's current frame: forks carry the holder on, or detach (see the module). @internal */
export const makeHeldRef = <F extends HeldFrame>(): FiberRef.FiberRef<Held<F> | undefined> => {
  const ref: FiberRef.FiberRef<Held<F> | undefined> = FiberRef.unsafeMake<Held<F> | undefined>(undefined, {
    fork: (held) => {
      if (held === undefined || held.access !== "attached") return held
      // the fiber running the fork: the parent, or a fiber of the same program forking on its behalf (the workers
      // of `Effect.all` are forked from the caller's refs by a coordinating fiber)
      const running = runningFiber()
      const mine = running === undefined ? undefined : running.getFiberRef(ref)
      if (held === NO_UNIT) {
        // refs without a unit forked while a fiber of a unit runs: started from inside the unit, without it
        return mine === undefined || mine === NO_UNIT || mine.access !== "attached"
          ? held
          : new Held(mine.frame, undefined, "spawned")
      }
      if (
        running === undefined ||
        mine === undefined ||
        mine === NO_UNIT ||
        mine.access !== "attached" ||
        mine.frame.unit !== held.frame.unit
      ) {
        return new Held(held.frame, undefined, "detached")
      }
      if (held.root !== undefined) return held
      const root = rootOf(running, ref as FiberRef.FiberRef<Held | undefined>, mine)
      return new Held(held.frame, root, root === undefined ? "detached" : "attached")
    }
  })
  return ref
}
