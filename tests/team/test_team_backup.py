"""The team stack backed up while it runs, and restored on a new server machine (another folder,
another address): the same champion serves the same vectors, and the history, the policy and its
record, the Optuna studies, the schedules and the accounts are as they were. A renewed server
certificate from the same CA needs nothing new on the clients."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import stat
import tempfile
import time
from pathlib import Path

import numpy as np

from helpers import BIN, free_port, wait_until
from teamstack import HOST, Machine, call, prefect

NEW_HOST = "127.0.0.3"  # the new server machine's address
TEXTS = ["data analyst", "manage a team of nurses", "write Python code", "операции с данни"]
VECTORS = f"""
import json, mlflow
model = mlflow.pyfunc.load_model("models:/{{name}}@champion")
print(json.dumps([list(map(float, row)) for row in model.predict({TEXTS!r})]))
"""
STUDY = """
import json, os, optuna
from skillops.training import tuning
storage = tuning.open_storage(os.environ["SKILLOPS_OPTUNA_STORAGE"])
if os.environ.get("MAKE_STUDY"):
    study = optuna.create_study(study_name="kept-by-the-backup", storage=storage)
    for value in (0.25, 0.5):
        study.tell(study.ask(), value)
found = optuna.load_study(study_name="kept-by-the-backup", storage=storage)
print(json.dumps([(t.number, t.state.name, t.value) for t in found.get_trials()]))
"""


def _schedule(env: dict) -> tuple[list, list[str]]:
    """The weekly deployment's schedules, and the times of the runs its scheduler has queued."""
    weekly = prefect(env, "/deployments/name/train-esco/weekly")
    scheduled = prefect(
        env,
        "/flow_runs/filter",
        {"flow_runs": {"deployment_id": {"any_": [weekly["id"]]}, "state": {"type": {"any_": ["SCHEDULED"]}}}},
    )
    return [(s["schedule"], s["active"]) for s in weekly["schedules"]], sorted(
        r["expected_start_time"] for r in scheduled
    )


def _what_users_see(machine: Machine, env: dict, reader: dict, name: str, recipe: Path, mlflow_url: str, ca) -> dict:
    """Everything the restore must keep, read as the accounts read it, from `machine`."""
    gate = call(
        f"{mlflow_url}/gate/models/{name}",
        ca,
        user=f"{reader['MLFLOW_TRACKING_USERNAME']}:{reader['MLFLOW_TRACKING_PASSWORD']}",
    )
    assert gate[0] == 200, gate
    return {
        "vectors": json.loads(machine.run(BIN / "python", "-c", VECTORS.format(name=name), env=reader).stdout),
        "history": machine.run(BIN / "skillops", "history", recipe, env=reader).stdout,
        "policy": machine.run(BIN / "skillops", "policy", recipe, env=reader).stdout,
        "record": json.loads(gate[1]),
        "study": json.loads(machine.run(BIN / "python", "-c", STUDY, env=env).stdout),
        "schedules": _schedule(env)[0],
    }


def test_a_backup_restored_on_a_new_server_serves_the_same_champion(team, served):
    recipe = team.recipe(served)
    made = team.b.run(BIN / "python", "-c", STUDY, env={**team.accounts["worker-b"], "MAKE_STUDY": "1"})
    assert [state for _, state, _ in json.loads(made.stdout)] == ["COMPLETE", "COMPLETE"]
    before = _what_users_see(
        team.b, team.accounts["worker-b"], team.accounts["reader-b"], served, recipe, team.mlflow_url, team.ca
    )
    queued = _schedule(team.accounts["worker-b"])[1]
    assert queued  # the weekly schedule has runs waiting
    users_before = team.a.run(
        BIN / "skillops", "users", "list", "--stack-dir", team.servers, env=team.accounts["admin"]
    ).stdout
    assert before["history"].count("promotion") == 1 and len(before["vectors"]) == len(TEXTS)

    # Outside pytest's private tmp folder: PostgreSQL runs as the `postgres` user, who must enter it.
    elsewhere = Path(tempfile.mkdtemp(prefix="skillops-restore-"))
    elsewhere.chmod(0o711)
    backup, restored = elsewhere / "backup", elsewhere / "stack"
    new = Machine(team.tmp / "machine-c", team.tmp / "team-repository", team.transcript)
    new_stack = {
        **team.stack,
        "HOST": NEW_HOST,
        "STACK_DIR": str(restored),
        "WEBHOOK_URL": None,  # the receiver stays with the old machine
        **{name: str(free_port()) for name in team.ports},
    }
    try:
        saved = team.a.run("scripts/stack.sh", "backup", backup, env=team.stack)  # the stack keeps running
        assert f"backup of {team.servers} in {backup}" in saved.stdout
        secrets = backup / "secrets" / "stack-secrets.tar"
        assert stat.S_IMODE(secrets.stat().st_mode) == 0o600 and stat.S_IMODE(backup.stat().st_mode) == 0o700
        manifest = json.loads((backup / "manifest.json").read_text())
        assert manifest["seconds"]["total"] > 0 and manifest["bytes"]["databases.tar.gz"] > 0
        assert manifest["versions"]["mlflow"] and manifest["postgresql"]

        began = time.monotonic()
        up = new.run("scripts/stack.sh", "restore", backup, env=new_stack, timeout=600)
        # The docs' figures (pytest -s prints them).
        print(f"backup: {manifest['seconds']} s, {manifest['bytes']} bytes; restore: {time.monotonic() - began:.0f} s")
        assert f"restored {backup}" in up.stdout and f"postgresql running on {NEW_HOST} port" in up.stdout
        # The accounts' folders now name the new address; their passwords are those of the backup.
        assert "copy each to its machine again" in up.stdout
        accounts = {name: new.account(restored / "accounts" / name) for name in ("reader-b", "worker-b")}
        new_url = f"https://{NEW_HOST}:{new_stack['MLFLOW_PORT']}"
        assert accounts["reader-b"]["MLFLOW_TRACKING_URI"] == new_url
        assert accounts["reader-b"]["MLFLOW_TRACKING_PASSWORD"] == team.accounts["reader-b"]["MLFLOW_TRACKING_PASSWORD"]
        # The same CA: clients keep theirs (the server certificate is new, for the new address).
        assert (restored / "tls" / "ca.crt").read_bytes() == team.ca.read_bytes()

        after = _what_users_see(new, accounts["worker-b"], accounts["reader-b"], served, recipe, new_url, team.ca)
        assert np.allclose(after.pop("vectors"), before.pop("vectors"), atol=1e-6, rtol=0)
        assert after == before
        # `up` deploys again, which makes the schedule's runs anew at its scheduler's next pass
        # (every 60 s): the times are kept (one more may come as its window moves).
        wait_until(lambda: set(queued) <= set(_schedule(accounts["worker-b"])[1]), "the restored schedule's runs", 150)
        users_after = new.run(BIN / "skillops", "users", "list", "--stack-dir", restored, env=team.accounts["admin"])
        assert users_after.stdout == users_before
        # The accounts' powers came back too: the reader may still move nothing.
        status, _ = call(
            f"{new_url}/api/2.0/mlflow/registered-models/alias",
            team.ca,
            {"name": served, "alias": "champion", "version": "1"},
            f"reader-b:{accounts['reader-b']['MLFLOW_TRACKING_PASSWORD']}",
        )
        assert status == 403
        again = new.run("scripts/stack.sh", "restore", backup, env=new_stack, check=False)
        assert again.returncode != 0 and "never over a running one" in again.output
    finally:
        new.run("scripts/stack.sh", "down", env=new_stack, check=False, timeout=180)
        shutil.rmtree(elsewhere, ignore_errors=True)


def _served_certificate(host: str, port: int, ca: Path) -> str:
    """The serial number of the certificate the server at host:port presents, verified with `ca`."""
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection((host, port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        return tls.getpeercert()["serialNumber"]


def test_a_renewed_server_certificate_needs_nothing_new_on_clients(team):
    """`scripts/stack.sh renew-cert`: a new certificate from the same CA, which nginx and PostgreSQL
    present from then on; clients verify it with the CA they have."""
    mlflow_port, pg_port = team.ports["MLFLOW_PORT"], team.ports["PG_PORT"]
    old = _served_certificate(HOST, mlflow_port, team.ca)
    began = time.monotonic()
    renewed = team.a.run("scripts/stack.sh", "renew-cert", env=team.stack, timeout=600)
    print(f"renew-cert: {time.monotonic() - began:.0f} s")
    assert "tls: server certificate for IP:127.0.0.2" in renewed.stdout
    assert _served_certificate(HOST, mlflow_port, team.ca) != old
    assert call(f"{team.mlflow_url}/health", team.ca)[0] == 200  # nothing changed on this client
    # The Optuna database presents it too, checked as a worker checks it (verify-full, its CA).
    worker = team.accounts["worker-b"]
    database = f"host={HOST} port={pg_port} dbname=optuna user=skillops_optuna sslmode=verify-full"
    answered = team.b.run("psql", "-w", "-tAc", "select 1", database, env=worker)
    assert answered.stdout.strip() == "1"


def _mlflow_schema(team, revision: str | None = None) -> str:
    """The tracking database's migration revision (set to `revision` first, as a failed or foreign
    migration would leave it), read as PostgreSQL's superuser on the server machine."""
    psql = ["runuser", "-u", "postgres", "--", "psql", "-h", team.servers / "postgres-socket",
            "-p", team.ports["PG_PORT"], "-d", "mlflow", "-Atc"]  # fmt: skip
    if revision:
        team.a.run(*psql, f"UPDATE alembic_version SET version_num = '{revision}'", cwd=team.servers)
    return team.a.run(*psql, "SELECT version_num FROM alembic_version", cwd=team.servers).stdout.strip()


def test_an_upgrade_backs_up_migrates_and_restarts_or_names_the_backup(team, served):
    """`scripts/stack.sh upgrade`: a backup first, every database migrated, the stack started again
    with everything as it was. A migration that fails stops there, with the stack stopped and the
    backup named."""
    before = team.state_of(served)
    began = time.monotonic()
    upgraded = team.a.run("scripts/stack.sh", "upgrade", env=team.stack, timeout=600)
    print(f"upgrade: {time.monotonic() - began:.0f} s")
    for what in ("mlflow-tracking", "mlflow-accounts", "prefect", "optuna"):
        assert f"{what}: migrated" in upgraded.stdout
    (backup,) = (team.servers / "backups").glob("before-upgrade-*")
    assert (backup / "databases.tar.gz").is_file() and f"backup of {team.servers} in {backup}" in upgraded.stdout
    assert team.state_of(served) == before
    assert call(f"{team.mlflow_url}/health", team.ca)[0] == 200

    head = _mlflow_schema(team)
    _mlflow_schema(team, "0123456789ab")  # a revision this MLflow does not know
    try:
        failed = team.a.run("scripts/stack.sh", "upgrade", env=team.stack, check=False, timeout=600)
        assert failed.returncode != 0
        assert "The mlflow-tracking migration failed" in failed.output and "nothing was started" in failed.output
        (second,) = set((team.servers / "backups").glob("before-upgrade-*")) - {backup}
        assert f"backed up in {second}" in failed.output and "make stack-restore FROM=" in failed.output
        assert call(f"{team.mlflow_url}/health", team.ca)[0] == 0  # stopped: nothing half-upgraded serves
    finally:  # the operator's repair: the revision put back, the stack started
        if not (team.servers / "postgres" / "postmaster.pid").exists():  # as the stack starts it
            tls = {
                "PG_HOST": HOST,
                "PG_NETWORK": "127.0.0.0/8",
                "PG_REMOTE": "optuna",
                "PG_TLS_DIR": str(team.servers / "tls"),
            }
            databases = ("prefect", "mlflow", "mlflow_auth", "optuna", "gate")
            team.a.run("scripts/postgres.sh", "up", team.servers, team.ports["PG_PORT"], *databases, env=tls)
        _mlflow_schema(team, head)
        team.a.run("scripts/stack.sh", "up", env=team.stack, timeout=600)
    assert team.state_of(served) == before
