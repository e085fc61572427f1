#!/usr/bin/env bash
# The local skillops stack on 127.0.0.1: a Prefect server, a process worker on the `skillops` pool
# (one flow run at a time: one training per GPU), the deployments of prefect.yaml, and the MLflow UI.
#
#   scripts/stack.sh up      start everything (idempotent), print the addresses
#   scripts/stack.sh down    stop everything this script started
#   scripts/stack.sh status  what is running
#
# Logs and process ids live in .stack/ (git-ignored; STACK_DIR elsewhere). Ports: PREFECT_PORT (4200),
# MLFLOW_PORT (5000). The store: MLFLOW_TRACKING_URI, default sqlite under mlruns/ as for `make train`.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
STATE=${STACK_DIR:-.stack}
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlruns/mlflow.db}
PREFECT_PORT=${PREFECT_PORT:-4200}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
export PREFECT_API_URL="http://127.0.0.1:${PREFECT_PORT}/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
export SKILLOPS_MLFLOW_UI="http://127.0.0.1:${MLFLOW_PORT}"

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
  for _ in $(seq 1 120); do
    if curl -fsS "$1" >/dev/null 2>&1; then return 0; fi
    running "$2" || { echo "$2 exited; last lines of $STATE/$2.log:"; tail -20 "$STATE/$2.log"; exit 1; }
    sleep 1
  done
  echo "$2 did not answer at $1 within 120 s"; exit 1
}

up() {
  mkdir -p "$STATE" mlruns
  start prefect-server "$VENV/bin/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
  wait_for "http://127.0.0.1:${PREFECT_PORT}/api/health" prefect-server
  if ! "$VENV/bin/prefect" work-pool inspect skillops >/dev/null 2>&1; then
    "$VENV/bin/prefect" work-pool create skillops --type process >/dev/null
  fi
  # One flow run at a time on this machine: a second scheduled or manual run waits its turn.
  "$VENV/bin/prefect" work-pool set-concurrency-limit skillops 1 >/dev/null
  "$VENV/bin/prefect" --no-prompt deploy --all >"$STATE/deploy.log" 2>&1 || { cat "$STATE/deploy.log"; exit 1; }
  start worker "$VENV/bin/prefect" worker start --pool skillops
  start mlflow-ui "$VENV/bin/mlflow" ui --backend-store-uri "$MLFLOW_TRACKING_URI" --host 127.0.0.1 --port "$MLFLOW_PORT"
  wait_for "http://127.0.0.1:${MLFLOW_PORT}/health" mlflow-ui
  echo
  echo "Prefect UI:  http://127.0.0.1:${PREFECT_PORT}   (deployments: $(grep -c '^  - name:' prefect.yaml) in prefect.yaml)"
  echo "MLflow UI:   http://127.0.0.1:${MLFLOW_PORT}"
  echo "In another shell: export PREFECT_API_URL=$PREFECT_API_URL"
}

down() {
  for name in mlflow-ui worker prefect-server; do
    if running "$name"; then
      pid=$(cat "$STATE/$name.pid")
      kill -TERM -- "-$pid" 2>/dev/null || true
      for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -KILL -- "-$pid" 2>/dev/null || true
      echo "$name stopped"
    fi
    rm -f "$STATE/$name.pid"
  done
}

status() {
  for name in prefect-server worker mlflow-ui; do
    if running "$name"; then echo "$name: running (pid $(cat "$STATE/$name.pid"))"; else echo "$name: stopped"; fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status"; exit 2 ;;
esac
