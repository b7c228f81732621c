import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    projects: ["packages/*", "packages/session/vitest.unit.config.ts", "apps/*", "test", "test/cluster", "examples"],
    reporters: ["default"]
  }
})
