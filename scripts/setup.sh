#!/usr/bin/env bash
# Installs everything the project needs on a fresh Debian machine with Node 20 and npm:
# pnpm (the version pinned in package.json), dependencies from the lockfile, and a MySQL-compatible server
# (Debian's mariadb-server) unless one is on PATH or MYSQL_URL points at an existing server, and Debian's postgresql
# unless its binaries are installed or PG_URL points at an existing server.
set -euo pipefail
cd "$(dirname "$0")/.."

want=$(node -p 'require("./package.json").packageManager.split("@")[1]')
if command -v pnpm >/dev/null 2>&1 && [ "$(pnpm --version 2>/dev/null)" = "$want" ]; then
  :
elif [ "$(id -u)" = 0 ]; then
  echo "setup: installing pnpm@$want"
  npm install -g "pnpm@$want" --silent >/dev/null 2>&1 || {
    COREPACK_INTEGRITY_KEYS=0 corepack enable pnpm
    COREPACK_INTEGRITY_KEYS=0 corepack prepare "pnpm@$want" --activate
  }
else
  mkdir -p "$HOME/.local/bin"
  COREPACK_INTEGRITY_KEYS=0 corepack enable --install-directory "$HOME/.local/bin" pnpm
  export PATH="$HOME/.local/bin:$PATH"
fi
export COREPACK_INTEGRITY_KEYS=0

find_server() {
  for name in mariadbd mysqld; do
    command -v "$name" >/dev/null 2>&1 && return 0
    for dir in /usr/sbin /usr/local/sbin /usr/local/mysql/bin; do
      [ -x "$dir/$name" ] && return 0
    done
  done
  return 1
}

if [ -z "${MYSQL_URL:-}" ] && ! find_server; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: no MySQL-compatible server found; installing Debian's mariadb-server"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq mariadb-server >/dev/null
  else
    cat >&2 <<MSG
setup: no MySQL-compatible server (mariadbd or mysqld) is installed, and MYSQL_URL is not set.
Either install one:
    sudo apt-get install -y mariadb-server
or point the project at an existing MySQL 8 / MariaDB server:
    export MYSQL_URL=mysql://user:password@host:3306/database
MSG
    exit 1
  fi
fi

# PostgreSQL's tests start private servers from Debian's binaries (initdb and postgres under
# /usr/lib/postgresql/<version>/bin); no system service is needed. Skipped when PG_URL names an existing server.
find_pg_server() {
  command -v postgres >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1 && return 0
  for bin in /usr/lib/postgresql/*/bin /usr/local/pgsql/bin; do
    [ -x "$bin/postgres" ] && [ -x "$bin/initdb" ] && return 0
  done
  return 1
}

if [ -z "${PG_URL:-}" ] && ! find_pg_server; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: no PostgreSQL server found; installing Debian's postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  else
    echo "setup: the PostgreSQL tests need: sudo apt-get install -y postgresql (or PG_URL=postgres://user:pass@host:5432/db)" >&2
  fi
fi

# The cluster tests (test/cluster) run a 3-node Galera cluster: Debian's galera-4 provider, and rsync plus ss or lsof
# for the state transfer between nodes.
cluster_missing=""
[ -e /usr/lib/galera/libgalera_smm.so ] || cluster_missing="galera-4"
command -v rsync >/dev/null 2>&1 || cluster_missing="$cluster_missing rsync"
command -v ss >/dev/null 2>&1 || command -v lsof >/dev/null 2>&1 || cluster_missing="$cluster_missing iproute2"
if [ -n "$cluster_missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing ${cluster_missing# } for the Galera tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq $cluster_missing >/dev/null
  else
    echo "setup: the Galera tests need: sudo apt-get install -y ${cluster_missing# }" >&2
  fi
fi

# The ledger benchmark's reference server (apps/ledger/bench/reference_server.py) is Python 3 with Debian's
# SQLAlchemy 1.4 and PyMySQL.
if ! /usr/bin/python3 -c "import sqlalchemy, pymysql" >/dev/null 2>&1 && ! python3 -c "import sqlalchemy, pymysql" >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing python3-sqlalchemy and python3-pymysql for the ledger benchmark"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq python3-sqlalchemy python3-pymysql >/dev/null
  else
    echo "setup: the ledger benchmark needs: sudo apt-get install -y python3-sqlalchemy python3-pymysql" >&2
  fi
fi

pnpm install --frozen-lockfile --reporter=append-only 2>&1 | tail -n 3
