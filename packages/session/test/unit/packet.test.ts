/**
 * The all-integer COM_STMT_EXECUTE writer (`driver/mysql/packet.ts`) against mysql2's own, byte for byte: random
 * statements of 0–40 values, every one a BIGINT (signed or unsigned, anywhere in range) or NULL. No server.
 */
import { describe, expect, it } from "@effect/vitest"
import * as fc from "effect/FastCheck"
import { bothPackets, install } from "../../src/internal/driver/mysql/packet.js"
import { bigintParameter } from "../../src/internal/driver/mysql/values.js"

const MIN = -(2n ** 63n)
const MAX = 2n ** 63n - 1n
const UMAX = 2n ** 64n - 1n

const value = fc.oneof(
  fc.constant(null),
  fc.bigInt({ min: MIN, max: MAX }).map((v) => bigintParameter(v, false)),
  fc.bigInt({ min: -(2n ** 53n) + 1n, max: 2n ** 53n - 1n }).map((v) => bigintParameter(v, false)),
  fc.constantFrom(0n, 1n, -1n, MIN, MAX, 2n ** 31n, -(2n ** 31n)).map((v) => bigintParameter(v, false)),
  fc.bigInt({ min: MAX + 1n, max: UMAX }).map((v) => bigintParameter(v, true))
)

describe("the all-integer execute packet", () => {
  it("is installed: both writers agree on the probes", () => {
    expect(install(bigintParameter)).toBe(true)
  })

  it("writes the bytes mysql2 writes, for any statement of integers and NULLs", () => {
    fc.assert(
      fc.property(fc.array(value, { maxLength: 40 }), (params) => {
        const both = bothPackets(params)
        expect(both).toBeDefined()
        expect(both!.fast.equals(both!.mysql2)).toBe(true)
      }),
      { numRuns: 2000 }
    )
  })

  it("leaves every other statement to mysql2: a string, a double, a Date, a Buffer, a boolean, query attributes", () => {
    const int = bigintParameter(5n, false)
    for (const other of ["x", 1.5, new Date(0), Buffer.from([1]), true])
      expect(bothPackets([int, other])).toBeUndefined()
    expect(bothPackets([int], 0x08000000)).toBeUndefined()
  })
})
