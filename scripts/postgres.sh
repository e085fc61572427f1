#!/usr/bin/env bash
# A PostgreSQL server of Debian's package, with its data in a folder of its own.
#
#   scripts/postgres.sh up DIR PORT [DATABASE...]   start it (idempotent); each database has a role of its own
#   scripts/postgres.sh down DIR                   stop it
#   scripts/postgres.sh snapshot DIR PORT >FILE     every database at one instant, as a tar, while it runs
#   scripts/postgres.sh unpack DIR <FILE            a snapshot as DIR's data folder (the next `up` starts it)
#   scripts/postgres.sh major                      the major version installed here (a snapshot's must match)
#
# Each DATABASE is owned by the role skillops_<DATABASE> (one per service: prefect, mlflow,
# mlflow_auth, optuna), which may connect to it alone, with scram-sha-256. Its password is made on
# the first `up` and kept in DIR/secrets/pg-<DATABASE> (mode 600); DIR/pgpass holds them all for
# the servers of this machine (PGPASSFILE=DIR/pgpass), so no address and no command line carries
# one. As root, the server runs as the `postgres` user (it refuses root).
#
# Without PG_TLS_DIR it listens on 127.0.0.1 alone and admits each role there. With PG_TLS_DIR
# (server.crt and server.key) it is a team's: it listens on PG_HOST, with TLS, and admits over TCP
# only the databases in PG_REMOTE, from PG_NETWORK (a CIDR, default PG_HOST/32), over TLS
# (hostssl); the servers of this machine reach their databases through the socket folder
# (DIR/postgres-socket, host=that folder in their URLs), which no other machine can.
set -euo pipefail

pg_bin() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [[ -x $bin/postgres ]] || {
    echo "PostgreSQL is not installed: apt-get install postgresql (Debian's package), or give the URLs of"
    echo "servers that run elsewhere (PREFECT_API_URL and MLFLOW_TRACKING_URI=https://...)."
    exit 1
  } >&2
  echo "$bin"
}

as_postgres() { if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

secret() {  # path: a random password made once, mode 600
  [[ -s $1 ]] || (umask 077 && od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"$1")
  cat "$1"
}

write_hba() {  # data folder, databases...
  local data=$1 database remote=" ${PG_REMOTE:-} "
  shift
  {
    echo "# Written by scripts/postgres.sh on every up: each database, its own role, nothing else."
    echo "local all postgres trust"  # the socket sits in a folder only postgres may enter
    echo "local replication postgres trust"  # `snapshot`, through the same socket
    for database in "$@"; do
      if [[ -n ${PG_TLS_DIR:-} ]]; then
        echo "local $database skillops_$database scram-sha-256"
        if [[ $remote == *" $database "* ]]; then
          echo "hostssl $database skillops_$database ${PG_NETWORK:-$PG_HOST/32} scram-sha-256"
        fi
      else
        echo "host $database skillops_$database 127.0.0.1/32 scram-sha-256"
      fi
    done
  } >"$data/pg_hba.conf"
}

up() {
  local state=$1 port=$2 bin data=$1/postgres socket=$1/postgres-socket listen=127.0.0.1 ssl=()
  shift 2
  bin=$(pg_bin)
  # A Unix socket's path holds at most 107 bytes; PostgreSQL's is the folder + /.s.PGSQL.<port>.
  if ((${#socket} + 18 > 107)); then
    echo "the state folder $state is too deep for PostgreSQL's socket: give STACK_DIR a path of at most $((107 - 18 - ${#socket} + ${#state})) characters" >&2
    exit 1
  fi
  mkdir -p "$data" "$socket" "$state/secrets"
  chmod 700 "$state/secrets"
  if [[ $EUID -eq 0 ]]; then
    chown postgres: "$data" "$socket"
    as_postgres test -x "$state" || { echo "user postgres cannot enter $state: give a folder it can reach (STACK_DIR)" >&2; exit 1; }
  fi
  chmod 700 "$data" "$socket"
  if [[ ! -f $data/PG_VERSION ]]; then
    # UTF8 whatever the caller's locale: with none set, initdb picks SQL_ASCII, where psycopg 3
    # hands text back as bytes and SQLAlchemy 2.1 cannot even read the server's version.
    as_postgres "$bin/initdb" -D "$data" -U postgres --encoding=UTF8 --no-locale \
      --auth-host=scram-sha-256 --auth-local=trust >"$state/initdb.log"
  fi
  if [[ -n ${PG_TLS_DIR:-} ]]; then
    [[ -f $PG_TLS_DIR/server.crt && -n ${PG_HOST:-} ]] || { echo "PG_TLS_DIR must hold server.crt and server.key, and PG_HOST be set" >&2; exit 1; }
    listen=$PG_HOST
    # PostgreSQL reads its key only when it is the server's own and mode 600.
    install -m 600 "$PG_TLS_DIR/server.key" "$data/server.key"
    install -m 644 "$PG_TLS_DIR/server.crt" "$data/server.crt"
    [[ $EUID -eq 0 ]] && chown postgres: "$data/server.key" "$data/server.crt"
    ssl=(-c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key -c ssl_min_protocol_version=TLSv1.2)
  fi
  write_hba "$data" "$@"
  [[ $EUID -eq 0 ]] && chown postgres: "$data/pg_hba.conf"
  if as_postgres "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    as_postgres "$bin/pg_ctl" -D "$data" reload >/dev/null  # the new pg_hba.conf
  else
    as_postgres "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 120 \
      -o "-c listen_addresses=$listen -p $port -c unix_socket_directories=$socket -c password_encryption=scram-sha-256 ${ssl[*]}" \
      start >/dev/null
  fi
  local database role password
  (umask 077 && : >"$state/pgpass")
  for database in "$@"; do
    role=skillops_$database
    password=$(secret "$state/secrets/pg-$database")
    # On stdin, not in psql's arguments, so `ps` never shows the password.
    {
      echo "SELECT 'CREATE ROLE $role LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$role')\\gexec"
      echo "ALTER ROLE $role NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '$password';"
      echo "SELECT 'CREATE DATABASE $database OWNER $role' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$database')\\gexec"
      echo "REVOKE CONNECT ON DATABASE $database FROM PUBLIC;"
      echo "GRANT CONNECT ON DATABASE $database TO $role;"
    } | as_postgres "$bin/psql" -h "$socket" -p "$port" -U postgres -d postgres -q -v ON_ERROR_STOP=1 >/dev/null
    # A folder of an earlier stack (one role `skillops` for every database): hand its objects over.
    echo "SELECT 'REASSIGN OWNED BY skillops TO $role' FROM pg_roles WHERE rolname = 'skillops'\\gexec
ALTER DATABASE $database OWNER TO $role;" \
      | as_postgres "$bin/psql" -h "$socket" -p "$port" -U postgres -d "$database" -q -v ON_ERROR_STOP=1 >/dev/null
    # Socket connections match `localhost` (libpq) or the socket folder (asyncpg).
    for host in 127.0.0.1 localhost "$socket" ${PG_HOST:+"$PG_HOST"}; do
      echo "$host:$port:$database:$role:$password" >>"$state/pgpass"
    done
  done
  echo "postgresql running on $listen port $port (data $data, socket $socket)"
}

down() {
  local data=$1/postgres
  [[ -f $data/postmaster.pid ]] || return 0
  as_postgres "$(pg_bin)/pg_ctl" -D "$data" -m fast -w stop >/dev/null && echo "postgresql stopped"
}

# A snapshot is pg_basebackup's copy of the whole cluster with the WAL it needs: every database
# as it was at one instant, which is what a power cut would leave and what the stack already
# recovers from (a champion's alias in MLflow and the authority's record of the move, in two
# databases, are never half a backup apart). Physical, so it restores on the same PostgreSQL major
# version. The server's TLS key is left out: it is a secret, kept with the others.
snapshot() {
  local state=$1 port=$2
  [[ -f $state/postgres/postmaster.pid ]] || { echo "PostgreSQL of $state is not running" >&2; exit 1; }
  if ! grep -q "^local replication postgres trust" "$state/postgres/pg_hba.conf"; then  # a stack up before backups
    echo "local replication postgres trust" >>"$state/postgres/pg_hba.conf"
    as_postgres "$(pg_bin)/pg_ctl" -D "$state/postgres" reload >/dev/null
  fi
  local copy
  copy=$(mktemp -d)
  chmod 711 "$copy"
  [[ $EUID -eq 0 ]] && chown postgres: "$copy"
  as_postgres "$(pg_bin)/pg_basebackup" -h "$state/postgres-socket" -p "$port" -U postgres -D "$copy/data" \
    -X fetch --checkpoint=fast --no-password >&2
  rm -f "$copy/data/server.key" "$copy/data/server.crt"
  tar -C "$copy/data" -cf - .
  rm -rf "$copy"
}

unpack() {
  local data=$1/postgres
  if [[ -f $data/PG_VERSION ]]; then
    echo "$data already holds a PostgreSQL cluster: restore into a new state folder (STACK_DIR)" >&2
    exit 1
  fi
  mkdir -p "$data"
  tar -C "$data" -xf -
  [[ $EUID -eq 0 ]] && chown -R postgres: "$data"
  chmod 700 "$data"
  echo "postgresql data unpacked into $data (version $(cat "$data/PG_VERSION"))"
}

case "${1:-}" in
  snapshot) [[ $# -eq 3 ]] || { echo "usage: $0 snapshot DIR PORT >FILE"; exit 2; }; snapshot "$(cd "$2" && pwd)" "$3" ;;
  major) basename "$(dirname "$(pg_bin)")" ;;
  unpack) [[ $# -eq 2 ]] || { echo "usage: $0 unpack DIR <FILE"; exit 2; }; unpack "$(cd "$2" && pwd)" ;;
  up) [[ $# -ge 3 ]] || { echo "usage: $0 up DIR PORT [DATABASE...]"; exit 2; }; up "$(cd "$2" && pwd)" "${@:3}" ;;
  down) [[ $# -eq 2 ]] || { echo "usage: $0 down DIR"; exit 2; }; down "$(cd "$2" && pwd)" ;;
  *) echo "usage: $0 up DIR PORT [DATABASE...] | down DIR | snapshot DIR PORT | unpack DIR | major"; exit 2 ;;
esac
