import { defineProject } from "vitest/config"

/** The core without a server: the unit's state machine, the lock, the pool and the engine on a scripted fake driver. */
export default defineProject({
  test: {
    name: "unit",
    include: ["test/unit/**/*.test.ts"],
    testTimeout: 10_000,
    benchmark: { include: ["test/unit/**/*.bench.ts"] }
  }
})
