import { defineProject } from "vitest/config"

export default defineProject({
  test: {
    name: "integration",
    include: ["**/*.test.ts"],
    exclude: ["node_modules/**", "cluster/**"],
    testTimeout: 120_000,
    hookTimeout: 120_000
  }
})
