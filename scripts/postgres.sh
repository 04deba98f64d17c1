#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests: initdb in a directory of its own, a unix socket
# in that directory and a TCP port on 127.0.0.1 only, trust authentication, one role and one
# database. Nothing outside the directory is touched; `stop` removes it.
#
# Usage: scripts/postgres.sh start DIR   prints the URL (postgres://livemig@127.0.0.1:PORT/livemig_test)
#        scripts/postgres.sh stop DIR    stops the cluster and removes DIR (succeeds when none runs)
#
# DIR must not exist or be empty. Run as root, the cluster runs as the `postgres` user (as
# Debian's `postgresql` package creates it); otherwise as the calling user.
# Environment: LM_PG_PORT (default: a free port in 20000..29999), LM_PG_BIN (the directory
# of initdb and pg_ctl; default: the newest /usr/lib/postgresql/*/bin, else PATH).
# Durability is off (fsync=off): the cluster only ever holds test data.
set -euo pipefail

ROLE=livemig
DATABASE=livemig_test

die() {
  echo "postgres.sh: $*" >&2
  exit 1
}
usage() {
  sed -n '6,7p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

bindir() {
  if [[ -n "${LM_PG_BIN:-}" ]]; then
    echo "$LM_PG_BIN"
    return
  fi
  local newest
  newest="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [[ -n "$newest" ]]; then
    echo "$newest"
  elif command -v initdb >/dev/null; then
    dirname "$(command -v initdb)"
  else
    die "initdb not found: install PostgreSQL (Debian: apt-get install postgresql)"
  fi
}

# Runs a command as the cluster's owner.
as_owner() {
  if [[ "$(id -u)" == 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 10000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  die "no free port found"
}

start() {
  local dir="$1" bin port
  bin="$(bindir)"
  [[ -x "$bin/initdb" && -x "$bin/pg_ctl" ]] || die "no initdb/pg_ctl in $bin"
  mkdir -p "$dir"
  [[ -z "$(ls -A "$dir")" ]] || die "$dir is not empty"
  dir="$(cd "$dir" && pwd)"
  port="${LM_PG_PORT:-$(free_port)}"
  if [[ "$(id -u)" == 0 ]]; then
    id postgres >/dev/null 2>&1 || die "no postgres user: install Debian's postgresql package"
    chown postgres: "$dir"
  fi
  cd "$dir"
  as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync \
    -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    die "initdb failed"
  }
  echo "$port" >"$dir/port"
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-k $dir -p $port -h 127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
    start >/dev/null || {
    cat "$dir/server.log" >&2
    die "the server did not start"
  }
  as_owner "$bin/psql" -h "$dir" -p "$port" -U postgres -d postgres -q -v ON_ERROR_STOP=1 \
    -c "CREATE ROLE $ROLE LOGIN" -c "CREATE DATABASE $DATABASE OWNER $ROLE" >/dev/null
  echo "postgres://$ROLE@127.0.0.1:$port/$DATABASE"
}

stop() {
  local dir="$1" bin
  [[ -d "$dir" ]] || return 0
  dir="$(cd "$dir" && pwd)"
  if [[ -f "$dir/data/postmaster.pid" ]]; then
    bin="$(bindir)"
    (cd "$dir" && as_owner "$bin/pg_ctl" -D "$dir/data" -w -t 60 -m fast stop >/dev/null) ||
      echo "postgres.sh: pg_ctl stop failed" >&2
  fi
  rm -rf "$dir"
}

[[ $# == 2 ]] || usage
case "$1" in
  start) start "$2" ;;
  stop) stop "$2" ;;
  *) usage ;;
esac
