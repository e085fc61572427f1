"""One team stack for every test of this folder (`teamstack.Team`), started once per pytest run and
stopped when its last test ends (the fixtures' scope is this package), not when the whole run does.

Each test works on models of its own name; those that stop a process start it again. After each
test the fixture checks that the stack is as the test found it: every server and worker alive,
the heartbeat automation there and enabled, the pool's job template still locked. At the end, no
secret of the stack may be found in any command line, printed line, file, MLflow tag or param,
or Prefect log or artifact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from teamstack import Team, prefect

SERVICES = ("prefect-server", "mlflow-server", "gate", "nginx", "worker")


def _alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


@pytest.fixture(scope="package")
def team(tmp_path_factory, small_esco, tiny_bert):
    transcript: list[str] = []
    # Outside pytest's private tmp folder: PostgreSQL runs as the `postgres` user, who must enter it.
    servers = Path(tempfile.mkdtemp(prefix="skillops-team-"))
    servers.chmod(0o711)
    stack = Team(tmp_path_factory.mktemp("team"), servers, transcript, small_esco, tiny_bert)
    saved = {key: os.environ.get(key) for key in Team.CREDENTIALS}  # the tests' MLflow clients set them
    try:
        stack.up()
        yield stack
        _no_secret_anywhere(stack)
    finally:
        stopped = stack.down()
        shutil.rmtree(servers, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert stopped


@pytest.fixture(scope="package")
def served(team) -> str:
    """A served model whose first retrain the authority judged and promoted, shared by the tests
    that only read it or only try to change it; returns its name."""
    team.promoted_model("served")
    return "served"


@pytest.fixture(autouse=True)
def left_as_found(team):
    """Each test leaves the shared stack as it found it."""
    yield
    down = [name for name in SERVICES if not _alive(team.servers / f"{name}.pid")]
    down += ["worker of machine B"] if not _alive(team.b.root / "stack" / "worker.pid") else []
    assert not down, f"the test left these stopped: {down}"
    (automation,) = prefect(team.accounts["admin"], "/automations/filter", {})
    assert automation["enabled"], "the heartbeat automation was left paused"
    pool = prefect(team.accounts["admin"], "/work_pools/skillops")
    assert "command" not in pool["base_job_template"]["variables"]["properties"], "the pool's job template was unlocked"


def _no_secret_anywhere(team: Team) -> None:
    """No secret of the stack in any command line, printed line, file (but the secrets' own), MLflow
    tag or param, Prefect log or artifact."""
    servers = team.servers
    secrets = [p.read_text().strip() for p in (servers / "secrets").iterdir()]
    for credentials in (servers / "accounts").glob("*/credentials"):
        secrets += re.findall(r"(?:PASSWORD|AUTH_STRING)='(?:skillops:)?([^']+)'", credentials.read_text())
    assert len(secrets) >= 13 and all(len(s) >= 16 for s in secrets)
    command_lines = [p.read_bytes() for p in Path("/proc").glob("[0-9]*/cmdline") if p.exists()]
    assert not [c for c in command_lines if any(s.encode() in c for s in secrets)]
    assert not [t for t in team.transcript if any(s in t for s in secrets)]
    private = {"credentials", "pgpass"}
    leaked = [
        path for root in (team.tmp, servers) for path in root.rglob("*")
        if path.is_file() and path.name not in private and "secrets" not in path.parts
        and servers / "postgres" not in path.parents and any(s.encode() in path.read_bytes() for s in secrets)
    ]  # fmt: skip
    assert not leaked
    with team.as_account("admin") as client:
        everything = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert not any(s in json.dumps([[r.data.tags, r.data.params] for r in everything]) for s in secrets)
        for model in client.search_registered_models():
            tags = [v.tags for v in client.search_model_versions(f"name = '{model.name}'")] + [model.tags]
            assert not any(s in json.dumps(tags) for s in secrets)
    records = [
        prefect(team.accounts["maintainer-b"], "/logs/filter", {"limit": 200}),
        prefect(team.accounts["maintainer-b"], "/artifacts/filter", {"limit": 200}),
    ]
    assert records[0] and not any(s in json.dumps(records) for s in secrets)
