"""Fixtures: a tiny random BERT sentence model, a small real ESCO extract, a throwaway MLflow store,
one Prefect test harness for the session and a real Prefect server for tests about deployments.

The folders are the tiers: `unit` (code), `integration` (real stores, suites and tiny trainings in
one process), `flows` (whole pipeline runs), `stack` (real servers and several processes) and
`team` (one team stack on a network address, shared by its tests). The last three are the `slow`
tier that a bare `pytest` leaves out and `make test` runs.

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
from helpers import BIN, REPO, build_tiny_model, free_port, seed_champion, small_esco_extract, start_prefect_server

SLOW_TIERS = ("flows", "stack", "team")


# Longest first, so that side by side the long groups start at once instead of ending last.
TIER_ORDER = ("team", "stack", "flows", "integration", "unit")


def pytest_collection_modifyitems(items):
    items.sort(
        key=lambda item: TIER_ORDER.index(folder) if (folder := Path(item.path).parent.name) in TIER_ORDER else 0
    )
    for item in items:
        if Path(item.path).parent.name in SLOW_TIERS:
            item.add_marker(pytest.mark.slow)


def pytest_xdist_make_scheduler(config, log):
    """`make test` runs tests side by side (pytest-xdist): a module's tests on one worker (its
    fixtures are built once), and every test of the team stack on one worker, where the stack is
    started once. (xdist's own `--dist loadgroup` cannot do it with pytest 9: it renames
    `item._nodeid`, which pytest 9 no longer reads, so every test goes out alone.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByModuleAndTeam(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "tests/team" if module.startswith("tests/team/") else module

    return ByModuleAndTeam(config, log)


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
    """A real Prefect server on a free 127.0.0.1 port, with its own home, MLflow store and outputs,
    and the automation that crashes flow runs whose heartbeats stopped (as `make stack-up` makes it).
    `processes[0]` is the server; a test may restart it with `start_prefect_server`."""
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # As the team stack sets it: held slots of the promotion lock outlive a restart of the server.
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
        "SKILLOPS_OUTPUTS_DIR": str(tmp_path / "outputs"),
        "HF_HUB_OFFLINE": "1",
    }
    processes = [start_prefect_server(env, tmp_path / "server.log")]
    try:
        watch = subprocess.run(
            [str(BIN / "python"), str(REPO / "flows" / "orchestration.py"), "watch-heartbeats"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert watch.returncode == 0, watch.stdout + watch.stderr
        yield env, processes, tmp_path
    finally:
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for every test that runs the flow in this process.

    Started once: each start costs seconds, and a cold start on a busy machine has timed out."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


class PostgresServer:
    """A PostgreSQL server of scripts/postgres.sh with a database `optuna`: its URL (no password
    in it), the pgpass file that has the password, and a way to stop it and start it again."""

    def __init__(self, state: Path, port: int):
        self.state, self.port = state, port
        self.url = f"postgresql://skillops_optuna@127.0.0.1:{port}/optuna"
        self.pgpass = state / "pgpass"

    def _script(self, *args):
        done = subprocess.run(
            [str(REPO / "scripts" / "postgres.sh"), *args], capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def up(self):
        self._script("up", str(self.state), str(self.port), "optuna")

    def down(self):
        self._script("down", str(self.state))


@pytest.fixture
def postgres():
    """A real PostgreSQL on a free 127.0.0.1 port (scripts/postgres.sh, Debian's package)."""
    # Outside pytest's private tmp folder: as root, the server runs as `postgres`, who must enter it.
    state = Path(tempfile.mkdtemp(prefix="skillops-postgres-"))
    state.chmod(0o711)
    server = PostgresServer(state, free_port())
    try:
        server.up()
        yield server
    finally:
        subprocess.run([str(REPO / "scripts" / "postgres.sh"), "down", str(state)], capture_output=True, timeout=120)
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
