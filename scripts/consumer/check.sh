#!/usr/bin/env bash
# The consumer proof: packs @sessionfx/session and @sessionfx/testing, installs the tarballs and their peers with
# npm into a scratch project outside the repository, runs an ESM program with plain node against a private test
# server (or MYSQL_URL), type-checks a TypeScript consumer (strict, nodenext) and asserts one copy of effect.
#
#   scripts/consumer/check.sh [profile ...]    profiles: sql-0.52 (effect 3.22) and sql-0.51 (effect 3.21); default both
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
profiles=("$@")
[ ${#profiles[@]} -gt 0 ] || profiles=(sql-0.52 sql-0.51)

peers_for() {
  case "$1" in
    sql-0.52) echo "effect@3.22 @effect/sql@0.52 @effect/platform@0.97 @effect/experimental@0.61" ;;
    # where Drizzle and Kysely users are: @effect/sql-drizzle 0.50 and @effect/sql-kysely 0.47 require @effect/sql ^0.51
    sql-0.51) echo "effect@3.21 @effect/sql@0.51 @effect/platform@0.96 @effect/experimental@0.60 @effect/sql-drizzle@0.50 drizzle-orm@0.45 @effect/sql-kysely@0.47 kysely@0.28" ;;
    *) echo "consumer: unknown profile $1 (sql-0.52, sql-0.51)" >&2; return 1 ;;
  esac
}

scratch=$(mktemp -d "${TMPDIR:-/tmp}/sessionfx-consumer.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
"$repo/scripts/pack.sh" "$scratch/packs" >/dev/null
tsc="$repo/node_modules/typescript/bin/tsc"

for profile in "${profiles[@]}"; do
  peers=$(peers_for "$profile")
  app="$scratch/$profile"
  mkdir -p "$app"
  cp "$repo"/scripts/consumer/app/{program.mjs,builders.mjs,consumer.ts,tsconfig.json} "$app/"
  printf '{ "name": "sessionfx-consumer", "private": true, "type": "module" }\n' >"$app/package.json"
  echo "consumer [$profile]: npm install of the tarballs with $peers"
  # shellcheck disable=SC2086
  (cd "$app" && npm install --no-audit --no-fund --loglevel=error \
    "$scratch"/packs/sessionfx-session-*.tgz "$scratch"/packs/sessionfx-testing-*.tgz $peers @types/node@20 >/dev/null)
  (cd "$app" && npm ls --depth=0 | sed -n '2,$p' | grep . | sed "s/^/consumer [$profile]:   /")

  copies=$(cd "$app" && find . -type f -path '*/node_modules/effect/package.json' | wc -l)
  echo "consumer [$profile]: npm ls effect --all: $(cd "$app" && npm ls effect --all --parseable | grep -c .) path(s), $copies copy of effect on disk"
  (cd "$app" && npm ls effect --all) | grep . | sed "s/^/consumer [$profile]:   /"
  if [ "$copies" != 1 ]; then
    echo "consumer [$profile]: expected exactly one copy of effect, found $copies" >&2
    exit 1
  fi

  echo "consumer [$profile]: node program.mjs"
  (cd "$app" && node program.mjs) | sed "s/^/consumer [$profile]:   /"
  if [ -d "$app/node_modules/@effect/sql-drizzle" ]; then
    echo "consumer [$profile]: node builders.mjs"
    (cd "$app" && node builders.mjs) | sed "s/^/consumer [$profile]:   /"
  fi
  echo "consumer [$profile]: tsc -p . (strict, nodenext, skipLibCheck false)"
  (cd "$app" && node "$tsc" -p . --pretty false)
  echo "consumer [$profile]: ok"
done
