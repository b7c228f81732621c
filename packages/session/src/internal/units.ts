/**
 * Units of work: `transact` (a unit of its own, or a savepoint inside the fiber's unit), with retries and its
 * timeout, and the Layer spelling (`scopedSession`).
 *
 * @internal
 */
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberRef from "effect/FiberRef"
import type * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Request from "effect/Request"
import * as Runtime from "effect/Runtime"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as SessionError from "../SessionError.js"
import type { EngineImpl, Watched } from "./engine.js"
import { finishNow, finishSession } from "./ending.js"
import { Frame } from "./frame.js"
import { closedError, sharedError } from "./unitErrors.js"
import { Held } from "./holding.js"
import type { Restore } from "./lock.js"
import * as keys from "./keys.js"
import * as metrics from "./metrics.js"
import type { PooledConn } from "./pool.js"
import { closeSavepoint, openSavepoint, savepoint, unwrapError, withTimeout } from "./savepoints.js"
import { SessionState } from "./session.js"
import { unitSites } from "./sites.js"
import { defaultTracer } from "./statement.js"
import { mergeTokens, type Route, WRITE } from "./tokens.js"
import { type Checked, checkOptions, invalid, refuseNested, rootWant, type UnitOptions } from "./unitOptions.js"

/** The frame of `engine` in the fiber's context, open or ended. */
const frameIn = (engine: EngineImpl, fiber: Fiber.RuntimeFiber<unknown, unknown>): Frame | undefined => {
  const f = engine.current(fiber)
  // a fiber started from inside a unit without it joins no unit, but may open its own
  return f instanceof Frame && !f.spawned ? f : undefined
}

/**
 * The frame a nested unit joins as a savepoint: the fiber's, unless the unit asks for a unit of its own
 * (`propagation: "new"`, which SessionTest contains).
 */
const frameToJoin = (
  engine: EngineImpl,
  fiber: Fiber.RuntimeFiber<unknown, unknown>,
  options: UnitOptions
): Frame | undefined => {
  const frame = frameIn(engine, fiber)
  return frame !== undefined && (options.propagation !== "new" || frame.state.options.containAll === true)
    ? frame
    : undefined
}

/**
 * Why a nested unit cannot join `frame`, if it cannot: a fiber never joins a unit that is not its own, never starts a
 * fresh one because its unit has ended, and never asks what the open transaction cannot give.
 */
const refuseJoin = (frame: Frame, options: UnitOptions): SessionError.SessionError | undefined =>
  frame.detached
    ? sharedError()
    : frame.closed || !frame.state.open
      ? closedError()
      : refuseNested(frame.state, options)

/** @internal */
export const defaultRetry: Schedule.Schedule<unknown, SessionError.SessionError> = Schedule.exponential(
  "10 millis",
  2
).pipe(
  Schedule.either(Schedule.spaced("1 second")),
  Schedule.jittered,
  Schedule.intersect(Schedule.recurs(5)),
  Schedule.asVoid
)

/**
 * Requests (`Effect.request`, `SqlResolver`) made inside a unit run inside it: a batch never gathers requests of
 * two units, and never runs outside the unit's transaction.
 */
const containRequests = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.flatMap(Effect.step(effect), (step) =>
    step._op === "Blocked"
      ? Effect.zipRight(Effect.runRequestBlock(step.effect_instruction_i0), containRequests(step.effect_instruction_i1))
      : step
  )

/** Frames of sessionfx and Effect themselves: the long-unit warning shows the user's code. */
const OWN_FRAME = /[\\/](?:session[\\/](?:src|dist)|effect[\\/](?:src|dist)|node:internal)[\\/]|\(node:/

/**
 * Where a unit is opened, for the long-unit warning: the caller's stack when `Session.transact` / `Session.layer`
 * is called (the unit's effect runs later, from Effect's run loop), formatted only if it is ever needed.
 *
 * @internal
 */
export const captureSite = (label: string, caller: (...args: Array<never>) => unknown): (() => string) => {
  if (!unitSites.capture) {
    return () =>
      `${label} (set the Engine option longUnitThreshold to also record where units are opened; give the unit a name to tell it apart)`
  }
  const site: { stack?: string } = {}
  // a short stack from the caller of Session.transact / Session.layer: a capture costs microseconds per unit
  const limit = Error.stackTraceLimit
  Error.stackTraceLimit = 4
  Error.captureStackTrace(site, caller)
  Error.stackTraceLimit = limit
  return () => {
    const frames = (site.stack ?? "").split("\n").slice(1)
    const own = frames.filter((line) => !OWN_FRAME.test(line))
    return `${label} opened at:\n${(own.length > 0 ? own : frames).join("\n")}`
  }
}

const watch = (state: SessionState, fiber: Fiber.RuntimeFiber<unknown, unknown>, site: () => string): void => {
  const engine = state.engine
  if (!engine.longUnits.watching) return
  const w: Watched = {
    startedAt: state.startedAt,
    warned: false,
    describe: site,
    log: (message) => {
      const runtime = Runtime.make({
        context: fiber.currentContext,
        fiberRefs: fiber.getFiberRefs(),
        runtimeFlags: Runtime.defaultRuntimeFlags
      })
      Runtime.runFork(runtime)(Effect.logWarning(message))
    }
  }
  state.watched = w
  engine.longUnits.add(w)
}

const newSession = (engine: EngineImpl, pc: PooledConn, options: UnitOptions, checked: Checked): SessionState =>
  new SessionState(engine, pc, options, rootWant(engine, options, checked))

/** Where a root unit may run: decided by the engine's topology (read-only units may go to a replica). */
const routeOf = (engine: EngineImpl, options: UnitOptions, fiber: Fiber.RuntimeFiber<unknown, unknown>): Route => {
  if (engine.topology === undefined) return WRITE
  // a replica that cannot run the unit's isolation (a PostgreSQL standby and SERIALIZABLE): the primary runs it
  const readOnly =
    (options.readOnly === true || options.consistentSnapshot === true) &&
    (options.isolation !== "SERIALIZABLE" || engine.options.driver.topology.serializableOnReplica)
  return {
    readOnly,
    consistency: options.consistency ?? "read-your-writes",
    // replicas: only read-only units can run anywhere but the primary; nodes: every unit may land on a node that
    // has not applied the fiber's commits yet
    token:
      readOnly || engine.topology.multiPrimary
        ? mergeTokens(fiber.getFiberRef(engine.tokenRef), options.after)
        : undefined
  }
}

/** What one attempt of a root unit needs. */
interface Attempt {
  /** The fiber that runs the unit (every attempt runs on it). */
  readonly fiber: Fiber.RuntimeFiber<unknown, unknown>
  readonly engine: EngineImpl
  readonly options: UnitOptions
  readonly checked: Checked
  readonly site: () => string
  readonly route: Route
}

/** The connection an attempt runs on, and where. */
interface Borrowed {
  readonly fiber: Fiber.RuntimeFiber<unknown, unknown>
  readonly pc: PooledConn
  readonly restore: Restore
}

/**
 * One attempt of a root unit: borrow (at once when a connection is idle, else through the FIFO wait), run the body
 * interruptibly with the unit in the fiber's context, end the unit with the body's exit. Everything but the body and
 * the wait runs uninterruptibly.
 */
const runOnce = <A, E, R>(
  attempt: Attempt,
  effect: Effect.Effect<A, E, R>
): Effect.Effect<A, E | SessionError.SessionError, R> =>
  // the mask's function runs when the attempt does, on the unit's fiber
  Effect.uninterruptibleMask((restore) => {
    const { engine, fiber, route } = attempt
    const idle = engine.borrowNow()
    if (idle !== undefined) return runUnit(attempt, effect, { fiber, pc: idle, restore })
    return engine.borrowThen(restore, route, (pc) => runUnit(attempt, effect, { fiber, pc, restore }))
  })

const runUnit = <A, E, R>(
  { checked, engine, options, site }: Attempt,
  effect: Effect.Effect<A, E, R>,
  { fiber, pc, restore }: Borrowed
): Effect.Effect<A, E | SessionError.SessionError, R> => {
  const state = newSession(engine, pc, options, checked)
  state.owner = fiber
  watch(state, fiber, site)
  let body: Effect.Effect<A, E | SessionError.SessionError, R> = effect
  if (options.key !== undefined) body = Effect.zipRight(state.recordKey(options.key), body) as typeof body
  if (checked.timeoutMs !== undefined) {
    // `timeout` runs the body on a child fiber (a race with the clock): that fiber is the unit's owner, so its
    // statements keep the fast path (an interrupted owner's statement is stopped by `finishNow`'s reclaim)
    const inner = body
    body = withTimeout(
      Effect.withFiberRuntime<A, E | SessionError.SessionError, R>((child) => {
        state.owner = child
        return inner
      }),
      checked.timeoutMs
    )
  }
  body = containRequests(body)
  if (fiber.getFiberRef(FiberRef.currentRequestCacheEnabled)) {
    // reads cached inside the unit live and die with it
    const inner = body
    body = Effect.flatMap(Request.makeCache({ capacity: 65_536, timeToLive: "60 seconds" }), (cache) =>
      Effect.withRequestCache(inner, cache)
    )
  }
  // what `Effect.locally(currentContext)` does, without its acquire/use/release: we are uninterruptible here,
  // and both exits below put the outer context back before anything else runs
  const f = fiber as unknown as { setFiberRef: <X>(ref: FiberRef.FiberRef<X>, value: X) => void }
  const outer = fiber.getFiberRef(FiberRef.currentContext)
  const outerRef = fiber.getFiberRef(engine.currentRef)
  const root = fiber.id().id
  state.holder = root
  f.setFiberRef(FiberRef.currentContext, state.contextFrom(outer, state.root))
  f.setFiberRef(engine.currentRef, new Held(state.root, root))
  return Effect.matchCauseEffect(restore(body), {
    onFailure: (cause) => {
      f.setFiberRef(FiberRef.currentContext, outer)
      f.setFiberRef(engine.currentRef, outerRef)
      return finishNow(state, Exit.failCause(cause), true)
    },
    onSuccess: (a) => {
      f.setFiberRef(FiberRef.currentContext, outer)
      f.setFiberRef(engine.currentRef, outerRef)
      return finishNow(state, Exit.succeed(a), true)
    }
  })
}

const outcomeOf = (exit: Exit.Exit<unknown, unknown>): string =>
  Exit.isSuccess(exit)
    ? "commit"
    : Exit.isInterrupted(exit)
      ? "interrupted"
      : Cause.isFailure(exit.cause)
        ? `rollback:${(Option.getOrUndefined(Cause.failureOption(exit.cause)) as { _tag?: unknown } | undefined)?._tag ?? "failure"}`
        : "rollback:defect"

/** The unit of work as a combinator: nested (savepoint) inside an open session, else a session of its own. @internal */
export const transact = <A, E, R>(
  engine: EngineImpl,
  effect: Effect.Effect<A, E, R>,
  options: UnitOptions,
  site: () => string = () => `${options.name ?? "a unit of work"} (sql.withTransaction)`
): Effect.Effect<A, E | SessionError.SessionError, R> =>
  Effect.withFiberRuntime((fiber) => transactOn(fiber, { engine, options, site }, effect))

/** A unit of work to open or join. @internal */
export interface UnitRequest {
  readonly engine: EngineImpl
  readonly options: UnitOptions
  readonly site: () => string
}

/** `transact`, from inside the step that runs on `fiber` (the caller asked for it already). @internal */
export const transactOn = <A, E, R>(
  fiber: Fiber.RuntimeFiber<unknown, unknown>,
  { engine, options, site }: UnitRequest,
  effect: Effect.Effect<A, E, R>
): Effect.Effect<A, E | SessionError.SessionError, R> => {
  const checked = checkOptions(options, engine.options.driver.dialect)
  if (checked instanceof SessionError.InvalidOption) return Effect.fail(checked)
  const frame = frameToJoin(engine, fiber, options)
  if (frame !== undefined) {
    const refused = refuseJoin(frame, options)
    if (refused !== undefined) return Effect.fail(refused)
    return Effect.mapError(savepoint(frame, effect, fiber, { options, checked }), unwrapError)
  }
  // a span only when a tracer that exports it is installed (a unit's `name` alone does not open one: measured
  // about 8 % of a transfer's CPU in the ledger, for a span nothing reads)
  const traced = fiber.currentTracer !== defaultTracer
  const attempt: Attempt = { fiber, engine, options, checked, site, route: routeOf(engine, options, fiber) }
  const counted = { attempts: 1 }
  const unit = withRetries(attempt, effect, counted)
  return traced ? withUnitSpan(attempt, unit, counted) : unit
}

/**
 * A root unit, retried in a fresh transaction while it fails retryable (when its options ask for it). The retry
 * machinery is built only after a first retryable failure: the common path pays nothing for it.
 */
const withRetries = <A, E, R>(
  attempt: Attempt,
  effect: Effect.Effect<A, E, R>,
  counted: { attempts: number }
): Effect.Effect<A, E | SessionError.SessionError, R> => {
  const { engine, options } = attempt
  const first = runOnce(attempt, effect)
  if (options.retry === undefined || options.retry === false) return first
  return Effect.catchIf(first, retriesUnit, () =>
    Effect.retry(
      Effect.suspend(() => {
        // every attempt after the first is a retry
        counted.attempts++
        metrics.retries.unsafeUpdate(1, engine.unitLabels)
        return runOnce(attempt, effect)
      }),
      {
        schedule: (options.retry === true ? defaultRetry : options.retry) as Schedule.Schedule<unknown, unknown>,
        while: retriesUnit
      }
    )
  )
}

/**
 * What a unit's retry runs it again for: a retryable failure, except a request the pool shed at once (`queueLimit`):
 * running it again would only put it back into the queue that is already full.
 */
const retriesUnit = (e: unknown): boolean =>
  SessionError.isRetryable(e) && !(e instanceof SessionError.PoolTimeout && e.shed === true)

/** The unit's span (`sql.session`): its isolation, read-only, attempts and outcome. */
const withUnitSpan = <A, E, R>(
  { engine, options }: Attempt,
  unit: Effect.Effect<A, E, R>,
  counted: { readonly attempts: number }
): Effect.Effect<A, E, R> =>
  Effect.useSpan(
    options.name ?? "sql.session",
    {
      kind: "client",
      captureStackTrace: false,
      attributes: {
        "db.isolation": options.isolation ?? engine.options.defaults.isolation ?? "server default",
        "db.read_only": options.readOnly === true || options.consistentSnapshot === true
      }
    },
    (span) =>
      Effect.onExit(Effect.withParentSpan(unit, span), (exit) =>
        Effect.sync(() => {
          span.attribute("sql.session.attempts", counted.attempts)
          span.attribute("sql.session.outcome", outcomeOf(exit))
        })
      )
  )

/**
 * Whether the unit keyed `key` is committed (see `keys.outcome`). Asked inside that very unit, the answer cannot be
 * known before the unit ends (and the locking read would wait on the unit's own lock): refused at once.
 *
 * @internal
 */
export const outcome = (
  engine: EngineImpl,
  key: string
): Effect.Effect<"committed" | "absent", SessionError.SessionError> =>
  Effect.withFiberRuntime((fiber) => {
    const frame = frameIn(engine, fiber)
    if (frame !== undefined && frame.state.open && frame.state.options.key === key) {
      return Effect.fail(
        invalid(
          "key",
          `Session.outcome(${JSON.stringify(key)}) was asked inside the unit with that key: its outcome is known only once it has ended. Ask after the unit (or from another fiber)`
        )
      )
    }
    return keys.outcome(engine, key)
  })

/** What the Layer spelling's unit is opened with. */
interface LayerUnit {
  readonly engine: EngineImpl
  readonly options: UnitOptions
  readonly checked: Checked
  readonly site: () => string
}

/** Why the Layer spelling cannot honour `options`, if it cannot. */
const refuseInLayer = (options: UnitOptions): SessionError.InvalidOption | undefined => {
  if (options.retry !== undefined && options.retry !== false) {
    return invalid("retry", "the Layer spelling cannot re-run the program it provides; use Session.transact")
  }
  if (options.timeout !== undefined) {
    return invalid(
      "timeout",
      "the Layer spelling cannot bound the program it provides; use Session.transact(program, { timeout })"
    )
  }
  return undefined
}

/** The Layer spelling inside an open unit: a savepoint, released or rolled back with the scope. */
const scopedSavepoint = (
  { checked, engine, options }: LayerUnit,
  frame: Frame,
  fiber: Fiber.RuntimeFiber<unknown, unknown>
): Effect.Effect<Context.Context<never>, SessionError.SessionError, Scope.Scope> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(openSavepoint(frame, restore, fiber, { options, checked }), (sp) =>
      Effect.as(
        Effect.zipRight(
          // a failed RELEASE must reach the caller as a typed error: the scope's close carries it as a failure
          Effect.addFinalizer((exit) => closeSavepoint(sp, exit) as Effect.Effect<void>),
          Effect.locallyScoped(engine.currentRef, engine.held(fiber, sp.child) as Held<Frame> | undefined)
        ),
        sp.parent.state.layerContext(sp.child)
      )
    )
  )

/**
 * The Layer spelling's own unit, committed or rolled back with the scope. The fiber the layer is provided to claims
 * it on first use (see `holding.ts`), not the fiber that builds it.
 */
const scopedRoot = (
  { checked, engine, options, site }: LayerUnit,
  fiber: Fiber.RuntimeFiber<unknown, unknown>
): Effect.Effect<Context.Context<never>, SessionError.SessionError, Scope.Scope> =>
  Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(engine.borrow(restore, routeOf(engine, options, fiber)), (pc) => {
      const state = newSession(engine, pc, options, checked)
      state.owner = fiber
      state.building = true
      watch(state, fiber, site)
      const opened = Effect.as(
        Effect.zipRight(
          // a failed COMMIT must reach the caller as a typed error: the scope's close carries it as a failure
          Effect.addFinalizer((exit) => finishSession(state, exit, false) as Effect.Effect<void>),
          Effect.locallyScoped(engine.currentRef, new Held(state.root, undefined) as Held<Frame> | undefined)
        ),
        state.layerContext(state.root)
      )
      return Effect.ensuring(
        options.key === undefined ? opened : Effect.zipLeft(opened, state.provide(state.recordKey(options.key))),
        Effect.sync(() => {
          state.building = false
        })
      )
    })
  )

/** The Layer spelling: acquire on build, commit or roll back with the scope's exit. @internal */
export const scopedSession = (
  engine: EngineImpl,
  options: UnitOptions,
  site: () => string
): Effect.Effect<Context.Context<never>, SessionError.SessionError, Scope.Scope> =>
  Effect.withFiberRuntime((fiber) => {
    const checked = checkOptions(options, engine.options.driver.dialect)
    if (checked instanceof SessionError.InvalidOption) return Effect.fail(checked)
    const refusedHere = refuseInLayer(options)
    if (refusedHere !== undefined) return Effect.fail(refusedHere)
    const unit: LayerUnit = { engine, options, checked, site }
    const frame = frameToJoin(engine, fiber, options)
    if (frame !== undefined) {
      const refused = refuseJoin(frame, options)
      if (refused !== undefined) return Effect.fail(refused)
      return scopedSavepoint(unit, frame, fiber)
    }
    return scopedRoot(unit, fiber)
  })
