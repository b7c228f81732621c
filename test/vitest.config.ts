import { defineWorkspaceProject } from "../vitest.shared.js"

export default defineWorkspaceProject({
  test: {
    name: "integration",
    include: ["**/*.test.ts"],
    exclude: ["node_modules/**", "cluster/**"],
    testTimeout: 120_000,
    hookTimeout: 120_000
  }
})
