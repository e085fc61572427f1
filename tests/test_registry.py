"""Registry steps on a real sqlite MLflow store: gated promotion, stale-champion refusal, rollback."""

import pytest

from skillops import registry, tracking
from skillops.config import PromotionPolicy
from skillops.registry import RollbackError

NAME = "tiny-registry"
POLICY = PromotionPolicy(min_delta=0.0)


def _register(model_dir, run_name):
    run_id = tracking.start_run("registry-test", run_name, {})
    version = registry.register(model_dir, run_id, NAME, {"skillops.run_id": run_id})
    tracking.end_run(run_id)
    return version


def test_promote_refuse_stale_and_roll_back(tiny_bert, mlflow_store):
    base = {"map": 0.5}
    v1 = _register(tiny_bert, "first")
    assert registry.promote_if_better(NAME, v1, "map", {"map": 0.6}, base, None, None, POLICY).promote
    v2 = _register(tiny_bert, "second")
    assert registry.promote_if_better(NAME, v2, "map", {"map": 0.7}, base, {"map": 0.6}, v1, POLICY).promote
    assert registry.champion_version(NAME) == v2

    # A run that scored an older champion (v1) must not move the alias, however good it looks.
    v3 = _register(tiny_bert, "third")
    stale = registry.promote_if_better(NAME, v3, "map", {"map": 0.9}, base, {"map": 0.6}, v1, POLICY)
    assert not stale.promote and "moved from version 1 to 2" in stale.reason
    assert registry.champion_version(NAME) == v2

    assert registry.rollback(NAME, "bad feedback") == (v2, v1)
    assert registry.champion_version(NAME) == v1
    tags = tracking.client().get_model_version(NAME, v1).tags
    assert "moved back from version 2: bad feedback" in tags["skillops.rollback"]
    with pytest.raises(RollbackError, match="first champion"):
        registry.rollback(NAME, "again")
    assert registry.champion_version(NAME) == v1


def test_runs_left_running_by_a_dead_process_are_marked_failed(mlflow_store):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    crashed = tracking.start_run("stale-test", "crashed", {}, {"skillops.pid": str(dead.pid)})
    alive = tracking.start_run("stale-test", "this process", {})  # pid of this live process

    assert tracking.fail_stale_runs("stale-test") == [crashed]
    runs = {run_id: tracking.client().get_run(run_id) for run_id in (crashed, alive)}
    assert runs[crashed].info.status == "FAILED"
    assert f"process {dead.pid}" in runs[crashed].data.tags["skillops.failure"]
    assert runs[alive].info.status == "RUNNING"
    assert tracking.fail_stale_runs("no-such-experiment") == []
