"""A team's stack, as two machines see it: `make stack-up TEAM=1` starts PostgreSQL (Debian's
package), a Prefect server and an MLflow tracking server on it (artifact proxying) and a worker;
a second machine joins with only the servers' URLs. Each machine is a folder with its own HOME and
its own clone of the team's repository, and reads nothing of the other's folder.

Machine A trains and promotes; a run it started through its worker is SIGKILLed. With A's clone
renamed away, machine B lists the models, reads the history, evaluates and serves the champion,
trains a run that is judged against A's champion from the shared score cache (and marks A's
killed run FAILED), and rolls back. Four runs started together from both machines promote one at a
time. No password of the stack's database shows anywhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import mlflow
import numpy as np

from helpers import BIN, REPO, free_port, tiny_recipe_yaml, wait_for_http, wait_until
from skillops import registry

NAME = "tiny-esco"
STRONG = {"training.max_steps": 80, "training.learning_rate": 2e-3}  # reliably beats the untrained model
WEAK = {"training.max_steps": 1, "training.learning_rate": 1e-9}  # about the untrained model
LONG = {"training.max_steps": 400, "training.checkpoint_every_steps": 20, "training.learning_rate": 1e-3}
# Four candidates of different quality, started together: two from each machine.
CANDIDATES = [
    {"training.max_steps": 60, "training.learning_rate": 3e-3, "training.seed": 2},
    {"training.max_steps": 40, "training.learning_rate": 2e-3, "training.seed": 1},
    {"training.max_steps": 10, "training.learning_rate": 5e-4, "training.seed": 3},
    {"training.max_steps": 1, "training.learning_rate": 1e-9, "training.seed": 4},
]


class Machine:
    """A folder standing in for a machine: its own HOME, its own clone, the shared servers' URLs."""

    def __init__(self, root: Path, repository: Path, transcript: list[str]):
        self.root, self.transcript = root, transcript
        self.home, self.checkout = root / "home", root / "skillops"
        self.home.mkdir(parents=True)
        subprocess.run(["git", "clone", "-q", str(repository), str(self.checkout)], check=True)
        self.env = {
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(self.home),
            "HF_HUB_OFFLINE": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "MLFLOW_ENABLE_TELEMETRY": "false",
            "GX_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "VENV": str(BIN.parent),
        }

    def run(self, *command, env: dict | None = None, check: bool = True, timeout: float = 900, cwd=None):
        result = subprocess.run(
            [str(part) for part in command],
            cwd=cwd or self.checkout,
            env={k: v for k, v in {**self.env, **(env or {})}.items() if v is not None},  # None: unset
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        result.output = result.stdout + result.stderr
        self.transcript.append(result.output)
        if check:
            assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        return result

    def train(self, recipe: Path, overrides: dict, **kwargs):
        sets = [item for key, value in overrides.items() for item in ("--set", f"{key}={value}")]
        return self.run(BIN / "python", "flows/train_esco.py", recipe, *sets, **kwargs)

    def deployment_run(self, recipe: Path, overrides: dict, cwd=None):
        return self.run(
            BIN / "prefect", "deployment", "run", "train-esco/weekly",
            "--param", f"recipe={recipe}", "--param", f"overrides={json.dumps(overrides)}",
            cwd=cwd,
        )  # fmt: skip


def _team_repository(target: Path) -> Path:
    """The team's git repository: this working tree as one commit (what CI tests is what workers clone)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    identity = ["-c", "user.name=skillops tests", "-c", "user.email=tests@skillops.invalid"]
    for command in (["init", "-q", "-b", "main"], ["add", "-A"], [*identity, "commit", "-q", "-m", "team repository"]):
        subprocess.run(["git", *command], cwd=target, check=True)
    return target


def _api(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _wait(condition, what: str, timeout: float = 600, logs: list[Path] = ()):
    def explain():
        return "\n".join(f"--- {log}\n{log.read_text()[-3000:]}" for log in logs if log.exists())

    return wait_until(condition, what, timeout, explain)


def test_two_machines_share_one_team_stack(tmp_path, small_esco, tiny_bert, monkeypatch):
    transcript: list[str] = []
    repository = _team_repository(tmp_path / "team-repository")
    a = Machine(tmp_path / "machine-a", repository, transcript)
    b = Machine(tmp_path / "machine-b", repository, transcript)
    # The data and base model stand in for a bucket and the hub: both machines read them.
    (tmp_path / "shared").mkdir()
    recipe = tiny_recipe_yaml(tmp_path / "shared" / "recipe.yaml", small_esco, tiny_bert, search={"n_trials": 0})
    # Outside pytest's private tmp folder: PostgreSQL runs as the `postgres` user, who must enter it.
    servers = Path(tempfile.mkdtemp(prefix="skillops-team-stack-"))
    servers.chmod(0o711)
    ports = {"PREFECT_PORT": free_port(), "MLFLOW_PORT": free_port(), "PG_PORT": free_port()}
    stack = {"TEAM": "1", "STACK_DIR": str(servers), **{k: str(v) for k, v in ports.items()}}
    urls = {
        "PREFECT_API_URL": f"http://127.0.0.1:{ports['PREFECT_PORT']}/api",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['MLFLOW_PORT']}",
    }
    b_stack = {"TEAM": "1", "STACK_DIR": str(b.root / "stack"), **urls}
    try:
        up = a.run("scripts/stack.sh", "up", env=stack, timeout=600)
        assert (
            "postgresql running on 127.0.0.1" in up.stdout
            and f"MLflow UI:   {urls['MLFLOW_TRACKING_URI']}" in up.stdout
        )
        # The server machine's worker shares tuning studies in PostgreSQL (its password in pgpass).
        study = f"postgresql://skillops@127.0.0.1:{ports['PG_PORT']}/optuna"
        exported = {**urls, "SKILLOPS_OPTUNA_STORAGE": study}
        assert (servers / "env").read_text() == "".join(f"export {k}={v}\n" for k, v in exported.items())
        password = (servers / "db-password").read_text().strip()
        assert len(password) >= 32 and (servers / "pgpass").stat().st_mode & 0o077 == 0
        # No process shows the password in its command line; the servers do run on PostgreSQL.
        command_lines = [p.read_bytes() for p in Path("/proc").glob("[0-9]*/cmdline") if p.exists()]
        assert not [c for c in command_lines if password.encode() in c]
        assert any(b"postgresql://skillops@127.0.0.1" in c and b"mlflow" in c for c in command_lines)
        a.env.update(urls)
        b.env.update(urls)
        client = mlflow.MlflowClient(urls["MLFLOW_TRACKING_URI"], urls["MLFLOW_TRACKING_URI"])

        # The model before skillops, registered from A as version 1 and made champion.
        a.run(
            BIN / "python", "-c",
            "import sys; from pathlib import Path; from skillops import registry, tracking\n"
            f"run = tracking.start_run('{NAME}', 'previous champion', {{}})\n"
            f"registry.register(Path(sys.argv[1]), run, '{NAME}', {{}}); tracking.end_run(run)\n"
            f"tracking.client().set_registered_model_alias('{NAME}', 'champion', '1')",
            tiny_bert,
        )  # fmt: skip

        # Without the shared Prefect server, A may not promote into the shared registry: refused
        # before any data is read.
        alone = a.train(recipe, STRONG, env={"PREFECT_API_URL": None}, check=False, timeout=300)
        assert alone.returncode != 0 and "no Prefect server that they share too" in alone.output
        assert "Set PREFECT_API_URL" in alone.output and len(client.search_model_versions(f"name = '{NAME}'")) == 1

        # 1. A trains and promotes; its artifacts go to the server's store, not to A's disk.
        first = a.train(recipe, STRONG)
        assert "PROMOTED to champion" in first.output, first.output[-3000:]
        assert client.get_registered_model(NAME).aliases["champion"] == "2"
        assert not list(a.checkout.glob("mlruns/artifacts/**/MLmodel"))
        assert list((servers / "artifacts").rglob("MLmodel"))

        # 2. A run A's worker took is SIGKILLed mid-training; Prefect says CRASHED, MLflow RUNNING.
        a.deployment_run(recipe, LONG)
        _wait(
            lambda: list((servers / "outputs").glob("attempts/*/train/checkpoints/checkpoint-*/trainer_state.json")),
            "a checkpoint of the long run",
            logs=[servers / "worker.log"],
        )
        (killed,) = client.search_runs(
            [client.get_experiment_by_name(NAME).experiment_id], "attributes.status = 'RUNNING'"
        )
        os.kill(int(killed.data.tags["skillops.pid"]), signal.SIGKILL)
        flow_run_id = killed.data.tags["skillops.prefect_flow_run_id"]
        _wait(
            lambda: _api(f"{urls['PREFECT_API_URL']}/flow_runs/{flow_run_id}")["state_type"] == "CRASHED",
            "the killed flow run to be CRASHED",
        )
        assert client.get_run(killed.info.run_id).info.status == "RUNNING"

        # 3. A's clone is gone from where it was; B joins the stack with only the URLs.
        a.checkout.rename(a.root / "moved-away")
        joined = b.run("scripts/stack.sh", "up", env=b_stack, timeout=300)
        assert "started" in joined.stdout and "postgresql" not in joined.stdout  # no servers of its own
        models = b.run(BIN / "skillops", "models", recipe).stdout.splitlines()
        assert [line.split()[:2] for line in models[1:]] == [["1", "-"], ["2", "champion"]]
        assert "promotion v1 -> v2" in b.run(BIN / "skillops", "history", recipe).stdout
        scored = b.run(BIN / "skillops", "evaluate", recipe, "--model", f"models:/{NAME}@champion").stdout
        assert "test_map:" in scored

        port = free_port()
        log = b.root / "serve.log"
        server = subprocess.Popen(
            [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port)],
            cwd=b.checkout, env=b.env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            wait_for_http(f"http://127.0.0.1:{port}/ping", server, log, "mlflow models serve")
            answer = _api(f"http://127.0.0.1:{port}/invocations", {"inputs": ["data analyst", "manage ICT security"]})
            assert np.asarray(answer["predictions"]).shape == (2, 32)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        transcript.append(log.read_text())

        # 4. B trains: A's killed run is marked FAILED, and A's champion is judged from the shared
        # score cache (A's run saved its scores as artifacts on the server), not re-scored.
        second = b.train(recipe, WEAK)
        assert "not promoted" in second.output
        assert "Champion's scores: cached scores of version 2" in second.output
        assert "(from the shared store)" in second.output
        failed = client.get_run(killed.info.run_id)
        assert failed.info.status == "FAILED"
        assert f"its Prefect flow run {flow_run_id} is CRASHED" in failed.data.tags["skillops.failure"]

        # 5. Four runs started together, two from each machine, run by both machines' workers.
        before = {r.info.run_id for r in client.search_runs([client.get_experiment_by_name(NAME).experiment_id])}
        flow_runs = []
        for number, overrides in enumerate(CANDIDATES):
            machine, cwd = (a, a.root) if number % 2 == 0 else (b, None)
            started = machine.deployment_run(recipe, {**overrides, "promotion.min_delta": 0.001}, cwd=cwd)
            flow_runs.append(re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1))

        def states():
            found = [_api(f"{urls['PREFECT_API_URL']}/flow_runs/{run}")["state_type"] for run in flow_runs]
            assert not {"FAILED", "CRASHED", "CANCELLED"} & set(found), found
            return found == ["COMPLETED"] * 4

        workers = [servers, b.root / "stack"]
        _wait(states, "four runs to complete", timeout=900, logs=[w / "worker.log" for w in workers])
        runs = client.search_runs([client.get_experiment_by_name(NAME).experiment_id])
        four = [r for r in runs if r.info.run_id not in before and r.data.tags.get("skillops.kind") == "pipeline"]
        assert len(four) == 4 and {r.info.status for r in four} == {"FINISHED"}
        # Both machines' workers took some (each writes under its own outputs folder), side by side.
        ran_on = [{r.info.run_id for r in four if (w / "outputs" / r.info.run_id).is_dir()} for w in workers]
        assert all(ran_on) and set.union(*ran_on) == {r.info.run_id for r in four}
        spans = [(r.info.start_time, r.info.end_time) for r in four]
        assert any(s1 < e2 and s2 < e1 for i, (s1, e1) in enumerate(spans) for s2, e2 in spans[i + 1 :])
        versions = {int(v.version): v for v in client.search_model_versions(f"name = '{NAME}'")}
        assert sorted(versions) == [1, 2, 3, 4, 5, 6, 7]
        candidates = {v: versions[v] for v in (4, 5, 6, 7)}
        for version in candidates.values():
            assert version.tags["skillops.decision"] in {"promoted", "not promoted"}
        score = {v: float(version.tags["test_map"]) for v, version in {**candidates, 2: versions[2]}.items()}
        champion = int(client.get_registered_model(NAME).aliases["champion"])
        beat = [v for v in candidates if score[v] > score[2] + 0.001]
        assert champion == (max(beat, key=score.get) if beat else 2)
        # The alias moved only forward: each promotion after A's to a version that beat the one it replaced.
        monkeypatch.setenv("MLFLOW_TRACKING_URI", urls["MLFLOW_TRACKING_URI"])
        moves = registry.history(NAME)
        assert [(m["from"], m["to"]) for m in moves[:1]] == [("1", "2")]
        assert all(score[int(m["to"])] > score[int(m["from"])] for m in moves[1:])
        assert moves[-1]["to"] == str(champion)

        # 6. B rolls the champion back to the version it replaced.
        rolled = b.run(BIN / "skillops", "rollback", recipe, "--reason", "team test").stdout
        assert f"champion moved back from version {champion}" in rolled
        assert "rollback" in b.run(BIN / "skillops", "history", recipe).stdout

        # 7. No password anywhere: printed lines, files (logs, artifacts, reports, outputs), MLflow
        # tags and params of every run and version, Prefect's flow run logs and artifacts.
        secret = password
        assert not [text for text in transcript if secret in text]
        private = {servers / "db-password", servers / "pgpass"}
        leaked = [
            path
            for path in [*tmp_path.rglob("*"), *servers.rglob("*")]
            if path.is_file() and path not in private and servers / "postgres" not in path.parents
            and secret.encode() in path.read_bytes()
        ]  # fmt: skip
        assert not leaked
        for run in client.search_runs([e.experiment_id for e in client.search_experiments()]):
            assert secret not in json.dumps([run.data.tags, run.data.params])
        for version in versions.values():
            assert secret not in json.dumps(client.get_model_version(NAME, version.version).tags)
        logs = _api(f"{urls['PREFECT_API_URL']}/logs/filter", {"limit": 200})
        artifacts = _api(f"{urls['PREFECT_API_URL']}/artifacts/filter", {"limit": 200})
        assert logs and artifacts and secret not in json.dumps([logs, artifacts])
    finally:
        for machine, env in ((b, b_stack), (a, stack)):
            checkout = machine.checkout if machine.checkout.exists() else machine.root / "moved-away"
            machine.run("scripts/stack.sh", "down", env=env, check=False, cwd=checkout, timeout=180)
        stopped = not (servers / "postgres" / "postmaster.pid").exists()
        shutil.rmtree(servers, ignore_errors=True)
    assert stopped
