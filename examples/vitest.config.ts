import { defineWorkspaceProject } from "../vitest.shared.js"

export default defineWorkspaceProject({
  test: {
    name: "examples",
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 120_000
  }
})
