"""Fixtures: a tiny random BERT sentence model, a small real ESCO extract, a throwaway MLflow store,
one Prefect test harness for the session and a real Prefect server for tests about deployments.

The folders are the tiers: `unit` (code), `integration` (real stores, suites and tiny trainings in
one process), `flows` (whole pipeline runs) and `stack` (real servers and several processes). The
last two are the `slow` tier that `make test-fast` leaves out.

Everything is offline: HF_HUB_OFFLINE makes a stray hub call fail at once instead of hanging.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")

import bad_inputs
from helpers import BIN, REPO, build_tiny_model, free_port, seed_champion, small_esco_extract, wait_for_http

SLOW_TIERS = ("flows", "stack")


def pytest_collection_modifyitems(items):
    for item in items:
        if Path(item.path).parent.name in SLOW_TIERS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def small_esco(tmp_path_factory) -> Path:
    return small_esco_extract(tmp_path_factory.mktemp("esco") / "esco-small")


@pytest.fixture
def esco_copy(small_esco, tmp_path) -> Path:
    """A writable copy, for tests that break files."""
    return Path(shutil.copytree(small_esco, tmp_path / "esco"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_model("bert", tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """architecture -> a tiny random model of it, built on first use."""
    built: dict[str, Path] = {}

    def get(architecture: str) -> Path:
        if architecture not in built:
            built[architecture] = build_tiny_model(architecture, tmp_path_factory.mktemp(f"tiny-{architecture}"))
        return built[architecture]

    return get


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> Path:
    """A fresh sqlite MLflow store, and a working directory of its own for outputs/."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    monkeypatch.delenv("SKILLOPS_ARTIFACT_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "mlruns"


@pytest.fixture
def prefect_server(tmp_path):
    """A real Prefect server on a free 127.0.0.1 port, with its own home, MLflow store and outputs."""
    port = free_port()
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
        env=env,
        stdout=logs,
        stderr=subprocess.STDOUT,
    )
    processes = [server]
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/health", server, tmp_path / "server.log", "Prefect server")
        yield env, processes, tmp_path
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        logs.close()


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for every test that runs the flow in this process.

    Started once: each start costs seconds, and a cold start on a busy machine has timed out."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def postgres():
    """A real PostgreSQL on a free 127.0.0.1 port (scripts/postgres.sh, Debian's package) with a
    database `optuna`: (its URL, which carries no password, and the pgpass file that has it)."""
    # Outside pytest's private tmp folder: as root, the server runs as `postgres`, who must enter it.
    state = Path(tempfile.mkdtemp(prefix="skillops-postgres-"))
    state.chmod(0o711)
    port = free_port()
    script = str(REPO / "scripts" / "postgres.sh")
    started = subprocess.run([script, "up", str(state), str(port), "optuna"], capture_output=True, text=True)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield f"postgresql://skillops_optuna@127.0.0.1:{port}/optuna", state / "pgpass"
    finally:
        subprocess.run([script, "down", str(state)], capture_output=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def store_with_champion(tmp_path_factory, tiny_bert):
    """A real MLflow store whose model (`bad_inputs.bad_inputs.MODEL_NAME`) already has a champion (version 1)."""
    root = tmp_path_factory.mktemp("bad-inputs-store")
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    patch.setenv("SKILLOPS_OUTPUTS_DIR", str(root / "outputs"))
    seed_champion(tiny_bert, bad_inputs.MODEL_NAME)
    yield root
    patch.undo()
