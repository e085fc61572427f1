"""A real Prefect server and process worker on 127.0.0.1 run the train-esco deployment from prefect.yaml."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, tiny_recipe_yaml

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _prefect(env, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "prefect"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def prefect_stack(tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
        "SKILLOPS_OUTPUTS_DIR": str(tmp_path / "outputs"),
        "HF_HUB_OFFLINE": "1",
    }
    logs = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=logs, stderr=subprocess.STDOUT,
    )
    processes = [server]
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    pytest.fail(f"Prefect server did not start: {(tmp_path / 'server.log').read_text()[-3000:]}")
                time.sleep(1)
        yield env, processes, tmp_path
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        logs.close()


def test_deployment_run_from_prefect_yaml_registers_a_model(prefect_stack, small_esco, tiny_bert):
    env, processes, tmp_path = prefect_stack
    created = _prefect(env, "work-pool", "create", "skillops", "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = _prefect(env, "--no-prompt", "deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "train-esco/weekly" in deployed.stdout

    worker_log = open(tmp_path / "worker.log", "w")
    processes.append(
        subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "skillops"],
            cwd=REPO, env=env, stdout=worker_log, stderr=subprocess.STDOUT,
        )
    )
    recipe = tiny_recipe_yaml(tmp_path / "recipe.yaml", small_esco, tiny_bert)
    run = _prefect(
        env, "deployment", "run", "train-esco/weekly", "--param", f"recipe={recipe}", "--watch", timeout=600
    )
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
