"""Registry steps and the local gate on a real sqlite MLflow store: candidates in
`<name>-candidates`, promotion under the lock with a re-check of the champion, the served model
holding only what the gate passed, alias-move records naming who moved it, rollback round trip,
the model's own policy, stale runs."""

import json
import re

import mlflow
import mlflow.sentence_transformers
import numpy as np
import pytest

from helpers import Levels
from skillops import gate
from skillops.cli import main as cli
from skillops.config import PromotionPolicy, TunedParams
from skillops.errors import PolicyError, RollbackError
from skillops.gate.record import MOVE_TAG_PREFIX, POLICY_TAG
from skillops.judging import score_cache
from skillops.judging.promotion import ModelPolicy
from skillops.tracking import registry, runs
from skillops.training.modeling import load_model

NAME = "tiny-registry"
POLICY = ModelPolicy(promotion=PromotionPolicy(), evaluator="reranking", primary_metric="map", at_k=100)


def _register(model_dir, run_name):
    run_id = runs.start_run("registry-test", run_name, {})
    version = registry.register(model_dir, run_id, NAME, {"skillops.run_id": run_id})
    runs.end_run(run_id)
    return version


def _gate():
    """The local gate of this store, the model's policy set as its first promotion sets it."""
    authority = gate.local()
    authority.first_policy(NAME, POLICY, "first policy")
    return authority


def test_promotions_rollback_round_trip_and_history(tiny_bert, mlflow_store, capsys):
    levels = {None: 0.4}  # the base model's level, then each served version's
    authority = _gate()
    c1 = _register(tiny_bert, "first")
    first = authority.judge(NAME, c1, Levels(levels, 0.5))
    assert first.promote and first.served_version == "1"
    levels["1"] = 0.5
    c2 = _register(tiny_bert, "second")
    assert authority.judge(NAME, c2, Levels(levels, 0.6)).served_version == "2"
    levels["2"] = 0.6
    assert registry.champion_version(NAME) == "2"

    # A refused candidate leaves the champion where it is, with its reason and numbers recorded,
    # and never enters the served model.
    c3 = _register(tiny_bert, "third")
    refused = authority.judge(NAME, c3, Levels(levels, 0.55))
    assert not refused.promote and refused.served_version is None and registry.champion_version(NAME) == "2"
    tags = runs.client().get_model_version(registry.candidates(NAME), c3).tags
    assert tags["skillops.decision"] == "not promoted" and json.loads(tags["skillops.decision_numbers"])[
        "reference"
    ] == pytest.approx(0.6)
    served = runs.client().search_model_versions(f"name = '{NAME}'")
    assert sorted((str(v.version), v.tags[registry.CANDIDATE_TAG]) for v in served) == [("1", c1), ("2", c2)]

    # Rollback: v2 -> v1, recorded on both versions; the alias serves v1's weights again.
    assert cli(["rollback", "--reason", "bad feedback from recruiters", str(_recipe_file(mlflow_store))]) == 0
    assert registry.champion_version(NAME) == "1"
    assert (
        "moved back from version 2: bad feedback"
        in runs.client().get_model_version(NAME, "1").tags["skillops.rollback"]
    )
    loaded = registry.load(f"models:/{NAME}@champion")
    expected = load_model(str(tiny_bert)).encode(["data analyst"])
    assert np.allclose(loaded.encode(["data analyst"]), expected, atol=1e-6)
    # ... and as MLflow users load a sentence-transformers model, beside the pyfunc that serves it.
    plain = mlflow.sentence_transformers.load_model(f"models:/{NAME}@champion")
    assert np.allclose(plain.encode(["data analyst"]), expected, atol=1e-6)
    served = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    assert np.allclose(served.predict(["data analyst"]), expected, atol=1e-6)
    with pytest.raises(RollbackError, match="first champion"):
        authority.rollback(NAME, "again")
    assert registry.champion_version(NAME) == "1"

    # ... and forward again: a new candidate is judged against v1, the champion after the rollback.
    c4 = _register(tiny_bert, "fourth")
    seen = []
    assert authority.judge(NAME, c4, Levels(levels, 0.7, seen)).served_version == "3"
    assert seen == ["1"] and registry.champion_version(NAME) == "3"
    # A rollback goes only to a version that was champion before.
    with pytest.raises(RollbackError, match="was never its champion"):
        authority.rollback(NAME, "to a stranger", to="7")

    moves = authority.history(NAME)
    assert [(m["kind"], m["from"], m["to"], m.get("candidate")) for m in moves] == [
        ("promotion", None, "1", c1),
        ("promotion", "1", "2", c2),
        ("rollback", "2", "1", None),
        ("promotion", "1", "3", c4),
    ]
    assert {m["by"] for m in moves} == {runs.account()}  # who moved it, every time
    assert moves[1]["numbers"]["candidate"] == pytest.approx(0.6) and moves[1]["numbers"]["p_value"] < 0.05
    assert moves[2]["why"] == "bad feedback from recruiters" and moves[2]["when"]
    v2_moves = [k for k in runs.client().get_model_version(NAME, "2").tags if k.startswith(MOVE_TAG_PREFIX)]
    assert len(v2_moves) == 2  # became champion, then was rolled back
    capsys.readouterr()
    assert cli(["history", str(_recipe_file(mlflow_store))]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 4 and f"rollback  v2 -> v1 by {runs.account()}  bad feedback from recruiters" in printed[2]
    assert cli(["models", str(_recipe_file(mlflow_store))]) == 0
    listed = capsys.readouterr().out
    assert f"{NAME}-candidates: every candidate" in listed and "NOT FROM THE GATE" not in listed


def test_registering_and_promoting_again_after_a_lost_answer_makes_no_second_version(tiny_bert, mlflow_store):
    """A retry of register (the answer lost after MLflow made the version) returns the same
    candidate; a retry of a promotion that copied the candidate but died before the alias moved
    reuses that copy."""
    run_id = runs.start_run("registry-test", "retried", {})
    candidate = registry.register(tiny_bert, run_id, NAME, {"skillops.run_id": run_id})
    assert registry.register(tiny_bert, run_id, NAME, {"skillops.run_id": run_id}) == candidate
    logged = runs.client().search_logged_models(
        experiment_ids=[runs.experiment_id("registry-test")], filter_string=f"source_run_id = '{run_id}'"
    )
    assert len(logged) == 1
    # The model was logged, but the version never made (the process died in between).
    other = runs.start_run("registry-test", "logged only", {})
    registry.log_model(tiny_bert, other, "fp32")
    second = registry.register(tiny_bert, other, NAME, {})
    assert (
        len(
            runs.client().search_logged_models(
                experiment_ids=[runs.experiment_id("registry-test")], filter_string=f"source_run_id = '{other}'"
            )
        )
        == 1
        and second != candidate
    )

    copy = registry.served_copy(NAME, candidate)  # an attempt that died before moving the alias
    decision = _gate().judge(NAME, candidate, Levels({None: 0.4}, 0.5))
    assert decision.served_version == copy
    assert len(runs.client().search_model_versions(f"name = '{NAME}'")) == 1


def test_the_policy_belongs_to_the_served_model_and_every_change_is_recorded(mlflow_store, capsys):
    authority = _gate()
    assert authority.policy(NAME) == POLICY
    assert (
        cli(["policy", str(_recipe_file(mlflow_store)), "--set", "significance_level=0.01", "--reason", "stricter"])
        == 0
    )
    assert authority.policy(NAME).promotion.significance_level == 0.01
    changes = authority.policy_changes(NAME)
    assert [c["why"] for c in changes] == ["first policy", "stricter"]
    assert changes[1]["from"]["promotion"]["significance_level"] == 0.05 and changes[1]["by"] == runs.account()
    capsys.readouterr()
    assert cli(["policy", str(_recipe_file(mlflow_store)), "--set", "significance_level=2"]) == 2
    assert "significance_level" in capsys.readouterr().err
    assert cli(["policy", str(_recipe_file(mlflow_store)), "--set", "golden_tolerence=0.5"]) == 2  # misspelt
    assert "golden_tolerence" in capsys.readouterr().err
    assert authority.policy(NAME).promotion.significance_level == 0.01
    assert len(authority.policy_changes(NAME)) == 2


def test_a_corrupted_or_deleted_policy_stops_promotion_with_one_line_that_names_the_repair(
    tiny_bert, mlflow_store, capsys
):
    """A policy tag set to garbage, or one with a field out of range, is never read as some
    default: the gate refuses, `skillops policy` says in one line which model, which field and
    which command repairs it; a deleted policy on a model with a champion is never re-created from
    a recipe by a run; the repair is a recorded change."""
    authority = _gate()
    candidate = _register(tiny_bert, "first")
    assert authority.judge(NAME, candidate, Levels({None: 0.4}, 0.5)).promote
    client = runs.client()
    recipe = str(_recipe_file(mlflow_store))
    for garbage, field in (
        ("garbage", re.escape("(the whole policy)")),
        (POLICY.model_dump_json().replace("0.05", "7"), "promotion.significance_level"),
    ):
        client.set_registered_model_tag(NAME, POLICY_TAG, garbage)
        with pytest.raises(
            PolicyError,
            match=rf"The policy of '{NAME}' .* {field}.*skillops policy <the recipe of {NAME}> --from-recipe",
        ):
            authority.judge(NAME, _register(tiny_bert, "refused"), Levels({None: 0.4, "1": 0.5}, 0.9))
        capsys.readouterr()
        assert cli(["policy", recipe]) == 1
        printed = capsys.readouterr()
        assert printed.err.count("\n") == 1 and "--from-recipe" in printed.err and "Traceback" not in printed.err
    client.delete_registered_model_tag(NAME, POLICY_TAG)
    with pytest.raises(
        PolicyError, match=rf"'{NAME}' has no policy in the gate's record but has a champion \(version 1\)"
    ):
        authority.first_policy(NAME, POLICY, "a run's recipe, as a reset would take it")
    assert registry.champion_version(NAME) == "1"
    assert cli(["policy", recipe, "--from-recipe", "--reason", "repaired after an incident"]) == 0
    assert authority.policy_changes(NAME)[-1]["why"] == "repaired after an incident"
    assert authority.judge(NAME, _register(tiny_bert, "after repair"), Levels({None: 0.4, "1": 0.5}, 0.9)).promote


def _recipe_file(store):
    path = store.parent / "registry-recipe.yaml"
    path.write_text(f"name: registry-test\nregistered_model_name: {NAME}\n", "utf-8")
    return path


def test_a_champion_that_moves_while_judging_is_judged_again(tiny_bert, mlflow_store):
    levels = {None: 0.4}
    authority = _gate()
    c1, c2, c3 = (_register(tiny_bert, name) for name in ("first", "second", "third"))
    v1 = authority.judge(NAME, c1, Levels(levels, 0.5)).served_version
    v2 = registry.served_copy(NAME, c2)  # another machine's promotion, about to move the alias
    levels.update({v1: 0.5, v2: 0.8})
    seen = []

    class AnotherRunPromotes(Levels):
        def reference(self, champion):
            found = super().reference(champion)
            if len(seen) == 1:  # another machine's run moves the alias right after this read
                runs.client().set_registered_model_alias(NAME, registry.CHAMPION, v2)
            return found

    decision = authority.judge(NAME, c3, AnotherRunPromotes(levels, 0.7, seen))
    # c3 beat v1 (0.7 > 0.5), but the re-check saw v2 (0.8): judged again, and refused.
    assert seen == [v1, v2]
    assert not decision.promote and decision.reference_version == v2
    assert registry.champion_version(NAME) == v2


def test_runs_left_running_by_a_dead_process_are_marked_failed(mlflow_store):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    crashed = runs.start_run("stale-test", "crashed", {}, {"skillops.pid": str(dead.pid)})
    alive = runs.start_run("stale-test", "this process", {})  # pid of this live process

    assert runs.fail_stale_runs("stale-test") == [crashed]
    found = {run_id: runs.client().get_run(run_id) for run_id in (crashed, alive)}
    assert found[crashed].info.status == "FAILED"
    assert f"process {dead.pid}" in found[crashed].data.tags["skillops.failure"]
    assert found[alive].info.status == "RUNNING"
    assert runs.fail_stale_runs("no-such-experiment") == []


def test_a_versions_scores_are_found_in_the_shared_store_from_another_folder(tiny_bert, mlflow_store):
    """Scores saved with a version live in its run's artifacts; a machine without the local copy
    (here: the local cache deleted) reads them from there instead of encoding the test set again,
    and only a snapshot nobody scored is scored."""
    import shutil

    version = _register(tiny_bert, "scored")
    scored = {"test": Levels.scores(0.6), "golden-descriptions": Levels.scores(0.5)}
    run_id = runs.client().get_model_version(registry.candidates(NAME), version).run_id
    score_cache.save_scores(run_id, "snap1", scored)
    shutil.rmtree(mlflow_store / score_cache.SCORE_CACHE)
    calls = []

    def score(model, eval_sets):
        calls.append(eval_sets)
        return {eval_set: Levels.scores(0.4) for eval_set in eval_sets}

    served = registry.served_copy(NAME, version)  # the copy shares its run's scores
    found, source = score_cache.version_scores(NAME, served, "snap1", list(scored), score)
    assert found == scored and calls == []
    assert source == f"cached scores of version {served} on eval snapshot snap1 (from the shared store)"
    again, source = score_cache.version_scores(NAME, served, "snap1", list(scored), score)
    assert again == scored and source.endswith("snap1") and calls == []  # the local copy now

    fresh, source = score_cache.version_scores(NAME, served, "snap2", ["test"], score)
    assert calls == [["test"]] and source.startswith(f"version {served} re-scored on eval snapshot snap2")
    assert fresh["test"] == Levels.scores(0.4)


def test_a_version_says_what_it_was_trained_with(tiny_bert, mlflow_store):
    """The search's result where it ran (best.*), else the recipe's training settings."""
    run_id = runs.start_run(
        "registry-test",
        "tuned",
        {"training.learning_rate": 5e-5, "training.batch_size": 32, "training.warmup_ratio": 0.0},
    )
    runs.log_params(run_id, {"best.learning_rate": 3e-5, "best.batch_size": 16})
    candidate = registry.register(tiny_bert, run_id, NAME, {})
    runs.end_run(run_id)
    served = registry.served_copy(NAME, candidate)
    assert registry.trained_with(NAME, served) == TunedParams(learning_rate=3e-5, batch_size=16, warmup_ratio=0.0)
