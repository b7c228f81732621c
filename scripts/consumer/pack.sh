#!/usr/bin/env bash
# Builds @sessionfx/session and @sessionfx/testing from a clean dist/ and packs them with pnpm (which applies
# publishConfig: exports point at dist/) into the directory given as $1.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: pack.sh <output dir>}
mkdir -p "$out"
# every public module (src/*.ts) is a subpath of the published package
node -e '
  const fs = require("fs")
  for (const pkg of ["session", "testing"]) {
    const exports = require(`./packages/${pkg}/package.json`).publishConfig.exports
    for (const file of fs.readdirSync(`packages/${pkg}/src`).filter((f) => /^[A-Z].*\.ts$/.test(f))) {
      const name = `./${file.slice(0, -3)}`
      if (!exports[name]) throw new Error(`packages/${pkg}: publishConfig.exports has no "${name}" for src/${file}`)
    }
  }
'
rm -rf packages/session/dist packages/testing/dist packages/session/build/dist.tsbuildinfo packages/testing/build/dist.tsbuildinfo
if ! log=$(pnpm build 2>&1); then
  echo "$log" >&2
  echo "pack.sh: the build failed" >&2
  exit 1
fi
for pkg in session testing; do
  (cd "packages/$pkg" && pnpm pack --pack-destination "$out" >/dev/null)
done
ls "$out"/*.tgz
