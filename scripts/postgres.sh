#!/usr/bin/env bash
# A PostgreSQL server of Debian's package on 127.0.0.1, with its data in a folder of its own.
#
#   scripts/postgres.sh up DIR PORT [DATABASE...]   start it (idempotent); the role `skillops` owns each database
#   scripts/postgres.sh down DIR                   stop it
#
# The password of `skillops` is SKILLOPS_DB_PASSWORD, else one made on the first `up` and kept in
# DIR/db-password; DIR/pgpass holds it for clients (PGPASSFILE=DIR/pgpass), so no address and no
# command line carries it. As root, the server runs as the `postgres` user (it refuses root).
set -euo pipefail
DB_USER=skillops

pg_bin() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [[ -x $bin/postgres ]] || {
    echo "PostgreSQL is not installed: apt-get install postgresql (Debian's package), or give the URLs of"
    echo "servers that run elsewhere (PREFECT_API_URL and MLFLOW_TRACKING_URI=http://...)."
    exit 1
  } >&2
  echo "$bin"
}

as_postgres() { if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

up() {
  local state=$1 port=$2 bin data=$1/postgres socket=$1/postgres-socket
  shift 2
  bin=$(pg_bin)
  mkdir -p "$data" "$socket"
  if [[ $EUID -eq 0 ]]; then
    chown postgres: "$data" "$socket"
    as_postgres test -x "$state" || { echo "user postgres cannot enter $state: give a folder it can reach (STACK_DIR)" >&2; exit 1; }
  fi
  chmod 700 "$data" "$socket"
  if [[ ! -f $data/PG_VERSION ]]; then
    # Password logins over TCP; the socket, in a folder only the database's owner can enter, trusts.
    as_postgres "$bin/initdb" -D "$data" -U postgres --auth-host=scram-sha-256 --auth-local=trust >"$state/initdb.log"
  fi
  if ! as_postgres "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    as_postgres "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 120 \
      -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$socket" start >/dev/null
  fi
  local password=${SKILLOPS_DB_PASSWORD:-}
  if [[ -z $password ]]; then
    [[ -f $state/db-password ]] || (umask 077 && od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$state/db-password")
    password=$(cat "$state/db-password")
  fi
  (umask 077 && echo "127.0.0.1:$port:*:$DB_USER:$password" >"$state/pgpass")
  # On stdin, not in psql's arguments, so `ps` never shows the password.
  {
    echo "SELECT 'CREATE ROLE $DB_USER LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER')\\gexec"
    echo "ALTER ROLE $DB_USER PASSWORD '$password';"
    for database in "$@"; do
      echo "SELECT 'CREATE DATABASE $database OWNER $DB_USER' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$database')\\gexec"
    done
  } | as_postgres "$bin/psql" -h "$socket" -p "$port" -U postgres -d postgres -q -v ON_ERROR_STOP=1 >/dev/null
  echo "postgresql running on 127.0.0.1:$port (data $data)"
}

down() {
  local data=$1/postgres
  [[ -f $data/postmaster.pid ]] || return 0
  as_postgres "$(pg_bin)/pg_ctl" -D "$data" -m fast -w stop >/dev/null && echo "postgresql stopped"
}

case "${1:-}" in
  up) [[ $# -ge 3 ]] || { echo "usage: $0 up DIR PORT [DATABASE...]"; exit 2; }; up "$(cd "$2" && pwd)" "${@:3}" ;;
  down) [[ $# -eq 2 ]] || { echo "usage: $0 down DIR"; exit 2; }; down "$(cd "$2" && pwd)" ;;
  *) echo "usage: $0 up DIR PORT [DATABASE...] | down DIR"; exit 2 ;;
esac
