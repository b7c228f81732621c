import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    projects: ["packages/*", "apps/*", "test", "test/cluster", "examples"],
    reporters: ["default"]
  }
})
