/**
 * A small seeded pseudo-random generator, so that the inputs of a test, a demo or a benchmark run can be repeated
 * from their seed.
 *
 * @since 0.1.0
 */

/**
 * mulberry32: returns a function that yields numbers in [0, 1).
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (seed: number): (() => number) => {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
