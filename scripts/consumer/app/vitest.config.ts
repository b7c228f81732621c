// As docs/testing.md advises: room for a private server's start and first statements on a busy CI machine.
import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    testTimeout: 60_000,
    hookTimeout: 120_000
  }
})
