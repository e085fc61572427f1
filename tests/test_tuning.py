"""The search's study outlives the process that runs it: killed mid-trial and started again, it
keeps its finished trials, fails the killed one by its stale heartbeat and runs it again, and
ends with n_trials finished. A storage that cannot be opened is named before any trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import optuna
import pytest

from helpers import BIN, REPO, tiny_recipe_yaml
from skillops import preparation, tracking, tuning
from skillops.config import load_recipe
from skillops.errors import RecipeError

N_TRIALS = 3
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
RETRY = optuna.storages.RetryHeartbeatStaleTrialCallback
# Run in a process of its own, so that it can be killed: tune the recipe once, print the result.
SEARCH = """
import sys
from pathlib import Path
from skillops import preparation, tracking, tuning
from skillops.config import load_recipe

recipe = load_recipe(sys.argv[1])
work = Path(sys.argv[2])
paths = preparation.write_task(preparation.build_task(recipe), work / "data", {})
run_id = tracking.start_run(recipe.name, "search", {})
print(tuning.tune(recipe, paths, recipe.name, run_id, work / "tuning", "tiny-study", work / "attempt"))
"""


def _search(recipe: Path, work: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "python"), "-c", SEARCH, str(recipe), str(work)],
        env={**{k: v for k, v in os.environ.items() if k != "SKILLOPS_OPTUNA_STORAGE"}, **(env or {})},
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )


def _trials(work: Path, storage: str | None = None) -> list[optuna.trial.FrozenTrial]:
    storage = storage or f"sqlite:///{work / 'attempt' / 'optuna.db'}"
    try:
        return optuna.load_study(study_name="tiny-study", storage=storage).get_trials()
    except Exception:  # the study or its database is not created yet
        return []


def _flow(recipe: Path, work: Path, log: Path) -> subprocess.Popen:
    """`python flows/train_esco.py <recipe>`, in a session of its own (with its temporary Prefect
    server) so that a test can kill all of it."""
    env = {k: v for k, v in os.environ.items() if k not in ("SKILLOPS_OPTUNA_STORAGE", "PREFECT_API_URL")}
    env.update(SKILLOPS_OUTPUTS_DIR=str(work / "outputs"), PREFECT_HOME=str(work / "prefect-home"))
    return subprocess.Popen(
        [str(BIN / "python"), str(REPO / "flows" / "train_esco.py"), str(recipe)],
        env=env,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _attempt_trials(work: Path) -> list[optuna.trial.FrozenTrial]:
    """The trials of the study in the flow's attempt folder (none before it exists)."""
    for database in (work / "outputs" / "attempts").glob("*/optuna.db"):
        storage = f"sqlite:///{database}"
        try:
            (name,) = optuna.get_all_study_names(storage)
            return optuna.load_study(study_name=name, storage=storage).get_trials()
        except Exception:  # the study is being created
            return []
    return []


@pytest.mark.slow
def test_a_pipeline_killed_during_tuning_continues_its_study(small_esco, tiny_bert, mlflow_store, tmp_path):
    """The flow SIGKILLed (with its Prefect server) mid-trial and run again: the same study goes
    on, its finished trials reused, not rerun; the killed trial failed and run again."""
    recipe = tiny_recipe_yaml(
        tmp_path / "recipe.yaml",
        small_esco,
        tiny_bert,
        training={"max_steps": 40},
        search={"n_trials": N_TRIALS, "epochs": 2, "evals_per_trial": 4},
    )
    log = tmp_path / "first.log"
    first = _flow(recipe, tmp_path, log)
    states = optuna.trial.TrialState
    deadline = time.monotonic() + 400
    while not (
        any(t.state in FINISHED for t in _attempt_trials(tmp_path))
        and any(t.state == states.RUNNING for t in _attempt_trials(tmp_path))
    ):
        assert first.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    kept = {t.number for t in _attempt_trials(tmp_path) if t.state in FINISHED}
    (killed,) = [t for t in _attempt_trials(tmp_path) if t.state == states.RUNNING]

    # Once its heartbeat is older than the grace period, the next run fails it and runs it again.
    second = _flow(recipe, tmp_path, tmp_path / "second.log")
    assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]

    # The attempt's folder (and its study) is gone with the success: the trials are in MLflow.
    client = tracking.client()
    experiment = client.get_experiment_by_name("tiny-esco").experiment_id
    (rerun,) = client.search_runs([experiment], "tags.skillops.kind = 'pipeline' and attributes.status = 'FINISHED'")
    assert f"{len(kept)} of {N_TRIALS} trials were already finished" in rerun.data.tags["skillops.tuning"]
    trial_runs = client.search_runs([experiment], "tags.skillops.trial_state != ''")
    again = [r for r in trial_runs if r.data.tags["mlflow.parentRunId"] == rerun.info.run_id]
    # The kept trials were not run again; the killed one was, with its parameters; n_trials finished in all.
    assert {f"trial-{number}" for number in kept}.isdisjoint(r.info.run_name for r in again)
    retry = {k: str(v) for k, v in killed.params.items()}
    assert any({k: r.data.params[k] for k in retry} == retry for r in again)
    assert len(trial_runs) >= N_TRIALS


@pytest.mark.slow
def test_two_workers_share_a_study_in_postgresql(small_esco, tiny_bert, mlflow_store, tmp_path, postgres, monkeypatch):
    """search.parallel: 2 against PostgreSQL: the trials of both workers run at the same time; the
    second worker is SIGKILLed mid-trial, and the study still ends with n_trials finished, the
    killed trial failed and run again, no finished trial lost."""
    url, pgpass = postgres
    monkeypatch.setenv("PGPASSFILE", str(pgpass))  # for this process's reads of the study too
    recipe = tiny_recipe_yaml(
        tmp_path / "recipe.yaml",
        small_esco,
        tiny_bert,
        # Trials of several seconds: the second worker needs a few to start (imports).
        training={"max_steps": 300},
        search={"n_trials": 6, "epochs": 50, "evals_per_trial": 3, "parallel": 2, "storage": url},
    )
    log = tmp_path / "search.log"
    search = _search(recipe, tmp_path, log, {"PGPASSFILE": str(pgpass)})
    states = optuna.trial.TrialState
    deadline = time.monotonic() + 300

    def running():
        return [t for t in _trials(tmp_path, url) if t.state == states.RUNNING and "pid" in t.user_attrs]

    while len({t.user_attrs["pid"] for t in running()}) < 2:  # both workers in a trial at once
        assert search.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    (killed,) = [t for t in running() if t.user_attrs["pid"] != search.pid]
    finished_before = {t.number: t.datetime_start for t in _trials(tmp_path, url) if t.state in FINISHED}
    os.kill(killed.user_attrs["pid"], signal.SIGKILL)
    assert search.wait(timeout=600) == 0, log.read_text()[-3000:]

    trials = _trials(tmp_path, url)
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) >= 6
    assert {t.number: t.datetime_start for t in finished if t.number in finished_before} == finished_before
    assert next(t for t in trials if t.number == killed.number).state == states.FAIL
    retried = [t for t in trials if RETRY.retried_trial_number(t) == killed.number]
    assert retried and retried[0].state in FINISHED and retried[0].params == killed.params
    # Each trial is an MLflow child run of the search's run, and two of them ran side by side.
    client = tracking.client()  # this test's store (mlflow's global URI may be an earlier test's)
    runs = client.search_runs(
        [client.get_experiment_by_name("tiny-esco").experiment_id], "tags.mlflow.parentRunId != ''"
    )
    spans = [(r.info.start_time, r.info.end_time or float("inf")) for r in runs]
    assert len(runs) >= 7 and any(a < d and c < b for i, (a, b) in enumerate(spans) for c, d in spans[i + 1 :])


def test_a_new_study_tries_the_champions_parameters_first(small_esco, tiny_bert, mlflow_store, tmp_path):
    recipe = load_recipe(str(tiny_recipe_yaml(tmp_path / "recipe.yaml", small_esco, tiny_bert, search={"n_trials": 1})))
    paths = preparation.write_task(preparation.build_task(recipe), tmp_path / "data", {})
    champion = {"learning_rate": 3.3e-5, "batch_size": 8, "warmup_ratio": 0.05}
    run_id = tracking.start_run(recipe.name, "search", {})
    best = tuning.tune(recipe, paths, recipe.name, run_id, tmp_path / "tuning", "first", tmp_path / "a", champion)
    assert best == champion
    assert json.loads(tracking.client().get_run(run_id).data.tags["skillops.first_trial"]) == champion
    # Outside the search space (batch size 64 is not among its sizes), it is not tried.
    outside = {**champion, "batch_size": 64}
    best = tuning.tune(recipe, paths, recipe.name, run_id, tmp_path / "tuning", "second", tmp_path / "b", outside)
    assert best["batch_size"] == 8


def test_an_unreachable_storage_is_named_before_any_trial(small_esco, tiny_bert, mlflow_store, tmp_path, monkeypatch):
    recipe = load_recipe(str(tiny_recipe_yaml(tmp_path / "recipe.yaml", small_esco, tiny_bert)))
    recipe = recipe.with_overrides({"search.storage": "postgresql://nobody@127.0.0.1:9/optuna"})
    with pytest.raises(RecipeError, match=r"search.storage: cannot open the Optuna storage postgresql://nobody@"):
        tuning.open_storage(tuning.storage_url(recipe.search, tmp_path))


def test_a_password_in_the_storage_url_is_refused(small_esco, tiny_bert, tmp_path):
    recipe = load_recipe(str(tiny_recipe_yaml(tmp_path / "recipe.yaml", small_esco, tiny_bert)))
    secret = "-".join(["not", "a", "password"])
    with pytest.raises(RecipeError, match="carries a password") as refused:
        # Put together at run time, so that no URI with a password is in the code.
        recipe.with_overrides({"search.storage": "postgresql://user" + ":" + secret + "@db/optuna"})
    assert secret not in str(refused.value)


def test_the_storage_defaults_to_the_attempt_folder(tmp_path, monkeypatch, small_esco, tiny_bert):
    recipe = load_recipe(str(tiny_recipe_yaml(tmp_path / "recipe.yaml", small_esco, tiny_bert)))
    monkeypatch.delenv("SKILLOPS_OPTUNA_STORAGE", raising=False)
    assert tuning.storage_url(recipe.search, tmp_path / "attempt") == f"sqlite:///{tmp_path / 'attempt' / 'optuna.db'}"
    monkeypatch.setenv("SKILLOPS_OPTUNA_STORAGE", "postgresql://team@db/optuna")
    assert tuning.storage_url(recipe.search, tmp_path / "attempt") == "postgresql://team@db/optuna"


def test_the_noise_aware_pruner_stops_only_trials_behind_by_more_than_their_standard_error():
    """Against a first trial at 0.60: 0.57 with a standard error of 0.05 could be as good (kept;
    Optuna's median rule stops it), 0.50 with the same standard error is behind (stopped)."""
    from skillops.config import SearchConfig

    def study(pruner: str) -> optuna.Study:
        made = optuna.create_study(direction="maximize", pruner=tuning.make_pruner(SearchConfig(pruner=pruner)))
        first = made.ask()
        first.report(0.60, 1)
        made.tell(first, 0.62)
        return made

    def stopped(made: optuna.Study, score: float) -> bool:
        trial = made.ask()
        trial.set_user_attr("validation_stderr_1", 0.05)
        trial.report(score, 1)
        return trial.should_prune()

    assert not stopped(study("noise_aware_median"), 0.57)
    assert stopped(study("noise_aware_median"), 0.50)
    assert stopped(study("median"), 0.57)
    assert not stopped(study("none"), 0.10)


def test_the_standard_error_of_a_ranking_metric_is_that_of_its_mean_over_queries():
    from skillops.evaluation import QueryScores

    values = [0.2, 0.4, 0.9, 0.5]
    scores = QueryScores(evaluator="reranking", ids=list("abcd"), slices=[""] * 4, per_query={"map": values})
    assert scores.standard_error("map") == pytest.approx(float(np.std(values, ddof=1) / 2))
