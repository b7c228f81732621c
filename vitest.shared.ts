/**
 * What every vitest project of the workspace shares: `@sessionfx/session` and `@sessionfx/testing` resolve to their
 * TypeScript source through the `@sessionfx/source` export condition (a published package resolves to `dist/`),
 * in the tests and in every Node process a test starts (`NODE_OPTIONS`), so no test needs a build.
 */
import { defineProject, mergeConfig, type UserWorkspaceConfig } from "vitest/config"

export const sourceCondition = "@sessionfx/source"

const nodeOptions = [process.env.NODE_OPTIONS, `--conditions=${sourceCondition}`].filter(Boolean).join(" ")

export const defineWorkspaceProject = (config: UserWorkspaceConfig): UserWorkspaceConfig =>
  mergeConfig(
    defineProject({
      // vite's own defaults for server-side resolution, after the source condition
      ssr: { resolve: { conditions: [sourceCondition, "module", "node", "development|production"] } },
      test: { env: { NODE_OPTIONS: nodeOptions } }
    }),
    config
  )
