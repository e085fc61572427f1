"""A real Prefect server and process worker on 127.0.0.1 run the train-esco deployment from prefect.yaml."""

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, tiny_recipe_yaml

BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow  # real servers and flow runs


def _prefect(env, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "prefect"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_deployment_run_from_prefect_yaml_registers_a_model(prefect_server, small_esco, tiny_bert):
    env, processes, tmp_path = prefect_server
    created = _prefect(env, "work-pool", "create", "skillops", "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = _prefect(env, "--no-prompt", "deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "train-esco/weekly" in deployed.stdout

    worker_log = open(tmp_path / "worker.log", "w")
    processes.append(
        subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "skillops"],
            cwd=REPO,
            env=env,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
        )
    )
    recipe = tiny_recipe_yaml(tmp_path / "recipe.yaml", small_esco, tiny_bert)
    run = _prefect(env, "deployment", "run", "train-esco/weekly", "--param", f"recipe={recipe}", "--watch", timeout=600)
    worker_output = (tmp_path / "worker.log").read_text()
    assert run.returncode == 0, run.stdout + run.stderr + worker_output[-5000:]
    assert "Completed" in run.stdout

    import mlflow

    mlflow_client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"], env["MLFLOW_TRACKING_URI"])
    versions = mlflow_client.search_model_versions("name = 'tiny-esco'")
    assert [v.version for v in versions] in (["1"], [1])
    assert versions[0].tags["skillops.decision"] in {"promoted", "not promoted"}
    schedules = _prefect(env, "deployment", "inspect", "train-esco/weekly")
    assert "0 3 * * 1" in schedules.stdout and "Europe/Brussels" in schedules.stdout
