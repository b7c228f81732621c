#!/usr/bin/env bash
# The main job: set-up, then the ledger server on its embedded default (a persistent local server under
# apps/ledger/.data) with the demo client against it over TCP. Exits 0 when the total balance is conserved.
# `./scripts/start.sh serve` only serves (TCP 7070, HTTP 8080; see docs/ledger.md); `--help` lists the options.
# The server runs as it ships: built to JavaScript (apps/ledger/dist, by `pnpm build`) and run by node.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.local/bin:$PATH"
cd apps/ledger
pnpm -s build
exec node --enable-source-maps dist/main.js "${@:-demo}"
