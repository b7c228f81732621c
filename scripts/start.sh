#!/usr/bin/env bash
# The main job: set-up, then the ledger server on its embedded default with the demo client against it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.local/bin:$PATH"
exec pnpm exec tsx scripts/demo.ts "$@"
