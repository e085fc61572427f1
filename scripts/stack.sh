#!/usr/bin/env bash
# The skillops stack.
#
#   scripts/stack.sh up      start everything (idempotent), print the addresses
#   scripts/stack.sh down    stop everything this script started
#   scripts/stack.sh status  what is running
#   scripts/stack.sh backup DEST       a team stack's backup, while it runs (scripts/backup.sh)
#   scripts/stack.sh restore BACKUP    a backup as this state folder (a new one), then `up`
#   scripts/stack.sh renew-cert        a new server certificate from the stack's CA, taken at once
#   scripts/stack.sh upgrade           back up, migrate every database to this checkout's pins, restart
#
# One machine (the default): on 127.0.0.1, a Prefect server, a process worker on the `skillops`
# pool (one flow run at a time: one training per GPU), the deployments of prefect.yaml, and the
# MLflow UI on the sqlite store under mlruns/ (MLFLOW_TRACKING_URI for another store).
#
# A team (TEAM=1): servers that other machines reach at HOST (default 127.0.0.1), every one behind
# TLS and accounts. nginx (Debian's package) terminates TLS on HOST:PREFECT_PORT and
# HOST:MLFLOW_PORT and forwards to the Prefect server and the MLflow tracking server, which listen
# on 127.0.0.1 only; PostgreSQL (one role per service) listens on HOST for the shared Optuna
# studies, over TLS, from NETWORK only. MLflow runs its basic-auth app (`skillops users` adds
# accounts and roles), Prefect its API auth string with CSRF protection. The CA and the server
# certificate are made for HOST (and HOST_NAMES), or given (TLS_CERT, TLS_KEY, TLS_CA). Then the
# pool, the deployments of prefect.team.yaml (workers clone the code from SKILLOPS_GIT_URL at
# SKILLOPS_GIT_REF), the automation that marks flow runs whose heartbeats stopped CRASHED, and a
# worker. Every secret is made once into a mode-600 file under STATE/secrets and reaches the
# processes through their environment or a file, never a command line.
#
# Only the promotion authority (`skillops.gate.service`, behind the same nginx at /gate/, with an
# account whose password never leaves this machine) moves a champion, registers into a served
# model, changes a policy or rolls back; nginx forwards only the MLflow routes skillops and the
# MLflow UI use, and a GraphQL request only if it is a query; wrong passwords are limited per
# address (`skillops.stack.throttle`). Workers run `flows/worker.py`, which starts only skillops'
# flows cloned from SKILLOPS_GIT_URL, with nothing overriding their command or environment. Every
# folder the stack writes is private to its owner (umask 077).
#
# WEBHOOK_URL: a receiver (`skillops webhooks listen`, secret in STATE/secrets/webhook) told of
# every move of a champion.
#
# Servers someone else runs are used, not started: source an account's env file of `skillops
# users add` (the URLs, the CA, the credentials), and `up` only deploys and starts this machine's
# worker against them.
#
# Logs, process ids, secrets and PostgreSQL's data live in .stack/ (git-ignored; STACK_DIR elsewhere).
# Ports: PREFECT_PORT (4200), MLFLOW_PORT (5000), PG_PORT (5433); behind nginx, the servers use
# PREFECT_BACKEND_PORT and MLFLOW_BACKEND_PORT (each 10000 above) and GATE_BACKEND_PORT (10100
# above MLflow's) on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
umask 077  # logs, secrets, artifacts, checkpoints: the stack owner's alone

VENV=${VENV:-.venv}
STATE=$(mkdir -p "${STACK_DIR:-.stack}" && cd "${STACK_DIR:-.stack}" && pwd)
chmod 711 "$STATE"  # PostgreSQL (its own user) enters its folders here; nobody lists them
TEAM=${TEAM:-}
HOST=${HOST:-127.0.0.1}
PREFECT_PORT=${PREFECT_PORT:-4200}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
PG_PORT=${PG_PORT:-5433}
PREFECT_BACKEND_PORT=${PREFECT_BACKEND_PORT:-$((PREFECT_PORT + 10000))}
MLFLOW_BACKEND_PORT=${MLFLOW_BACKEND_PORT:-$((MLFLOW_PORT + 10000))}
GATE_BACKEND_PORT=${GATE_BACKEND_PORT:-$((MLFLOW_PORT + 10100))}
# A worker sends a heartbeat this often; a flow run silent for three of them is marked CRASHED.
export PREFECT_FLOWS_HEARTBEAT_FREQUENCY=${PREFECT_FLOWS_HEARTBEAT_FREQUENCY:-30}
export PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_ENABLE_TELEMETRY=false HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
SERVICES=(mlflow-ui worker nginx gate mlflow-server prefect-server)  # in the order `down` stops them

if [[ -z $TEAM && $HOST != 127.0.0.1 ]]; then
  echo "HOST=$HOST needs TEAM=1: only the team stack has the TLS and the accounts a network address needs." >&2
  exit 2
fi

# Which servers this machine runs: none that the caller names, unless they are this stack's own
# (a shell that sourced .stack/env starting the stack again after a reboot).
if [[ -n $TEAM ]]; then scheme=https; else scheme=http; fi
PUBLIC_PREFECT=$scheme://$HOST:$PREFECT_PORT
PUBLIC_MLFLOW=$scheme://$HOST:$MLFLOW_PORT
OWN_PREFECT=1; [[ -n ${PREFECT_API_URL:-} && ${PREFECT_API_URL%/api} != "$PUBLIC_PREFECT" ]] && OWN_PREFECT=
OWN_MLFLOW=1; [[ ${MLFLOW_TRACKING_URI:-} == http* && ${MLFLOW_TRACKING_URI%/} != "$PUBLIC_MLFLOW" ]] && OWN_MLFLOW=
if [[ -n $TEAM ]]; then
  # Where workers clone the flows from (and the promotion authority reads recipes at a run's commit).
  export SKILLOPS_GIT_URL=${SKILLOPS_GIT_URL:-$(git remote get-url origin 2>/dev/null || echo "file://$PWD")}
  export SKILLOPS_GIT_REF=${SKILLOPS_GIT_REF:-$(git rev-parse --abbrev-ref HEAD)}
  export PREFECT_API_URL=${PREFECT_API_URL:-$PUBLIC_PREFECT/api}
  export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-$PUBLIC_MLFLOW}
  # Flow runs start in a fresh folder of their own: checkpoints outlive them here.
  export SKILLOPS_OUTPUTS_DIR=${SKILLOPS_OUTPUTS_DIR:-$STATE/outputs}
else
  export PREFECT_API_URL=${PREFECT_API_URL:-http://127.0.0.1:${PREFECT_PORT}/api}
  export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlruns/mlflow.db}
  OWN_MLFLOW=
fi

running() { [[ -f "$STATE/$1.pid" ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

start() {  # name, command...
  local name=$1; shift
  if running "$name"; then echo "$name already running (pid $(cat "$STATE/$name.pid"))"; return; fi
  # setsid: the process gets its own group, so `down` stops its children (flow runs) too.
  setsid "$@" >"$STATE/$name.log" 2>&1 < /dev/null &
  echo $! >"$STATE/$name.pid"
  echo "$name started (pid $!, log $STATE/$name.log)"
}

wait_for() {  # url, name
  local ca=()
  [[ -n ${MLFLOW_TRACKING_SERVER_CERT_PATH:-} ]] && ca=(--cacert "$MLFLOW_TRACKING_SERVER_CERT_PATH")
  for _ in $(seq 1 180); do
    if curl -fsS "${ca[@]}" "$1" >/dev/null 2>&1; then return 0; fi
    if [[ -f $STATE/$2.pid ]] && ! running "$2"; then
      echo "$2 exited; last lines of $STATE/$2.log:"; tail -20 "$STATE/$2.log"; exit 1
    fi
    sleep 1
  done
  echo "$2 did not answer at $1 within 180 s"; exit 1
}

secret() {  # name [generator]: a secret made once, kept in STATE/secrets/<name> (mode 600)
  local file=$STATE/secrets/$1
  mkdir -p "$STATE/secrets" && chmod 700 "$STATE/secrets"
  [[ -s $file ]] || (umask 077 && ${2:-random_hex} >"$file")
  cat "$file"
}
random_hex() { od -An -tx1 -N24 /dev/urandom | tr -d ' \n'; }
fernet_key() { "$VENV/bin/python" -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"; }

# --- the team's servers ------------------------------------------------------------------------

nginx_conf() {  # TLS in front of the servers: the only ports other machines reach
  local conf=$STATE/nginx tls=$STATE/tls
  mkdir -p "$conf/tmp"
  chmod 711 "$conf"
  [[ $EUID -eq 0 ]] && chown nobody "$conf/tmp"
  cat >"$conf/nginx.conf" <<EOF
# Written by scripts/stack.sh on every up.
pid $conf/nginx.pid;
error_log $conf/error.log warn;
events { worker_connections 1024; }
http {
  # Who called what: the account of each request (basic auth), for every write to the registry too.
  log_format skillops '\$remote_addr \$remote_user [\$time_local] "\$request" \$status \$body_bytes_sent';
  access_log $conf/access.log skillops;
  client_body_temp_path $conf/tmp/body; proxy_temp_path $conf/tmp/proxy;
  fastcgi_temp_path $conf/tmp/fastcgi; uwsgi_temp_path $conf/tmp/uwsgi; scgi_temp_path $conf/tmp/scgi;
  client_max_body_size 0;          # models and checkpoints are artifacts of any size
  proxy_request_buffering off;
  proxy_buffering off;
  proxy_read_timeout 3600s;        # the promotion authority scores a candidate before it answers
  # Floods, per address (wrong passwords have their own limit: skillops.stack.throttle).
  limit_req_zone \$binary_remote_addr zone=per_address:10m rate=50r/s;
  limit_req zone=per_address burst=500 nodelay;
  ssl_certificate $tls/server.crt;
  ssl_certificate_key $tls/server.key;
  ssl_protocols TLSv1.2 TLSv1.3;
  add_header Strict-Transport-Security "max-age=31536000" always;
  # The client's address, as nginx saw it, replacing any the client sent: the servers count wrong
  # passwords by it, and MLflow decides whether a caller is "local" by it.
  proxy_set_header X-Forwarded-For \$remote_addr;
  proxy_set_header X-Forwarded-Proto https;
  proxy_set_header Host \$http_host;
  map \$http_upgrade \$connection_upgrade { default upgrade; "" close; }
  server {
    listen $HOST:$MLFLOW_PORT ssl;
    # Only what skillops' clients and the MLflow UI use; everything else MLflow serves (its
    # assistant, jobs, demo generator, AI gateway, MCP, OTLP, prompts, traces, scorers, account
    # administration) is answered 404 here.
    location = / { proxy_pass http://127.0.0.1:$MLFLOW_BACKEND_PORT; }
    location /static-files/ { proxy_pass http://127.0.0.1:$MLFLOW_BACKEND_PORT; }
    # Health checks answer or fail within 2 s, also while a server waits on a stalled database.
    location = /health { proxy_pass http://127.0.0.1:$MLFLOW_BACKEND_PORT; proxy_connect_timeout 2s; proxy_read_timeout 2s; }
    location = /version { proxy_pass http://127.0.0.1:$MLFLOW_BACKEND_PORT; }
    location = /get-artifact { proxy_pass http://127.0.0.1:$MLFLOW_BACKEND_PORT; }
    location = /model-versions/get-artifact { proxy_pass http://127.0.0.1:$MLFLOW_BACKEND_PORT; }
    location ~ ^/(api|ajax-api)/2\.0/mlflow/(experiments|runs|metrics|artifacts|registered-models|model-versions|logged-models)(/|\$) {
      proxy_pass http://127.0.0.1:$MLFLOW_BACKEND_PORT;
    }
    location ~ ^/(api|ajax-api)/2\.0/mlflow-artifacts/artifacts(/|\$) { proxy_pass http://127.0.0.1:$MLFLOW_BACKEND_PORT; }
    location ~ ^/(api|ajax-api)/2\.0/mlflow/users/current\$ { proxy_pass http://127.0.0.1:$MLFLOW_BACKEND_PORT; }
    location ~ ^/(api|ajax-api)/3\.0/mlflow/users/current/permissions\$ { proxy_pass http://127.0.0.1:$MLFLOW_BACKEND_PORT; }
    # The promotion authority, and GraphQL (the UI's run pages) through its check that a request only reads.
    location /gate/ { proxy_pass http://127.0.0.1:$GATE_BACKEND_PORT; }
    location = /gate/silence { return 404; }  # Prefect's automation calls it on this machine
    location = /gate/health { proxy_pass http://127.0.0.1:$GATE_BACKEND_PORT; proxy_connect_timeout 2s; proxy_read_timeout 2s; }
    location = /graphql { proxy_pass http://127.0.0.1:$GATE_BACKEND_PORT; }
    location / { return 404; }
  }
  server {
    listen $HOST:$PREFECT_PORT ssl;
    location = /api/health { proxy_pass http://127.0.0.1:$PREFECT_BACKEND_PORT; proxy_connect_timeout 2s; proxy_read_timeout 2s; }
    location / {
      proxy_pass http://127.0.0.1:$PREFECT_BACKEND_PORT;
      proxy_http_version 1.1;  # Prefect's events and logs go over websockets
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
    }
  }
}
EOF
}

mlflow_auth_ini() {
  cat >"$STATE/mlflow-auth.ini" <<EOF
# Written by scripts/stack.sh: accounts of the tracking server (the MLflow basic-auth app).
[mlflow]
# Unknown users, and known users on what no role grants them, get nothing.
default_permission = NO_PERMISSIONS
database_uri = $(db_url postgresql mlflow_auth)
admin_username = admin
# MLflow's basic auth, plus a limit on wrong passwords per client address.
authorization_function = skillops.stack.throttle:authenticate
# A password is checked (a deliberately slow hash, ~0.3 s here) once per 5 minutes per process, not
# at every request: a model upload is a hundred requests. A changed or deleted account is dropped
# from the cache at once, which holds because the server runs one process.
auth_cache_ttl_seconds = 300
EOF
}

db_url() {  # scheme database: a server's own database through the socket folder, password in STATE/pgpass
  echo "$1://skillops_$2@/$2?host=$STATE/postgres-socket&port=$PG_PORT"
}

own_postgres() {
  PG_HOST=$HOST PG_NETWORK=${NETWORK:-$HOST/32} PG_REMOTE=optuna PG_TLS_DIR=$STATE/tls \
    scripts/postgres.sh up "$STATE" "$PG_PORT" prefect mlflow mlflow_auth optuna gate  # scripts/backup.sh takes them all
}

own_servers() {
  local names=("$HOST")
  IFS=, read -ra extra <<<"${HOST_NAMES:-}"
  names+=("${extra[@]}")
  scripts/tls.sh "$STATE/tls" "${names[@]}"
  export MLFLOW_TRACKING_SERVER_CERT_PATH=$STATE/tls/ca.crt PREFECT_API_SSL_CERT_FILE=$STATE/tls/ca.crt
  own_postgres
  local admin_password prefect_auth
  admin_password=$(secret mlflow-admin)
  prefect_auth=skillops:$(secret prefect-auth)
  # Exported for each server alone (a subshell): its own settings, read from the environment.
  (
    export PGPASSFILE=$STATE/pgpass
    PREFECT_SERVER_DATABASE_CONNECTION_URL=$(db_url postgresql+asyncpg prefect)
    export PREFECT_SERVER_DATABASE_CONNECTION_URL
    export PREFECT_SERVER_API_AUTH_STRING=$prefect_auth
    export PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED=true
    export PREFECT_SERVER_CORS_ALLOWED_ORIGINS=$PUBLIC_PREFECT
    export PREFECT_UI_API_URL=$PUBLIC_PREFECT/api PREFECT_UI_URL=$PUBLIC_PREFECT
    # Slots of the promotion lock outlive a restart of the server (in memory they would not).
    export PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE=prefect.server.concurrency.lease_storage.filesystem
    export PREFECT_HOME=$STATE/prefect-server
    start prefect-server "$VENV/bin/prefect" server start --host 127.0.0.1 --port "$PREFECT_BACKEND_PORT"
  )
  mkdir -p "$STATE/artifacts"
  mlflow_auth_ini
  # The public name, and 127.0.0.1 for this machine's own tools (accounts, webhooks, the authority).
  local allowed=$HOST:$MLFLOW_PORT,127.0.0.1:$MLFLOW_BACKEND_PORT name
  for name in "${extra[@]}"; do allowed+=",$name:$MLFLOW_PORT"; done
  (
    export PGPASSFILE=$STATE/pgpass MLFLOW_AUTH_CONFIG_PATH=$STATE/mlflow-auth.ini
    export MLFLOW_AUTH_ADMIN_USERNAME=admin MLFLOW_AUTH_ADMIN_PASSWORD=$admin_password
    # A stable key: sessions and CSRF tokens hold across restarts of the server.
    MLFLOW_FLASK_SERVER_SECRET_KEY=$(secret mlflow-secret-key)
    export MLFLOW_FLASK_SERVER_SECRET_KEY
    # Only a role with the workspace's USE (the pipeline's) may create experiments and models.
    export MLFLOW_ENABLE_WORKSPACES=true
    # Webhooks (champion moves, WEBHOOK_URL): their secrets are stored encrypted with this key, and
    # receivers are on the team's own network. http only when WEBHOOK_URL says so (a receiver on
    # loopback): the server's webhook client ignores REQUESTS_CA_BUNDLE, so a receiver behind the
    # stack's own CA cannot be verified.
    MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY=$(secret webhook-encryption-key fernet_key)
    export MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true
    [[ ${WEBHOOK_URL:-} == http://* ]] && export MLFLOW_WEBHOOK_ALLOWED_SCHEMES=https,http
    # MLflow 3.17 runs server-side jobs (scorers, prompt optimisation) in seven huey consumers by
    # default: skillops queues none, nginx refuses the jobs routes, and they take memory and cores.
    export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
    start mlflow-server "$VENV/bin/mlflow" server --app-name basic-auth \
      --backend-store-uri "$(db_url postgresql mlflow)" \
      --artifacts-destination "file://$STATE/artifacts" --host 127.0.0.1 --port "$MLFLOW_BACKEND_PORT" --workers 1 \
      --allowed-hosts "$allowed" --cors-allowed-origins "$PUBLIC_MLFLOW"
  )
  nginx_conf
  # A running nginx reads its configuration and certificate again (a renewed one), without a gap.
  running nginx && nginx -c "$STATE/nginx/nginx.conf" -p "$STATE/nginx" -s reload
  start nginx nginx -c "$STATE/nginx/nginx.conf" -p "$STATE/nginx" -g "daemon off;"
  wait_for "$PUBLIC_PREFECT/api/health" prefect-server
  wait_for "$PUBLIC_MLFLOW/health" mlflow-server
  cat >"$STATE/stack.json" <<EOF
{"host": "$HOST", "prefect_api_url": "$PUBLIC_PREFECT/api", "mlflow_tracking_uri": "$PUBLIC_MLFLOW",
 "mlflow_backend_uri": "http://127.0.0.1:$MLFLOW_BACKEND_PORT",
 "optuna_storage": "postgresql://skillops_optuna@$HOST:$PG_PORT/optuna?sslmode=verify-full", "pg_port": $PG_PORT}
EOF
  # The roles, the stack owner's account (admin), the promotion authority's account and this
  # machine's worker account.
  MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=$admin_password \
    "$VENV/bin/skillops" users setup --stack-dir "$STATE" | sed "/^Roles /d"  # says if folders were rewritten
  (
    # The authority's account and database password reach it through its environment and PGPASSFILE.
    export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_BACKEND_PORT MLFLOW_TRACKING_USERNAME=skillops-gate
    MLFLOW_TRACKING_PASSWORD=$(cat "$STATE/secrets/gate-account")
    export MLFLOW_TRACKING_PASSWORD PGPASSFILE=$STATE/pgpass
    SKILLOPS_GATE_DATABASE=$(db_url postgresql+psycopg gate)
    export SKILLOPS_GATE_DATABASE
    export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false  # its log: one line a decision, not bars
    unset MLFLOW_TRACKING_SERVER_CERT_PATH SKILLOPS_GATE_URL
    secret silence-webhook >/dev/null  # Prefect's heartbeat automation calls the service with it
    start gate "$VENV/bin/python" -m skillops.gate.service --port "$GATE_BACKEND_PORT" --workdir "$STATE/gate" \
      --prefect-api "http://127.0.0.1:$PREFECT_BACKEND_PORT/api" --secrets "$STATE/secrets"
  )
  wait_for "$PUBLIC_MLFLOW/gate/health" gate
  if [[ -n ${WEBHOOK_URL:-} ]]; then
    secret webhook >/dev/null
    # Straight to the tracking server: its webhook routes are not among those nginx forwards.
    MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_BACKEND_PORT MLFLOW_TRACKING_USERNAME=admin \
      MLFLOW_TRACKING_PASSWORD=$admin_password \
      "$VENV/bin/skillops" webhooks add --url "$WEBHOOK_URL" --secret-file "$STATE/secrets/webhook"
  fi
  local worker_account=worker-$(hostname)
  [[ -f $STATE/accounts/$worker_account/env ]] || \
    MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=$admin_password \
      "$VENV/bin/skillops" users add "$worker_account" --role pipeline --stack-dir "$STATE" >/dev/null
  # shellcheck source=/dev/null
  source "$STATE/accounts/$worker_account/env"  # this machine's worker runs as that account
  STACK_CA=$STATE/tls/ca.crt
}

# --- upgrade -----------------------------------------------------------------------------------

# After `git pull && make install` on the server machine: a backup of the running stack first, then
# every database migrated to this checkout's pins, each step named, then the stack started again.
upgrade() {
  [[ -n $TEAM && -n $OWN_PREFECT && -n $OWN_MLFLOW ]] || { echo "upgrade runs on a team stack's server machine: TEAM=1" >&2; exit 2; }
  running mlflow-server || { echo "The stack is not running: start it (make stack-up TEAM=1) so that upgrade can back it up first." >&2; exit 2; }
  local backup
  backup=${BACKUP_DIR:-$STATE/backups}/before-upgrade-$(date -u +%Y%m%dT%H%M%SZ)
  scripts/backup.sh save "$STATE" "$backup"
  down
  own_postgres
  migrate() {  # what, command...
    local what=$1; shift
    if ! PGPASSFILE=$STATE/pgpass "$@" >"$STATE/upgrade-$what.log" 2>&1; then
      tail -20 "$STATE/upgrade-$what.log" >&2
      echo "The $what migration failed (log: $STATE/upgrade-$what.log); the stack is stopped, nothing was started." >&2
      echo "The stack as it was before is backed up in $backup: reinstall the skillops it ran (its manifest.json names the commit; git checkout it, make install) and restore it into a new folder: STACK_DIR=<new folder> make stack-restore FROM=$backup HOST=$HOST" >&2
      scripts/postgres.sh down "$STATE" >/dev/null
      exit 1
    fi
    echo "$what: migrated ($(tail -1 "$STATE/upgrade-$what.log"))"
  }
  migrate mlflow-tracking "$VENV/bin/mlflow" db upgrade "$(db_url postgresql mlflow)"
  migrate mlflow-accounts "$VENV/bin/python" -m mlflow.server.auth db upgrade --url "$(db_url postgresql mlflow_auth)"
  migrate prefect env PREFECT_SERVER_DATABASE_CONNECTION_URL="$(db_url postgresql+asyncpg prefect)" PREFECT_HOME="$STATE/prefect-server" \
    "$VENV/bin/prefect" --no-prompt server database upgrade --yes
  migrate optuna "$VENV/bin/python" -c 'import sys; from skillops.training.tuning import upgrade_storage; print(upgrade_storage(sys.argv[1]))' \
    "$(db_url postgresql+psycopg optuna)"
  up
}

# --- up / down / status ------------------------------------------------------------------------

up() {
  mkdir -p mlruns
  if [[ -n $TEAM && -n $OWN_PREFECT && -n $OWN_MLFLOW ]]; then
    own_servers
  elif [[ -n $TEAM && ( -n $OWN_PREFECT || -n $OWN_MLFLOW ) ]]; then
    echo "Give both servers' URLs (PREFECT_API_URL and MLFLOW_TRACKING_URI) to join a team stack, or neither to run one." >&2
    exit 2
  elif [[ -z $TEAM && -n $OWN_PREFECT ]]; then
    start prefect-server "$VENV/bin/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
    wait_for "${PREFECT_API_URL%/}/health" prefect-server
  fi
  if [[ -n $TEAM && -z ${MLFLOW_TRACKING_USERNAME:-} ]]; then
    echo "The team stack at $MLFLOW_TRACKING_URI needs an account: source the env file that \`skillops users add\` made for this machine." >&2
    exit 2
  fi
  local template=()
  if [[ -n $TEAM ]]; then
    # No job variable of a flow run may set the command, the environment or the working folder
    # (and flows/worker.py refuses a run that does, whatever the template says later).
    "$VENV/bin/python" flows/worker.py --job-template >"$STATE/pool-template.json"
    template=(--base-job-template "$STATE/pool-template.json")
  fi
  if ! "$VENV/bin/prefect" work-pool inspect skillops >/dev/null 2>&1; then
    "$VENV/bin/prefect" work-pool create skillops --type process "${template[@]}" >/dev/null
  elif [[ -n $TEAM ]]; then
    "$VENV/bin/prefect" work-pool update skillops "${template[@]}" >/dev/null
  fi
  if [[ -n $TEAM ]]; then
    # Machines share the pool; each worker takes one flow run at a time (one training per GPU).
    "$VENV/bin/prefect" work-pool clear-concurrency-limit skillops >/dev/null
    prefect_file=prefect.team.yaml
    worker=("$VENV/bin/python" flows/worker.py --pool skillops --limit "${WORKER_LIMIT:-1}")
  else
    # One flow run at a time on this machine: a second scheduled or manual run waits its turn.
    "$VENV/bin/prefect" work-pool set-concurrency-limit skillops 1 >/dev/null
    prefect_file=prefect.yaml
    worker=("$VENV/bin/prefect" worker start --pool skillops)
  fi
  "$VENV/bin/prefect" --no-prompt deploy --all --prefect-file "$prefect_file" >"$STATE/deploy.log" 2>&1 || { cat "$STATE/deploy.log"; exit 1; }
  local judge=()
  # On a stack of its own, the promotion authority's service judges a silent flow run before it is
  # marked CRASHED (skillops.stack.silence): a stalled database delays heartbeats, it loses none.
  if [[ -n $TEAM && -n $OWN_PREFECT ]]; then
    judge=(--judge "http://127.0.0.1:$GATE_BACKEND_PORT/gate/silence" "$STATE/secrets/silence-webhook")
  fi
  "$VENV/bin/python" flows/orchestration.py watch-heartbeats "${judge[@]}"
  start worker "${worker[@]}"
  if [[ $MLFLOW_TRACKING_URI != http* ]]; then
    start mlflow-ui "$VENV/bin/mlflow" ui --backend-store-uri "$MLFLOW_TRACKING_URI" --host 127.0.0.1 --port "$MLFLOW_PORT"
    wait_for "http://127.0.0.1:${MLFLOW_PORT}/health" mlflow-ui
    ui=http://127.0.0.1:${MLFLOW_PORT}
  else
    ui=${MLFLOW_TRACKING_URI%/}  # a tracking server is its own UI
  fi
  write_env
  echo
  echo "Prefect UI:  ${PREFECT_API_URL%/api}   (deployments: $(grep -c '^  - name:' "$prefect_file") in $prefect_file)"
  echo "MLflow UI:   $ui"
  [[ -n $TEAM ]] && echo "TLS:         clients verify with ${STACK_CA:-${MLFLOW_TRACKING_SERVER_CERT_PATH:-the system CA store}}"
  [[ -n $TEAM && -d $STATE/accounts ]] && echo "Accounts:    skillops users add NAME --role reader|maintainer|pipeline --stack-dir $STATE"
  echo "In another shell: source $STATE/env"
}

write_env() {  # what every shell of this machine needs to use this stack: addresses, never a secret
  {
    echo "export PREFECT_API_URL=$PREFECT_API_URL"
    if [[ -n $TEAM ]]; then
      echo "export MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI"
      local ca=${STACK_CA:-${MLFLOW_TRACKING_SERVER_CERT_PATH:-}}
      [[ -n $ca ]] && echo "export MLFLOW_TRACKING_SERVER_CERT_PATH=$ca PREFECT_API_SSL_CERT_FILE=$ca PGSSLROOTCERT=$ca"
      [[ -n ${SKILLOPS_OPTUNA_STORAGE:-} ]] && echo "export SKILLOPS_OPTUNA_STORAGE='$SKILLOPS_OPTUNA_STORAGE'"
      echo "export SKILLOPS_GATE_URL=${SKILLOPS_GATE_URL:-${MLFLOW_TRACKING_URI%/}/gate}"
      # The account: a credentials file (mode 600) read when this file is sourced; the stack owner's by default.
      local credentials=${SKILLOPS_CREDENTIALS:-$STATE/accounts/admin/credentials}
      echo "set -a; . \"\${SKILLOPS_CREDENTIALS:-$credentials}\"; set +a"
    fi
  } >"$STATE/env"
}

down() {
  for name in "${SERVICES[@]}"; do
    if running "$name"; then
      pid=$(cat "$STATE/$name.pid")
      kill -TERM -- "-$pid" 2>/dev/null || true
      for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -KILL -- "-$pid" 2>/dev/null || true
      echo "$name stopped"
    fi
    rm -f "$STATE/$name.pid"
  done
  scripts/postgres.sh down "$STATE"
}

status() {
  for name in "${SERVICES[@]}"; do
    if running "$name"; then echo "$name: running (pid $(cat "$STATE/$name.pid"))"; else echo "$name: stopped"; fi
  done
  [[ -f $STATE/postgres/postmaster.pid ]] && echo "postgresql: running (data $STATE/postgres)" || true
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  upgrade) upgrade ;;
  renew-cert)
    [[ -n $TEAM && -f $STATE/tls/ca.key ]] || { echo "renew-cert is for a team stack whose CA this machine made: TEAM=1" >&2; exit 2; }
    rm -f "$STATE/tls/server.crt" "$STATE/tls/server.names"  # scripts/tls.sh makes a new one in `up`
    up ;;
  backup) scripts/backup.sh save "$STATE" "${2:?usage: $0 backup DEST}" ;;
  restore)
    [[ -n $TEAM ]] || { echo "restore is for a team stack: TEAM=1, with this machine's HOST" >&2; exit 2; }
    scripts/backup.sh restore "${2:?usage: TEAM=1 HOST=address $0 restore BACKUP}" "$STATE"
    up ;;
  *) echo "usage: [TEAM=1] [HOST=address] $0 up|down|status|backup DEST|restore BACKUP|renew-cert|upgrade"; exit 2 ;;
esac
