import { defineProject } from "vitest/config"

export default defineProject({
  test: {
    name: "session",
    include: ["test/**/*.test.ts"],
    exclude: ["test/unit/**"],
    testTimeout: 60_000,
    hookTimeout: 120_000
  }
})
