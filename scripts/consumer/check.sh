#!/usr/bin/env bash
# The consumer proof, as a user outside the repository meets the packages:
# - packs them with the documented command (scripts/pack.sh, pnpm pack) and again with plain `npm pack` in each
#   package directory, and requires the same files and the same manifest from both;
# - per profile, in a scratch project outside the repository, runs the install command the docs give, as pasted (only
#   the two @sessionfx/* names, which are not on the registry yet, replaced by the tarballs' paths);
# - runs ESM programs with plain node against private test servers (or MYSQL_URL): a first program, the README's
#   ManagedRuntime over node:http, migrations from files with @effect/sql's Migrator, and (sql-0.51) Drizzle and
#   Kysely in units of work; runs a user's vitest file (docs/testing.md: SessionTest, read-only units); type-checks a
#   TypeScript consumer (strict, nodenext, skipLibCheck false); asserts one copy of effect.
#
#   scripts/consumer/check.sh [profile ...]    default: both
#   profiles: sql-0.52  README.md's install command (effect 3.22), the tarballs of scripts/pack.sh
#             sql-0.51  docs/integrations.md's command for Drizzle and Kysely (effect 3.21), the tarballs of npm pack
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
profiles=("$@")
[ ${#profiles[@]} -gt 0 ] || profiles=(sql-0.52 sql-0.51)

# profile -> the document whose marked install block it runs, and the packer of the tarballs it installs
doc_for() {
  case "$1" in
    sql-0.52) echo "README.md" ;;
    sql-0.51) echo "docs/integrations.md" ;;
    *) echo "consumer: unknown profile $1 (sql-0.52, sql-0.51)" >&2; return 1 ;;
  esac
}
packs_for() {
  case "$1" in
    sql-0.52) echo "packs" ;;
    sql-0.51) echo "npm-packs" ;;
  esac
}

# the ```sh block after the line `<!-- scripts/consumer/check.sh runs this block as pasted (profile P) -->`
install_block() {
  awk -v marker="<!-- scripts/consumer/check.sh runs this block as pasted (profile $2) -->" '
    $0 == marker { found = 1; next }
    found && /^```/ { if (inside) exit; inside = 1; next }
    inside { print }
  ' "$repo/$1"
}

scratch=$(mktemp -d "${TMPDIR:-/tmp}/sessionfx-consumer.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
tsc="$repo/node_modules/typescript/bin/tsc"

echo "consumer: ./scripts/pack.sh (the documented pack command)"
mapfile -t packed < <("$repo/scripts/pack.sh" "$scratch/packs")
printf 'consumer:   %s\n' "${packed[@]#"$scratch/"}"
echo "consumer: npm pack in packages/session and packages/testing"
mkdir -p "$scratch/npm-packs"
for pkg in session testing; do
  if ! log=$(cd "$repo/packages/$pkg" && npm pack --pack-destination "$scratch/npm-packs" 2>&1); then
    echo "$log" >&2
    echo "consumer: npm pack failed in packages/$pkg" >&2
    exit 1
  fi
done
node "$repo/scripts/check-tarball.mjs" "$scratch"/npm-packs/*.tgz
# the same files with the same bytes; the same manifest but for `scripts` (pnpm leaves out the lifecycle scripts it ran)
for tgz in "$scratch"/packs/*.tgz; do
  name=$(basename "$tgz")
  for tool in packs npm-packs; do
    mkdir -p "$scratch/unpacked/$tool/$name"
    tar -xzf "$scratch/$tool/$name" -C "$scratch/unpacked/$tool/$name"
  done
  if ! diff -r -x package.json "$scratch/unpacked/packs/$name" "$scratch/unpacked/npm-packs/$name" >&2; then
    echo "consumer: pnpm pack and npm pack give different files for $name" >&2
    exit 1
  fi
  node -e '
    const fs = require("fs")
    const canonical = (value) =>
      Array.isArray(value) ? value.map(canonical)
      : value && typeof value === "object"
        ? Object.fromEntries(Object.keys(value).sort().map((k) => [k, canonical(value[k])]))
        : value
    const [a, b] = process.argv.slice(1).map((file) => {
      const { scripts: _, ...manifest } = JSON.parse(fs.readFileSync(file, "utf8"))
      return JSON.stringify(canonical(manifest), null, 1)
    })
    if (a !== b) {
      console.error(`consumer: pnpm pack and npm pack give different manifests:\n${a}\n---\n${b}`)
      process.exit(1)
    }
  ' "$scratch/unpacked/packs/$name/package/package.json" "$scratch/unpacked/npm-packs/$name/package/package.json"
done
echo "consumer:   same files and manifests as pnpm pack"

for profile in "${profiles[@]}"; do
  doc=$(doc_for "$profile")
  packs="$scratch/$(packs_for "$profile")"
  app="$scratch/$profile"
  mkdir -p "$app"
  cp -r "$repo"/scripts/consumer/app/. "$app/"
  printf '{ "name": "sessionfx-consumer", "private": true, "type": "module" }\n' >"$app/package.json"

  mapfile -t lines < <(install_block "$doc" "$profile")
  if [ ${#lines[@]} -eq 0 ]; then
    echo "consumer [$profile]: no install block marked for profile $profile in $doc" >&2
    exit 1
  fi
  for pkg in session testing; do
    version=$(node -p "require('$repo/packages/$pkg/package.json').version")
    pins=$(printf '%s\n' "${lines[@]}" | grep -oE "@sessionfx/$pkg@[^ ]+" | sort -u)
    if [ "$pins" != "@sessionfx/$pkg@$version" ]; then
      echo "consumer [$profile]: $doc pins ${pins:-no version of @sessionfx/$pkg}; packages/$pkg is $version" >&2
      exit 1
    fi
    tarball=$(ls "$packs"/sessionfx-"$pkg"-"$version".tgz)
    lines=("${lines[@]//"@sessionfx/$pkg@$version"/$tarball}")
  done
  echo "consumer [$profile]: $doc's install command, as pasted (the @sessionfx/* tarballs from $(basename "$packs"))"
  for line in "${lines[@]}"; do
    case "$line" in
      "npm i "*) ;;
      *) echo "consumer [$profile]: $doc's install block has a line that is not an npm install: $line" >&2; exit 1 ;;
    esac
    echo "consumer [$profile]:   \$ ${line//"$scratch/"/}"
    if ! (cd "$app" && bash -c "$line" >>"$app/npm.log" 2>&1); then
      cat "$app/npm.log" >&2
      echo "consumer [$profile]: the install command failed: $line" >&2
      exit 1
    fi
  done
  # for the TypeScript check only (not part of the documented command)
  (cd "$app" && npm i -D --no-audit --no-fund --loglevel=error @types/node@20 >>"$app/npm.log" 2>&1)
  (cd "$app" && npm ls --depth=0 | sed -n '2,$p' | grep . | sed "s/^/consumer [$profile]:   /")

  copies=$(cd "$app" && find . -type f -path '*/node_modules/effect/package.json' | wc -l)
  echo "consumer [$profile]: npm ls effect --all: $(cd "$app" && npm ls effect --all --parseable | grep -c .) path(s), $copies copy of effect on disk"
  if [ "$copies" != 1 ]; then
    (cd "$app" && npm ls effect --all) | grep . | sed "s/^/consumer [$profile]:   /"
    echo "consumer [$profile]: expected exactly one copy of effect, found $copies" >&2
    exit 1
  fi

  for program in program.mjs http.mjs migrations.mjs; do
    echo "consumer [$profile]: node $program"
    (cd "$app" && node "$program") | sed "s/^/consumer [$profile]:   /"
  done
  if [ -d "$app/node_modules/@effect/sql-drizzle" ]; then
    echo "consumer [$profile]: node builders.mjs"
    (cd "$app" && node builders.mjs) | sed "s/^/consumer [$profile]:   /"
  fi
  echo "consumer [$profile]: npx vitest run (a user's test file, docs/testing.md)"
  # without colours: CI may set FORCE_COLOR, and the summary below is read from the log
  if ! (cd "$app" && env -u FORCE_COLOR NO_COLOR=1 npx vitest run --reporter=dot sessionfx.test.ts >"$app/vitest.log" 2>&1); then
    cat "$app/vitest.log" >&2
    echo "consumer [$profile]: the user's vitest file failed" >&2
    exit 1
  fi
  if ! summary=$(sed 's/\x1b\[[0-9;]*m//g' "$app/vitest.log" | grep -E "Tests +[0-9]+ passed"); then
    cat "$app/vitest.log" >&2
    echo "consumer [$profile]: vitest exited 0 but printed no 'Tests N passed' summary" >&2
    exit 1
  fi
  echo "$summary" | sed "s/^ */consumer [$profile]:   /"
  echo "consumer [$profile]: tsc -p . (strict, nodenext, skipLibCheck false)"
  (cd "$app" && node "$tsc" -p . --pretty false)
  echo "consumer [$profile]: ok"
done
