"""Registry steps on a real sqlite MLflow store: promotion under the lock with a re-check of the
champion, alias-move records, rollback round trip, stale runs."""

import json

import numpy as np
import pytest

from skillops import registry, score_cache, tracking
from skillops.cli import main as cli
from skillops.config import PromotionPolicy
from skillops.errors import RollbackError
from skillops.evaluation import QueryScores
from skillops.modeling import load_model
from skillops.promotion import decide

NAME = "tiny-registry"
QUERIES = 12


def _register(model_dir, run_name):
    run_id = tracking.start_run("registry-test", run_name, {})
    version = registry.register(model_dir, run_id, NAME, {"skillops.run_id": run_id})
    tracking.end_run(run_id)
    return version


def _scores(level: float) -> QueryScores:
    values = np.linspace(level - 0.1, level + 0.1, QUERIES)
    return QueryScores(
        evaluator="reranking",
        ids=[str(i) for i in range(QUERIES)],
        slices=[""] * QUERIES,
        per_query={"map": values.tolist()},
    )


def judge_by(levels: dict[str | None, float], candidate: float, seen: list):
    """A judge as stages.promote builds it: this candidate against whichever champion is current."""

    def judge(champion):
        seen.append(champion)
        return decide(
            _scores(candidate),
            _scores(levels[champion]),
            "champion" if champion else "base model",
            "map",
            ["map"],
            PromotionPolicy(),
            champion,
        )

    return judge


def test_promotions_rollback_round_trip_and_history(tiny_bert, mlflow_store, capsys):
    levels = {None: 0.4}  # the base model's level
    v1 = _register(tiny_bert, "first")
    assert registry.promote_if_better(NAME, v1, judge_by(levels, 0.5, [])).promote
    levels[v1] = 0.5
    v2 = _register(tiny_bert, "second")
    assert registry.promote_if_better(NAME, v2, judge_by(levels, 0.6, [])).promote
    levels[v2] = 0.6
    assert registry.champion_version(NAME) == v2

    # A refused candidate leaves the champion where it is, with its reason and numbers recorded.
    v3 = _register(tiny_bert, "third")
    refused = registry.promote_if_better(NAME, v3, judge_by(levels, 0.55, []))
    assert not refused.promote and registry.champion_version(NAME) == v2
    tags = tracking.client().get_model_version(NAME, v3).tags
    assert tags["skillops.decision"] == "not promoted" and json.loads(tags["skillops.decision_numbers"])[
        "reference"
    ] == pytest.approx(0.6)

    # Rollback: v2 -> v1, recorded on both versions; the alias serves v1's weights again.
    assert cli(["rollback", "--reason", "bad feedback from recruiters", str(_recipe_file(mlflow_store))]) == 0
    assert registry.champion_version(NAME) == v1
    assert (
        "moved back from version 2: bad feedback"
        in tracking.client().get_model_version(NAME, v1).tags["skillops.rollback"]
    )
    loaded = registry.load(f"models:/{NAME}@champion")
    assert np.allclose(loaded.encode(["data analyst"]), load_model(str(tiny_bert)).encode(["data analyst"]), atol=1e-6)
    with pytest.raises(RollbackError, match="first champion"):
        registry.rollback(NAME, "again")
    assert registry.champion_version(NAME) == v1

    # ... and forward again: a new candidate is judged against v1, the champion after the rollback.
    v4 = _register(tiny_bert, "fourth")
    seen = []
    assert registry.promote_if_better(NAME, v4, judge_by(levels, 0.7, seen)).promote
    assert seen == [v1] and registry.champion_version(NAME) == v4

    moves = registry.history(NAME)
    assert [(m["kind"], m["from"], m["to"]) for m in moves] == [
        ("promotion", None, v1),
        ("promotion", v1, v2),
        ("rollback", v2, v1),
        ("promotion", v1, v4),
    ]
    assert moves[1]["numbers"]["candidate"] == pytest.approx(0.6) and moves[1]["numbers"]["p_value"] < 0.05
    assert moves[2]["why"] == "bad feedback from recruiters" and moves[2]["when"]
    v2_moves = [k for k in tracking.client().get_model_version(NAME, v2).tags if k.startswith(registry.MOVE_TAG_PREFIX)]
    assert len(v2_moves) == 2  # became champion, then was rolled back
    capsys.readouterr()
    assert cli(["history", str(_recipe_file(mlflow_store))]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 4 and "rollback  v2 -> v1  bad feedback from recruiters" in printed[2]


def _recipe_file(store):
    path = store.parent / "registry-recipe.yaml"
    path.write_text(f"name: registry-test\nregistered_model_name: {NAME}\n", "utf-8")
    return path


def test_a_champion_that_moves_while_judging_is_judged_again(tiny_bert, mlflow_store):
    levels = {None: 0.4}
    v1, v2, v3 = (_register(tiny_bert, name) for name in ("first", "second", "third"))
    registry.promote_if_better(NAME, v1, judge_by(levels, 0.5, []))
    levels.update({v1: 0.5, v2: 0.8})
    seen = []
    judge = judge_by(levels, 0.7, seen)

    def judge_while_another_run_promotes(champion):
        decision = judge(champion)
        if len(seen) == 1:  # another machine's run moves the alias right after this read
            tracking.client().set_registered_model_alias(NAME, registry.CHAMPION, v2)
        return decision

    decision = registry.promote_if_better(NAME, v3, judge_while_another_run_promotes)
    # v3 beat v1 (0.7 > 0.5), but the re-check saw v2 (0.8): judged again, and refused.
    assert seen == [v1, v2]
    assert not decision.promote and decision.reference_version == v2
    assert registry.champion_version(NAME) == v2


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


def test_a_versions_scores_are_found_in_the_shared_store_from_another_folder(tiny_bert, mlflow_store):
    """Scores saved with a version live in its run's artifacts; a machine without the local copy
    (here: the local cache deleted) reads them from there instead of encoding the test set again,
    and only a snapshot nobody scored is scored."""
    import shutil

    version = _register(tiny_bert, "scored")
    scored = {"test": _scores(0.6), "golden-descriptions": _scores(0.5)}
    score_cache.save_scores(NAME, version, "snap1", scored)
    shutil.rmtree(mlflow_store / score_cache.SCORE_CACHE)
    calls = []

    def score(model, eval_sets):
        calls.append(eval_sets)
        return {eval_set: _scores(0.4) for eval_set in eval_sets}

    found, source = score_cache.version_scores(NAME, version, "snap1", list(scored), score)
    assert found == scored and calls == []
    assert source == f"cached scores of version {version} on eval snapshot snap1 (from the shared store)"
    again, source = score_cache.version_scores(NAME, version, "snap1", list(scored), score)
    assert again == scored and source.endswith("snap1") and calls == []  # the local copy now

    fresh, source = score_cache.version_scores(NAME, version, "snap2", ["test"], score)
    assert calls == [["test"]] and source.startswith(f"version {version} re-scored on eval snapshot snap2")
    assert fresh["test"] == _scores(0.4)


def test_a_version_says_what_it_was_trained_with(tiny_bert, mlflow_store):
    """The search's result where it ran (best.*), else the recipe's training settings."""
    run_id = tracking.start_run(
        "registry-test",
        "tuned",
        {"training.learning_rate": 5e-5, "training.batch_size": 32, "training.warmup_ratio": 0.0},
    )
    tracking.log_params(run_id, {"best.learning_rate": 3e-5, "best.batch_size": 16})
    version = registry.register(tiny_bert, run_id, NAME, {})
    tracking.end_run(run_id)
    assert registry.trained_with(NAME, version) == {"learning_rate": 3e-5, "batch_size": 16, "warmup_ratio": 0.0}
