"""Scheduled retraining with the real local stack (scripts/stack.sh: Prefect server, process worker,
deployments, MLflow UI on 127.0.0.1): a schedule fires and registers a version, the next scheduled
run with unchanged data skips, a run killed with SIGKILL mid-training resumes from its checkpoint
when run again, and two runs started together train one after the other."""

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import pytest

from helpers import REPO, free_port, tiny_recipe_yaml, wait_until

pytestmark = pytest.mark.faults  # a process is SIGKILLed mid-run

BIN = Path(sys.executable).parent


@pytest.fixture
def stack(tmp_path):
    """`scripts/stack.sh up`, as docs/scheduling.md says, on free ports and with every file under tmp_path."""
    env = {
        **os.environ,
        "VENV": str(BIN.parent),
        "PREFECT_PORT": str(free_port()),
        "MLFLOW_PORT": str(free_port()),
        "STACK_DIR": str(tmp_path / "stack"),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
        "SKILLOPS_OUTPUTS_DIR": str(tmp_path / "outputs"),
        # Defaults are tuned for weekly jobs (scheduler every 60 s, worker polls every 10 s).
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
    }
    env.pop("PREFECT_API_URL", None)
    up = subprocess.run(
        [str(REPO / "scripts" / "stack.sh"), "up"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "Prefect UI:  http://127.0.0.1:" in up.stdout and "MLflow UI:" in up.stdout
        env["PREFECT_API_URL"] = f"http://127.0.0.1:{env['PREFECT_PORT']}/api"
        yield env, tmp_path
    finally:
        down = subprocess.run(
            [str(REPO / "scripts" / "stack.sh"), "down"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
        assert "prefect-server stopped" in down.stdout, down.stdout + down.stderr


def _prefect(env, *args, timeout=120):
    result = subprocess.run(
        [str(BIN / "prefect"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _flow_runs(env) -> list[dict]:
    request = urllib.request.Request(
        env["PREFECT_API_URL"] + "/flow_runs/filter",
        data=json.dumps({"sort": "START_TIME_ASC"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _wait(condition, what: str, env, tmp_path, timeout=300):
    def explain():
        worker_log = (tmp_path / "stack" / "worker.log").read_text()[-4000:]
        return f"flow runs: {[(r['name'], r['state_type']) for r in _flow_runs(env)]}\n{worker_log}"

    return wait_until(condition, what, timeout, explain)


def _mlflow_runs(env, experiment="tiny-esco"):
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    return mlflow.search_runs(experiment_names=[experiment], order_by=["attributes.start_time ASC"])


def _completed(env) -> list[dict]:
    return [r for r in _flow_runs(env) if r["state_type"] == "COMPLETED"]


def test_schedule_skip_resume_and_one_training_at_a_time(stack, small_esco, tiny_bert):
    env, tmp_path = stack
    recipe = tiny_recipe_yaml(tmp_path / "recipe.yaml", small_esco, tiny_bert, search={"n_trials": 0})
    # The weekly deployment of prefect.yaml, on a 30-second interval and the tiny recipe.
    _prefect(env, "--no-prompt", "deploy", "--name", "weekly", "--interval", "30", "--param", f"recipe={recipe}")

    # 1. The schedule fires: a completed run that registered version 1.
    _wait(lambda: len(_completed(env)) >= 1, "the first scheduled run", env, tmp_path)
    runs = _mlflow_runs(env)
    assert runs["tags.skillops.kind"].tolist() == ["pipeline"] and runs.status.tolist() == ["FINISHED"]
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"], env["MLFLOW_TRACKING_URI"])
    assert [str(v.version) for v in client.search_model_versions("name = 'tiny-esco-candidates'")] == ["1"]

    # 2. The next scheduled run sees the same data, recipe and code: it records a skip.
    _wait(lambda: len(_completed(env)) >= 2, "the second scheduled run", env, tmp_path)
    _prefect(env, "deployment", "schedule", "clear", "train-esco/weekly", "-y")
    runs = _mlflow_runs(env)
    assert runs["tags.skillops.kind"].tolist()[:2] == ["pipeline", "skip"]
    assert runs["tags.skillops.same_as_run"].iloc[1] == runs.run_id.iloc[0]
    assert len(client.search_model_versions("name = 'tiny-esco-candidates'")) == 1
    _wait(
        lambda: all(r["state_type"] in ("COMPLETED", "CANCELLED", "SCHEDULED") for r in _flow_runs(env)),
        "quiet",
        env,
        tmp_path,
    )

    # 3. SIGKILL mid-training, then the same run again: it resumes from the last checkpoint.
    long_run = json.dumps(
        {"training.max_steps": 200, "training.checkpoint_every_steps": 20, "training.learning_rate": 1e-3}
    )
    _prefect(env, "deployment", "run", "train-esco/weekly", "--param", f"overrides={long_run}")
    checkpoints = tmp_path / "outputs" / "attempts"
    _wait(
        lambda: list(checkpoints.glob("*/train/checkpoints/checkpoint-*/trainer_state.json")),
        "a checkpoint",
        env,
        tmp_path,
    )
    killed = _mlflow_runs(env).iloc[-1]
    os.kill(int(killed["tags.skillops.pid"]), signal.SIGKILL)
    _wait(lambda: any(r["state_type"] == "CRASHED" for r in _flow_runs(env)), "the killed run to crash", env, tmp_path)
    assert _mlflow_runs(env).set_index("run_id").status[killed.run_id] == "RUNNING"  # what MLflow alone would leave

    _prefect(env, "deployment", "run", "train-esco/weekly", "--param", f"overrides={long_run}", "--watch", timeout=600)
    runs = _mlflow_runs(env).set_index("run_id")
    assert runs.status[killed.run_id] == "FAILED"
    # Judged by its flow run's state on the shared server, which any machine can ask.
    flow_run_id = runs["tags.skillops.prefect_flow_run_id"][killed.run_id]
    assert f"its Prefect flow run {flow_run_id} is CRASHED" in runs["tags.skillops.failure"][killed.run_id]
    resumed = runs.iloc[-1]
    assert resumed.status == "FINISHED" and resumed["metrics.resumed_from_step"] >= 20
    assert "from step" in resumed["tags.skillops.resumed"]

    # 4. Two runs started together: the pool runs one flow at a time, so they train in turn.
    before = set(runs.index)
    for learning_rate in (1e-3, 2e-3):
        overrides = json.dumps({"training.max_steps": 60, "training.learning_rate": learning_rate})
        _prefect(env, "deployment", "run", "train-esco/weekly", "--param", f"overrides={overrides}")
    _wait(
        lambda: (
            len(
                set(_mlflow_runs(env).query("`tags.skillops.kind` == 'pipeline' and status == 'FINISHED'").run_id)
                - before
            )
            == 2
        ),
        "two concurrent runs to finish",
        env,
        tmp_path,
        timeout=600,
    )
    pair = (
        _mlflow_runs(env)
        .set_index("run_id")
        .loc[sorted(set(_mlflow_runs(env).run_id) - before)]
        .sort_values("start_time")
    )
    assert pair.start_time.iloc[1] >= pair.end_time.iloc[0]  # the second began after the first ended
