import { defineWorkspaceProject } from "../../vitest.shared.js"

// Replication and Galera against real MariaDB processes: one file at a time (a 3-node cluster is enough load for
// 2 cores), generous bounds for start-up on a busy machine. The project runs after all the others (a later
// `groupOrder`), never beside them: Galera evicts a node silent for `evs.suspect_timeout` (4 s in the harness), and
// with the other projects' servers on the same 2 cores a starved survivor was evicted while the test killed
// another node — the two left lost quorum (non-Primary, size 2) and the test waited in vain (CI, 2026-12-04).
export default defineWorkspaceProject({
  test: {
    name: "cluster",
    sequence: { groupOrder: 1 },
    include: ["**/*.test.ts"],
    exclude: ["node_modules/**", "build/**"],
    poolOptions: { forks: { singleFork: true } },
    testTimeout: 120_000,
    hookTimeout: 240_000
  }
})
