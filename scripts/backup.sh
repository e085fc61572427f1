#!/usr/bin/env bash
# A team stack's backup, taken while it runs, and its restore on a new server machine.
#
#   scripts/backup.sh save STATE DEST        DEST (a new folder) gets the backup of the stack in STATE
#   scripts/backup.sh restore BACKUP STATE   lays a backup out in a new state folder; `stack.sh up` starts it
#
# `make stack-backup TO=DEST` and `make stack-restore FROM=BACKUP` (scripts/stack.sh backup|restore)
# call these with the stack's own settings, and the restore then starts the stack.
#
# A backup is four files:
#   databases.tar.gz  every database of the stack at one instant (PostgreSQL's snapshot): Prefect's
#                     (deployments, schedules, flow runs, automations), MLflow's runs and registry,
#                     its accounts and their roles, the Optuna studies, the promotion authority's
#                     record of policies and moves
#   files.tar         the artifact store (models, checkpoints, reports, score caches) and the Prefect
#                     server's lease files, copied after the snapshot: everything it names is there
#   manifest.json     when, from which stack, at which versions, how big, how long it took
#   secrets/stack-secrets.tar (mode 600) the CA and its key, the server certificate and key, every
#                     password and the account folders. Whoever holds it holds the stack: keep it
#                     apart from the rest (a vault, another medium) and give its path to the restore
#                     as SECRETS=... when it is not in BACKUP/secrets.
set -euo pipefail
cd "$(dirname "$0")/.."
umask 077

VENV=${VENV:-.venv}
SECRET_FOLDERS=(secrets tls accounts)  # what stack-secrets.tar holds, relative to STATE

seconds_since() { awk -v began="$1" -v now="$(date +%s.%N)" 'BEGIN { printf "%.1f", now - began }'; }
size() { du -sh "$1" | cut -f1; }
json_field() { "$VENV/bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

save() {
  local state=$1 dest=$2 began
  began=$(date +%s.%N)
  [[ -f $state/stack.json ]] || { echo "$state is not a team stack's state folder (no stack.json)" >&2; exit 2; }
  if [[ -e $dest && -n $(ls -A "$dest" 2>/dev/null) ]]; then
    echo "$dest is not empty: give a new folder for the backup" >&2
    exit 2
  fi
  mkdir -p "$dest/secrets"
  chmod 700 "$dest" "$dest/secrets"
  local port
  port=$(json_field "$state/stack.json" pg_port)
  if ! scripts/postgres.sh snapshot "$state" "$port" 2>"$dest/snapshot.log" | gzip -1 >"$dest/databases.tar.gz"; then
    echo "the databases' snapshot failed:" >&2
    cat "$dest/snapshot.log" >&2
    exit 1
  fi
  rm "$dest/snapshot.log"
  local databases_done
  databases_done=$(seconds_since "$began")
  # Files written while tar reads them (a checkpoint being mirrored) are taken as they are: the
  # databases name only what was there before the snapshot. GNU tar exits 1 for such a file.
  local folders=(artifacts) status=0
  [[ -d $state/prefect-server ]] && folders+=(prefect-server)
  tar -C "$state" --warning=no-file-changed -cf "$dest/files.tar" "${folders[@]}" || status=$?
  ((status <= 1)) || { echo "copying the artifact store failed (tar exit $status)" >&2; exit 1; }
  tar -C "$state" -cf "$dest/secrets/stack-secrets.tar" "${SECRET_FOLDERS[@]}"
  chmod 600 "$dest/secrets/stack-secrets.tar"
  "$VENV/bin/python" - "$state" "$dest" "$databases_done" "$(seconds_since "$began")" <<'EOF'
import json, subprocess, sys
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

state, dest = Path(sys.argv[1]), Path(sys.argv[2])
stack = json.loads((state / "stack.json").read_text())
commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
manifest = {
    "made": datetime.now(UTC).isoformat(timespec="seconds"),
    "stack": {key: stack[key] for key in ("host", "mlflow_tracking_uri", "prefect_api_url")},
    "skillops_commit": commit or None,
    "versions": {name: version(name) for name in ("skillops", "mlflow", "prefect", "optuna")},
    "postgresql": (state / "postgres" / "PG_VERSION").read_text().strip(),
    "bytes": {path.name: path.stat().st_size for path in (dest / "databases.tar.gz", dest / "files.tar")},
    "seconds": {"databases": float(sys.argv[3]), "total": float(sys.argv[4])},
}
(dest / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
EOF
  echo "backup of $state in $dest ($(seconds_since "$began") s): databases $(size "$dest/databases.tar.gz"), files $(size "$dest/files.tar")"
  echo "Keep $dest/secrets/stack-secrets.tar apart from the rest: it holds the CA's key and every password."
}

restore() {
  local backup=$1 state=$2 secrets=${SECRETS:-$1/secrets/stack-secrets.tar}
  for file in "$backup/manifest.json" "$backup/databases.tar.gz" "$backup/files.tar" "$secrets"; do
    [[ -f $file ]] || { echo "$file is missing: BACKUP must be a folder that \`make stack-backup\` wrote (SECRETS=path where its secrets are kept apart)" >&2; exit 2; }
  done
  local made installed
  made=$(json_field "$backup/manifest.json" postgresql)
  installed=$(scripts/postgres.sh major)
  if [[ $made != "$installed" ]]; then
    echo "The backup's databases are PostgreSQL $made's; this machine has PostgreSQL $installed. Restore on a machine with PostgreSQL $made (a snapshot is not portable across major versions)." >&2
    exit 2
  fi
  if [[ -f $state/stack.json || -f $state/postgres/PG_VERSION ]]; then
    echo "$state already holds a stack: restore into a new state folder (STACK_DIR), never over a running one" >&2
    exit 2
  fi
  mkdir -p "$state"
  tar -C "$state" -xf "$secrets"
  gzip -dc "$backup/databases.tar.gz" | scripts/postgres.sh unpack "$state"
  tar -C "$state" -xf "$backup/files.tar"
  echo "restored $backup (made $(json_field "$backup/manifest.json" made)) into $state"
}

case "${1:-}" in
  save) [[ $# -eq 3 ]] || { echo "usage: $0 save STATE DEST"; exit 2; }; save "$(cd "$2" && pwd)" "$3" ;;
  restore) [[ $# -eq 3 ]] || { echo "usage: $0 restore BACKUP STATE"; exit 2; }; restore "$2" "$3" ;;
  *) echo "usage: $0 save STATE DEST | restore BACKUP STATE"; exit 2 ;;
esac
