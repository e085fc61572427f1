#!/usr/bin/env bash
# The skillops stack on 127.0.0.1.
#
#   scripts/stack.sh up      start everything (idempotent), print the addresses
#   scripts/stack.sh down    stop everything this script started
#   scripts/stack.sh status  what is running
#
# One machine (the default): a Prefect server, a process worker on the `skillops` pool (one flow
# run at a time: one training per GPU), the deployments of prefect.yaml, and the MLflow UI on the
# sqlite store under mlruns/ (MLFLOW_TRACKING_URI for another store).
#
# A team (TEAM=1): PostgreSQL (Debian's package, data under the state folder), a Prefect server and
# an MLflow tracking server (artifact proxying) on it, the pool, the deployments of
# prefect.team.yaml (workers clone the code from SKILLOPS_GIT_URL at SKILLOPS_GIT_REF) and a
# worker. Servers someone else runs are used, not started: give PREFECT_API_URL and an http(s)
# MLFLOW_TRACKING_URI, and `up` only deploys and starts this machine's worker. The database
# password (scripts/postgres.sh) reaches the servers through a .pgpass file (PGPASSFILE), never a
# command line.
#
# Logs, process ids and PostgreSQL's data live in .stack/ (git-ignored; STACK_DIR elsewhere).
# Ports: PREFECT_PORT (4200), MLFLOW_PORT (5000), PG_PORT (5433).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
STATE=$(mkdir -p "${STACK_DIR:-.stack}" && cd "${STACK_DIR:-.stack}" && pwd)
TEAM=${TEAM:-}
PREFECT_PORT=${PREFECT_PORT:-4200}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
PG_PORT=${PG_PORT:-5433}
DB_USER=skillops
export PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_ENABLE_TELEMETRY=false HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

# Which servers this machine runs: none that the caller already names.
OWN_PREFECT=1; [[ -n ${PREFECT_API_URL:-} ]] && OWN_PREFECT=
export PREFECT_API_URL=${PREFECT_API_URL:-http://127.0.0.1:${PREFECT_PORT}/api}
if [[ -n $TEAM ]]; then
  OWN_MLFLOW=1; [[ ${MLFLOW_TRACKING_URI:-} == http* ]] && OWN_MLFLOW=
  export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-http://127.0.0.1:${MLFLOW_PORT}}
  # Flow runs start in a fresh folder of their own: checkpoints outlive them here.
  export SKILLOPS_OUTPUTS_DIR=${SKILLOPS_OUTPUTS_DIR:-$STATE/outputs}
else
  export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlruns/mlflow.db}
fi
SERVICES=(mlflow-ui mlflow-server worker prefect-server)  # in the order `down` stops them

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
  for _ in $(seq 1 180); do
    if curl -fsS "$1" >/dev/null 2>&1; then return 0; fi
    if [[ -f $STATE/$2.pid ]] && ! running "$2"; then
      echo "$2 exited; last lines of $STATE/$2.log:"; tail -20 "$STATE/$2.log"; exit 1
    fi
    sleep 1
  done
  echo "$2 did not answer at $1 within 180 s"; exit 1
}

# --- up / down / status ------------------------------------------------------------------------

up() {
  mkdir -p mlruns
  if [[ -n $TEAM && ( -n $OWN_PREFECT || -n $OWN_MLFLOW ) ]]; then
    scripts/postgres.sh up "$STATE" "$PG_PORT" prefect mlflow optuna
    export PGPASSFILE=$STATE/pgpass
  fi
  if [[ -n $OWN_PREFECT ]]; then
    if [[ -n $TEAM ]]; then
      # The database's address without its password; asyncpg reads the password from PGPASSFILE.
      export PREFECT_SERVER_DATABASE_CONNECTION_URL="postgresql+asyncpg://$DB_USER@127.0.0.1:$PG_PORT/prefect"
    fi
    start prefect-server "$VENV/bin/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
    unset PREFECT_SERVER_DATABASE_CONNECTION_URL
  fi
  wait_for "${PREFECT_API_URL%/}/health" prefect-server
  if [[ -n $TEAM && -n $OWN_MLFLOW ]]; then
    mkdir -p "$STATE/artifacts"
    start mlflow-server "$VENV/bin/mlflow" server --backend-store-uri "postgresql://$DB_USER@127.0.0.1:$PG_PORT/mlflow" \
      --artifacts-destination "file://$STATE/artifacts" --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 2
    wait_for "${MLFLOW_TRACKING_URI%/}/health" mlflow-server
  fi
  if [[ -n $TEAM && -n ${PGPASSFILE:-} && -z ${SKILLOPS_OPTUNA_STORAGE:-} ]]; then
    # This machine's worker keeps PGPASSFILE: its flow runs share tuning studies in PostgreSQL
    # (search.workers: pool needs that; the password stays in the file).
    export SKILLOPS_OPTUNA_STORAGE="postgresql://$DB_USER@127.0.0.1:$PG_PORT/optuna"
  else
    unset PGPASSFILE
  fi
  if ! "$VENV/bin/prefect" work-pool inspect skillops >/dev/null 2>&1; then
    "$VENV/bin/prefect" work-pool create skillops --type process >/dev/null
  fi
  if [[ -n $TEAM ]]; then
    # Machines share the pool; each worker takes one flow run at a time (one training per GPU).
    "$VENV/bin/prefect" work-pool clear-concurrency-limit skillops >/dev/null
    export SKILLOPS_GIT_URL=${SKILLOPS_GIT_URL:-$(git remote get-url origin 2>/dev/null || echo "file://$PWD")}
    export SKILLOPS_GIT_REF=${SKILLOPS_GIT_REF:-$(git rev-parse --abbrev-ref HEAD)}
    prefect_file=prefect.team.yaml
    worker_limit=(--limit "${WORKER_LIMIT:-1}")
  else
    # One flow run at a time on this machine: a second scheduled or manual run waits its turn.
    "$VENV/bin/prefect" work-pool set-concurrency-limit skillops 1 >/dev/null
    prefect_file=prefect.yaml worker_limit=()
  fi
  "$VENV/bin/prefect" --no-prompt deploy --all --prefect-file "$prefect_file" >"$STATE/deploy.log" 2>&1 || { cat "$STATE/deploy.log"; exit 1; }
  start worker "$VENV/bin/prefect" worker start --pool skillops "${worker_limit[@]}"
  if [[ $MLFLOW_TRACKING_URI != http* ]]; then
    start mlflow-ui "$VENV/bin/mlflow" ui --backend-store-uri "$MLFLOW_TRACKING_URI" --host 127.0.0.1 --port "$MLFLOW_PORT"
    wait_for "http://127.0.0.1:${MLFLOW_PORT}/health" mlflow-ui
    ui=http://127.0.0.1:${MLFLOW_PORT}
  else
    ui=${MLFLOW_TRACKING_URI%/}  # a tracking server is its own UI
  fi
  # What every shell (and every other machine) needs to use this stack; no password in it.
  echo "export PREFECT_API_URL=$PREFECT_API_URL" >"$STATE/env"
  [[ -n $TEAM ]] && echo "export MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI" >>"$STATE/env"
  [[ -n ${SKILLOPS_OPTUNA_STORAGE:-} ]] && echo "export SKILLOPS_OPTUNA_STORAGE=$SKILLOPS_OPTUNA_STORAGE" >>"$STATE/env"
  echo
  echo "Prefect UI:  ${PREFECT_API_URL%/api}   (deployments: $(grep -c '^  - name:' "$prefect_file") in $prefect_file)"
  echo "MLflow UI:   $ui"
  echo "In another shell: source $STATE/env"
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
  *) echo "usage: [TEAM=1] $0 up|down|status"; exit 2 ;;
esac
