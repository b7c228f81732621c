import js from "@eslint/js"
import tseslint from "typescript-eslint"

export default tseslint.config(
  {
    ignores: ["**/node_modules/**", "**/build/**", "**/dist/**", "**/.data/**", "**/.tmp/**", "apps/bench/results/**"]
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      "@typescript-eslint/no-explicit-any": "off",
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "@typescript-eslint/no-empty-object-type": "off",
      "@typescript-eslint/no-namespace": "off",
      "no-restricted-properties": [
        "error",
        { object: "it", property: "only", message: "no .only in committed tests" },
        { object: "describe", property: "only", message: "no .only in committed tests" }
      ]
    }
  },
  {
    // the core: `any` only behind the driver seam (a client library's untyped internals)
    files: ["packages/session/src/**/*.ts"],
    ignores: ["packages/session/src/internal/driver/**"],
    rules: { "@typescript-eslint/no-explicit-any": "error" }
  }
)
