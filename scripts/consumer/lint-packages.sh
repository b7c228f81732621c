#!/usr/bin/env bash
# Lints what would be published: publint and "are the types wrong" on the packed tarballs (ESM only).
set -euo pipefail
cd "$(dirname "$0")/../.."
packs=$(mktemp -d)
trap 'rm -rf "$packs"' EXIT
./scripts/pack.sh "$packs" >/dev/null
for tgz in "$packs"/*.tgz; do
  pnpm exec publint run "$tgz" --strict
  pnpm exec attw "$tgz" --profile esm-only --format table-flipped
done
