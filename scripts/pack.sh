#!/usr/bin/env bash
# Packs @sessionfx/session and @sessionfx/testing into the directory given as $1: the tarballs to try an unreleased
# build with (`npm i <dir>/sessionfx-session-<version>.tgz …`) or to publish. Each package's `prepack` builds dist/
# from a clean slate and its package.json points at dist/ (the workspace reaches src/ through the @sessionfx/source
# export condition), so `npm pack` and `pnpm pack` in packages/session or packages/testing give the same tarball;
# this runs `pnpm pack` in each, one after the other, and then checks what was packed. Prints the tarballs' paths.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/pack.sh <output dir>}
mkdir -p "$out"
out=$(cd "$out" && pwd)
tarballs=()
for pkg in session testing; do
  if ! log=$(cd "packages/$pkg" && pnpm pack --pack-destination "$out" 2>&1); then
    echo "$log" >&2
    echo "pack.sh: pnpm pack failed in packages/$pkg" >&2
    exit 1
  fi
  tarballs+=("$(echo "$log" | grep '\.tgz$' | tail -1)")
done
node scripts/check-tarball.mjs "${tarballs[@]}"
printf '%s\n' "${tarballs[@]}"
