"""A run killed mid-training resumes on another machine: its checkpoints are in the run's artifact
store as well as on the worker, so a start whose work folder is empty (another machine, the first
one's folder gone) downloads the newest complete checkpoint and continues from its step, and the
candidate is registered once."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import mlflow
import pytest

from helpers import BIN, REPO, tiny_recipe_yaml

pytestmark = pytest.mark.faults  # a process is SIGKILLed mid-run


def _flow(recipe, outputs, log, env):
    return subprocess.Popen(
        [str(BIN / "python"), str(REPO / "flows" / "train_esco.py"), str(recipe)],
        env={**env, "SKILLOPS_OUTPUTS_DIR": str(outputs)},
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def test_a_run_killed_mid_training_resumes_from_the_stores_checkpoint_elsewhere(
    small_esco, tiny_bert, mlflow_store, tmp_path
):
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "SKILLOPS_OPTUNA_STORAGE")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    recipe = tiny_recipe_yaml(
        tmp_path / "recipe.yaml",
        small_esco,
        tiny_bert,
        training={"max_steps": 400, "checkpoint_every_steps": 20, "learning_rate": 1e-3},
        search={"n_trials": 0},
    )
    # Registry too: an earlier test in this process may have set mlflow's global registry URI.
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"], os.environ["MLFLOW_TRACKING_URI"])
    first = _flow(recipe, tmp_path / "machine-a", tmp_path / "a.log", env)

    def kept_checkpoints():
        runs = client.search_runs(
            [e.experiment_id for e in client.search_experiments()], "attributes.status = 'RUNNING'"
        )
        for run in runs:
            listed = [a.path for a in client.list_artifacts(run.info.run_id, "attempt/train/checkpoints")]
            if any(client.list_artifacts(run.info.run_id, path) for path in listed):
                markers = [
                    path for path in listed
                    if any(a.path.endswith("skillops-complete.json") for a in client.list_artifacts(run.info.run_id, path))
                ]  # fmt: skip
                if markers:
                    return run, markers
        return None

    deadline = time.monotonic() + 300
    while not (found := kept_checkpoints()):
        assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "a.log").read_text()[-3000:]
        time.sleep(1)
    killed, markers = found
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    step = max(int(path.rsplit("-", 1)[1]) for path in markers)
    (tmp_path / "machine-a").rename(tmp_path / "gone")  # nothing of machine A's folder is left to read

    second = _flow(recipe, tmp_path / "machine-b", tmp_path / "b.log", env)
    assert second.wait(timeout=600) == 0, (tmp_path / "b.log").read_text()[-3000:]
    log = (tmp_path / "b.log").read_text()
    resumed = [line for line in log.splitlines() if "Resuming training from step" in line]
    assert resumed, log[-3000:]
    resumed_step = int(resumed[0].split("from step ")[1].split()[0])
    assert resumed_step >= step  # the newest complete checkpoint the store had (or a newer one)
    (run,) = client.search_runs(
        [killed.info.experiment_id], "tags.skillops.kind = 'pipeline' and attributes.status = 'FINISHED'"
    )
    assert run.data.tags["skillops.restored_from"].startswith(f"run {killed.info.run_id}")
    assert run.data.metrics["resumed_from_step"] == resumed_step
    assert client.get_run(killed.info.run_id).info.status == "FAILED"  # closed by the second start
    registered = [(v.name, v.run_id) for v in client.search_model_versions()]
    candidates = [entry for entry in registered if entry[0].endswith("-candidates")]
    assert candidates == [("tiny-esco-candidates", run.info.run_id)], (registered, log[-3000:])  # once
