#!/usr/bin/env bash
# API reference with @effect/docgen: checks every public module of @sessionfx/session and @sessionfx/testing (examples
# type-checked and run) and writes docs/api/<package>/. `--check` also reports a docs/api that is out of date.
set -euo pipefail
cd "$(dirname "$0")/.."
for pkg in session testing; do
  dir="packages/$pkg"
  rm -rf "$dir/docs"
  mkdir -p "$dir/docs"
  # docgen runs the examples from $dir/docs/examples with tsx, importing ../../src: as CommonJS, a directory import works
  echo '{ "type": "commonjs" }' >"$dir/docs/package.json"
  # the examples import the other workspace package by name: its source, through the @sessionfx/source condition
  if ! log=$(cd "$dir" && NODE_OPTIONS="${NODE_OPTIONS:-} --conditions=@sessionfx/source" pnpm exec docgen 2>&1); then
    echo "$log" >&2
    echo "docs.sh: docgen failed for @sessionfx/$pkg" >&2
    rm -rf "$dir/docs"
    exit 1
  fi
  rm -rf "docs/api/$pkg"
  mkdir -p "docs/api/$pkg"
  cp "$dir"/docs/modules/*.ts.md "docs/api/$pkg/"
  rm -rf "$dir/docs"
done
pnpm exec prettier --log-level warn --write docs/api
if [ "${1:-}" = "--check" ] && [ -n "$(git status --porcelain -- docs/api)" ]; then
  echo "docs.sh: docs/api differs from the committed reference; run ./scripts/docs.sh and commit it:" >&2
  git status --short -- docs/api >&2
fi
echo "docs.sh: docs/api written"
