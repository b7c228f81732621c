#!/usr/bin/env bash
# The whole test suite from nothing: set-up, type check, lint (with publint and attw on the packed packages), the API
# reference (docgen: examples type-checked and run), every vitest project, the runnable examples, then the consumer
# check (the packed packages installed with npm outside the repository).
set -euo pipefail
exec 2>&1 # one stream: a failure's message stays next to the step that printed it, also where only the tail is kept
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.local/bin:$PATH"
start=$(date +%s)
pnpm typecheck
pnpm lint
./scripts/docs.sh --check
pnpm test
pnpm --filter @sessionfx/examples examples
./scripts/consumer/check.sh
echo "test.sh: typecheck, lint, tests and the consumer check passed in $(( $(date +%s) - start )) s"
