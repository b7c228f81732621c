/**
 * The COM_STMT_EXECUTE writer for statements with integers (`driver/mysql/packet.ts`) against mysql2's own, byte for
 * byte: random statements of 0–40 values — BIGINTs (signed or unsigned, anywhere in range) mixed with NULLs,
 * strings, doubles, booleans, Buffers and Dates, under two character sets and both JSON modes. No server.
 */
import { describe, expect, it } from "@effect/vitest"
import * as fc from "effect/FastCheck"
import { bothPackets, install } from "../../src/internal/driver/mysql/packet.js"
import { bigintParameter } from "../../src/internal/driver/mysql/values.js"

const MIN = -(2n ** 63n)
const MAX = 2n ** 63n - 1n
const UMAX = 2n ** 64n - 1n

const integer = fc.oneof(
  fc.bigInt({ min: MIN, max: MAX }).map((v) => bigintParameter(v, false)),
  fc.bigInt({ min: -(2n ** 53n) + 1n, max: 2n ** 53n - 1n }).map((v) => bigintParameter(v, false)),
  fc.constantFrom(0n, 1n, -1n, MIN, MAX, 2n ** 31n, -(2n ** 31n)).map((v) => bigintParameter(v, false)),
  fc.bigInt({ min: MAX + 1n, max: UMAX }).map((v) => bigintParameter(v, true))
)
const other = fc.oneof(
  fc.constant(null),
  fc.string(),
  fc.fullUnicodeString(),
  fc.double({ noNaN: true, noDefaultInfinity: true }),
  fc.boolean(),
  fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)),
  fc.date({ noInvalidDate: true, min: new Date("1000-01-01"), max: new Date("9999-12-31") }),
  fc.string({ minLength: 251, maxLength: 70_000 }).filter((s) => s.length > 250)
)
const statement = fc
  .tuple(integer, fc.array(fc.oneof(integer, other), { maxLength: 39 }), fc.nat())
  .map(([first, rest, at]) => {
    const params: Array<unknown> = [...rest]
    params.splice(at % (rest.length + 1), 0, first)
    return params
  })

describe("the COM_STMT_EXECUTE writer for statements with integers", () => {
  it("is installed: both writers agree on the probes", () => {
    expect(install(bigintParameter)).toBe(true)
  })

  it("writes the bytes mysql2 writes, for any statement with an integer", () => {
    fc.assert(
      fc.property(statement, fc.constantFrom(45, 33, 8), fc.boolean(), (params, charsetNumber, jsonAsString) => {
        const both = bothPackets(params, { charsetNumber, jsonAsString })
        expect(both).toBeDefined()
        expect(both!.fast.equals(both!.mysql2)).toBe(true)
      }),
      { numRuns: 3000 }
    )
  })

  it("leaves to mysql2 a statement without integers, one that carries query attributes (MySQL 8), and look-alikes", () => {
    expect(bothPackets([])).toBeUndefined()
    expect(bothPackets(["x", 1.5, null, true])).toBeUndefined()
    expect(bothPackets([bigintParameter(5n, false)], { clientFlags: 0x08000000 })).toBeUndefined()
    // an object that only looks like mysql2's parameter is mysql2's to encode (it checks instanceof)
    expect(bothPackets([{ type: 0x08, value: 5n, unsigned: false }])).toBeUndefined()
  })
})
