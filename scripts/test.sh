#!/usr/bin/env bash
# The whole test suite from nothing: set-up, type check, lint, then every vitest project.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.local/bin:$PATH"
start=$(date +%s)
pnpm typecheck
pnpm lint
pnpm test
echo "test.sh: typecheck, lint and tests passed in $(( $(date +%s) - start )) s"
