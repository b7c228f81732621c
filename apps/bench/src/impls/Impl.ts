/**
 * The common shape of an implementation of the transfer unit. Promise-based libraries return a Promise; Effect-based
 * ones return an Effect that is run, with many others, inside one Effect on the runtime built by `setup`.
 */
import type * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import * as ManagedRuntime from "effect/ManagedRuntime"

export const POOL_SIZE = 16

export interface PromiseImpl {
  readonly kind: "promise"
  readonly name: string
  readonly setup: (url: string) => Promise<void>
  /** One unit of work; resolves with the number of retries it needed. */
  readonly transfer: (a: number, b: number, amount: number) => Promise<number>
  readonly close: () => Promise<void>
}

export interface EffectImpl<R> {
  readonly kind: "effect"
  readonly name: string
  readonly setup: (url: string) => Promise<void>
  /** One unit of work; succeeds with the number of retries it needed. */
  readonly transfer: (a: number, b: number, amount: number) => Effect.Effect<number, unknown, R>
  /** Runs a driver effect with the services built by `setup`. */
  readonly runPromise: <A, E>(effect: Effect.Effect<A, E, R>) => Promise<A>
  readonly close: () => Promise<void>
}

export type Impl = PromiseImpl | EffectImpl<any>

/** An Effect implementation whose services come from a Layer built once per benchmark. */
export const effectImpl = <R>(
  name: string,
  layer: (url: string) => Layer.Layer<R, unknown>,
  transfer: (a: number, b: number, amount: number) => Effect.Effect<number, unknown, R>
): EffectImpl<R> => {
  let runtime: ManagedRuntime.ManagedRuntime<R, unknown> | undefined
  const get = () => {
    if (runtime === undefined) throw new Error(`${name}: setup was not called`)
    return runtime
  }
  return {
    kind: "effect",
    name,
    setup: async (url) => {
      runtime = ManagedRuntime.make(layer(url))
      await runtime.runtime()
    },
    transfer,
    runPromise: (effect) => get().runPromise(effect),
    close: async () => {
      if (runtime !== undefined) await runtime.dispose()
      runtime = undefined
    }
  }
}

/** Retries `unit` on deadlocks and lock wait timeouts, up to `maxRetries` times; resolves with the retries used. */
export const retryPromise = async (
  unit: () => Promise<void>,
  isRetryable: (e: unknown) => boolean,
  maxRetries = 20
): Promise<number> => {
  for (let retries = 0; ; retries++) {
    try {
      await unit()
      return retries
    } catch (e) {
      if (retries >= maxRetries || !isRetryable(e)) throw e
    }
  }
}
