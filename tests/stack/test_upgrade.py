"""A team stack whose databases an earlier MLflow release built (3.14.0: the first here with the
roles and workspaces skillops uses, nine tracking migrations behind this checkout's pin), upgraded
by `scripts/stack.sh upgrade`: runs, versions, aliases, accounts and their roles intact."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers import BIN, free_port
from teamstack import Machine, call, team_repository

EARLIER = "3.14.0"
HOST = "127.0.0.4"  # a server machine of its own (the team package's is 127.0.0.2)
# Made with the earlier release's own client, as the admin, straight to its tracking server.
MAKE = """
import json, os, sys, tempfile, mlflow
client = mlflow.MlflowClient(sys.argv[1], sys.argv[1])
experiment = client.create_experiment("upgrade-check")
run = client.create_run(experiment)
client.log_param(run.info.run_id, "learning_rate", "2e-05")
client.log_metric(run.info.run_id, "test_map", 0.3215, step=3)
folder = tempfile.mkdtemp()
open(os.path.join(folder, "weights.txt"), "w").write("kept")
client.log_artifacts(run.info.run_id, folder, "model")
client.set_terminated(run.info.run_id)
client.create_registered_model("upgrade-check")
version = client.create_model_version("upgrade-check", f"runs:/{run.info.run_id}/model", run.info.run_id)
client.set_registered_model_alias("upgrade-check", "champion", version.version)
print(json.dumps({"mlflow": mlflow.__version__, "run": run.info.run_id}))
"""
# What users see of it, read with whichever release the interpreter has.
READ = """
import json, sys, mlflow
client = mlflow.MlflowClient(sys.argv[1], sys.argv[1])
experiment = client.get_experiment_by_name("upgrade-check")
(run,) = client.search_runs([experiment.experiment_id])
champion = client.get_model_version_by_alias("upgrade-check", "champion")
files = [f.path for f in client.list_artifacts(run.info.run_id, "model")]
print(json.dumps({
    "mlflow": mlflow.__version__,
    "run": [run.info.run_id, run.info.status, run.data.params, run.data.metrics],
    "champion": [champion.version, champion.run_id],
    "files": files,
}))
"""


def _script(source: Path, target: Path, python: Path, preamble: str = "") -> None:
    """A console script of the main venv, run by `python` instead (after `preamble`)."""
    lines = source.read_text().splitlines()
    target.write_text("\n".join([f"#!{python}", preamble, *lines[1:]]) + "\n")
    target.chmod(0o755)


# MLflow 3.14 reads the admin's password from the auth ini only (3.17 from the environment, which is
# where scripts/stack.sh keeps it): the earlier release's `mlflow` writes it there first, as the
# skillops of that release would have.
ADMIN_IN_INI = """
import configparser, os
if os.environ.get("MLFLOW_AUTH_CONFIG_PATH") and os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
    ini = configparser.ConfigParser()
    ini.read(os.environ["MLFLOW_AUTH_CONFIG_PATH"])
    ini["mlflow"]["admin_password"] = os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"]
    with open(os.environ["MLFLOW_AUTH_CONFIG_PATH"], "w") as written:
        ini.write(written)
"""


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def earlier_venv(tmp_path_factory) -> Path:
    """A venv whose MLflow (and SQLAlchemy) are the earlier release's and whose every other
    package is this one's (the main venv's site-packages, read after its own): a few seconds, not
    a full install."""
    venv = tmp_path_factory.mktemp("earlier") / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    packages = [f"{name}=={EARLIER}" for name in ("mlflow", "mlflow-skinny", "mlflow-tracing")]
    # With SQLAlchemy 2.0, as that release ran (2.1 casts a version's number where 3.14 compares it
    # as text), and 2.0's PostgreSQL driver for the stack's postgresql:// URLs.
    packages += ["sqlalchemy==2.0.58", "psycopg2-binary"]
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), *packages])
    main_site = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "optuna").is_dir())
    (site / "zz-main-venv.pth").write_text(f"import site; site.addsitedir({str(main_site)!r})\n")
    for name in ("mlflow", "prefect", "skillops"):
        _script(BIN / name, venv / "bin" / name, venv / "bin" / "python", ADMIN_IN_INI if name == "mlflow" else "")
    return venv


def _tracking_revision(machine: Machine, servers: Path, port: int) -> str:
    psql = ["runuser", "-u", "postgres", "--", "psql", "-h", servers / "postgres-socket", "-p", port, "-d", "mlflow"]
    return machine.run(*psql, "-Atc", "SELECT version_num FROM alembic_version", cwd=servers).stdout.strip()


def test_a_stack_built_by_an_earlier_mlflow_is_upgraded_with_everything_intact(earlier_venv, tmp_path):
    servers = Path(tempfile.mkdtemp(prefix="skillops-upgrade-"))  # PostgreSQL (user postgres) enters it
    servers.chmod(0o711)
    machine = Machine(tmp_path / "server", team_repository(tmp_path / "repository"), [])
    ports = {
        name: str(free_port())
        for name in ("PREFECT_PORT", "MLFLOW_PORT", "PG_PORT", "PREFECT_BACKEND_PORT", "MLFLOW_BACKEND_PORT")
    }
    ports["GATE_BACKEND_PORT"] = str(free_port())
    stack = {"TEAM": "1", "HOST": HOST, "NETWORK": "127.0.0.0/8", "STACK_DIR": str(servers), **ports}
    backend = f"http://127.0.0.1:{ports['MLFLOW_BACKEND_PORT']}"
    try:
        machine.run("scripts/stack.sh", "up", env={**stack, "VENV": str(earlier_venv)}, timeout=600)
        admin = machine.account(servers / "accounts" / "admin")
        machine.run(BIN / "skillops", "users", "add", "alice", "--role", "reader", "--stack-dir", servers, env=admin)
        alice = machine.account(servers / "accounts" / "alice")
        # The last line: MLflow prints links to the run it ended before it.
        made = json.loads(
            machine.run(earlier_venv / "bin" / "python", "-c", MAKE, backend, env=admin).stdout.splitlines()[-1]
        )
        assert made["mlflow"] == EARLIER
        before = json.loads(machine.run(earlier_venv / "bin" / "python", "-c", READ, backend, env=admin).stdout)
        users_before = machine.run(BIN / "skillops", "users", "list", "--stack-dir", servers, env=admin).stdout
        revision_before = _tracking_revision(machine, servers, ports["PG_PORT"])

        upgraded = machine.run("scripts/stack.sh", "upgrade", env={**stack, "VENV": str(BIN.parent)}, timeout=600)
        for what in ("mlflow-tracking", "mlflow-accounts", "prefect", "optuna"):
            assert f"{what}: migrated" in upgraded.stdout
        assert _tracking_revision(machine, servers, ports["PG_PORT"]) != revision_before

        after = json.loads(machine.run(BIN / "python", "-c", READ, backend, env=admin).stdout)
        assert after.pop("mlflow") != before.pop("mlflow")  # the new server answered
        assert after == before
        users_after = machine.run(BIN / "skillops", "users", "list", "--stack-dir", servers, env=admin).stdout
        assert users_after == users_before and re.search(r"alice\s+reader", users_after)
        # Alice's password and role came through: she reads, and may not move the champion.
        public = f"https://{HOST}:{ports['MLFLOW_PORT']}"
        user = f"alice:{alice['MLFLOW_TRACKING_PASSWORD']}"
        ca = servers / "tls" / "ca.crt"
        assert call(f"{public}/api/2.0/mlflow/experiments/search?max_results=5", ca, user=user)[0] == 200
        alias = {"name": "upgrade-check", "alias": "champion", "version": "1"}
        assert call(f"{public}/api/2.0/mlflow/registered-models/alias", ca, alias, user)[0] == 403
    finally:
        machine.run("scripts/stack.sh", "down", env={**stack, "VENV": str(BIN.parent)}, check=False, timeout=180)
        shutil.rmtree(servers, ignore_errors=True)
