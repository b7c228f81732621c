import { defineWorkspaceProject } from "../../vitest.shared.js"

// Replication and Galera against real MariaDB processes: one file at a time (a 3-node cluster is enough load for
// 2 cores), generous bounds for start-up on a busy machine.
export default defineWorkspaceProject({
  test: {
    name: "cluster",
    include: ["**/*.test.ts"],
    exclude: ["node_modules/**", "build/**"],
    poolOptions: { forks: { singleFork: true } },
    testTimeout: 120_000,
    hookTimeout: 240_000
  }
})
