import { defineWorkspaceProject } from "../../vitest.shared.js"

export default defineWorkspaceProject({
  test: {
    name: "session",
    include: ["test/**/*.test.ts"],
    exclude: ["test/unit/**"],
    testTimeout: 60_000,
    hookTimeout: 120_000
  }
})
