import { assert, describe, it } from "@effect/vitest"
import * as Either from "effect/Either"
import * as Protocol from "../src/Protocol.js"

/**
 * The hand-written decoders and encoders of the common operations are a shortcut past the schemas: wherever they
 * answer, they must agree with the schema exactly, and they must never accept what the schema refuses.
 */
describe("ledger protocol fast paths", () => {
  const ids: Array<unknown> = [1, 2, 7, 0, -1, 1.5, Number.MAX_SAFE_INTEGER, 2 ** 53, "1", null, undefined, true, {}]
  const amounts: Array<unknown> = [
    1,
    500,
    0,
    -3,
    2.5,
    Number.MAX_SAFE_INTEGER,
    2 ** 53,
    "1",
    "0",
    "-1",
    "007",
    "1".repeat(30),
    "1".repeat(31),
    "1e3",
    " 1",
    "",
    10 ** 15,
    "1000000000000000000",
    null,
    undefined
  ]
  const keys: Array<unknown> = [undefined, "k", "", "x".repeat(128), "x".repeat(129), "é", 5, null]

  const agree = (name: string, body: Record<string, unknown>) => {
    const op = Protocol.operations[name]!
    const fast = op.fastDecode?.(body)
    const slow = op.decode(body)
    if (fast === undefined) return
    assert.isTrue(
      Either.isRight(slow),
      `${name} ${JSON.stringify(body)}: the fast path accepted what the schema refuses`
    )
    assert.deepStrictEqual(fast, (slow as Either.Right<unknown, unknown>).right, `${name} ${JSON.stringify(body)}`)
  }
  const withKey = (body: Record<string, unknown>, key: unknown) =>
    key === undefined ? body : { ...body, idempotencyKey: key }

  it("decoding: transfer, deposit, withdraw, balance", () => {
    let fastAnswered = 0
    for (const from of ids) {
      for (const to of ids) {
        for (const amount of amounts) {
          for (const key of keys) {
            const body = withKey({ op: "transfer", from, to, amount, extra: 1 }, key)
            agree("transfer", body)
            if (Protocol.operations.transfer!.fastDecode?.(body) !== undefined) fastAnswered++
          }
        }
      }
    }
    assert.isAbove(fastAnswered, 100)
    for (const account of ids) {
      agree("balance", { op: "balance", account })
      for (const amount of amounts) {
        for (const key of keys) {
          agree("deposit", withKey({ op: "deposit", account, amount }, key))
          agree("withdraw", withKey({ op: "withdraw", account, amount }, key))
        }
      }
    }
  })

  it("encoding: transfers and accounts", () => {
    const transfers = [
      { id: 1, kind: "transfer", from: 1, to: 2, amount: 5n, idempotencyKey: null },
      { id: 9, kind: "deposit", from: null, to: 2, amount: 2n ** 60n, idempotencyKey: "k" },
      { id: 9, kind: "withdrawal", from: 3, to: null, amount: 1n, idempotencyKey: null }
    ]
    for (const t of transfers) {
      const op = Protocol.operations.transfer!
      const fast = op.fastEncode?.(t)
      assert.isDefined(fast)
      assert.deepStrictEqual(fast, Either.getOrThrow(op.encode(t)))
    }
    // what the schema would refuse, the fast path leaves to the schema
    for (const t of [
      { id: 0, kind: "transfer", from: 1, to: 2, amount: 5n, idempotencyKey: null },
      { id: 1, kind: "deposit", from: 1, to: 2, amount: 5n, idempotencyKey: null },
      { id: 1, kind: "transfer", from: 1, to: 2, amount: 0n, idempotencyKey: null }
    ]) {
      assert.isUndefined(Protocol.operations.transfer!.fastEncode?.(t))
    }
    const balance = Protocol.operations.balance!
    for (const a of [
      { id: 1, name: "a", balance: 0n },
      { id: 2, name: "b", balance: 2n ** 63n - 1n }
    ]) {
      assert.deepStrictEqual(balance.fastEncode?.(a), Either.getOrThrow(balance.encode(a)))
    }
    assert.isUndefined(balance.fastEncode?.({ id: 1, name: "a", balance: -1n }))
  })
})
