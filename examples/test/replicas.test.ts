import { assert, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as Example from "../src/replicas.js"

it.live(
  "replicas example: the writer reads its own write on a replica; a token handed over as a string is honoured",
  () =>
    Effect.gen(function* () {
      const result = yield* Example.run
      assert.deepStrictEqual(result.ownRead.balance, 150, "the fiber's own write, read back")
      assert.notStrictEqual(result.ownRead.server, result.primary, "read on a replica")
      assert.match(result.token, /^\d+-\d+-\d+$/)
      assert.strictEqual(result.readAfterToken.balance, 150, "a fiber without the writer's token, given it")
      assert.strictEqual(result.replicas.length, 2)
    }),
  120_000
)
