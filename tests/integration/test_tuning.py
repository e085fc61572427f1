"""The search in one process: the champion's parameters tried first, the storage's settings
checked before any trial, the noise-aware pruner and the standard error it weighs."""

from __future__ import annotations

import json
import threading

import numpy as np
import optuna
import pytest

from helpers import tiny_recipe_yaml
from skillops.config import TunedParams, load_recipe
from skillops.errors import RecipeError
from skillops.inputs import preparation
from skillops.tracking import runs
from skillops.training import tuning


def test_a_new_study_tries_the_champions_parameters_first(small_esco, tiny_bert, mlflow_store, tmp_path):
    recipe = load_recipe(str(tiny_recipe_yaml(tmp_path / "recipe.yaml", small_esco, tiny_bert, search={"n_trials": 1})))
    paths = preparation.write_task(preparation.build_task(recipe), tmp_path / "data", {})
    champion = TunedParams(learning_rate=3.3e-5, batch_size=8, warmup_ratio=0.05)
    run_id = runs.start_run(recipe.name, "search", {})
    best = tuning.tune(
        tuning.TrialWorker(
            recipe=recipe,
            data_dir=paths.directory,
            experiment=recipe.name,
            parent_run_id=run_id,
            output_dir=tmp_path / "tuning",
            study_name="first",
            attempt_dir=tmp_path / "a",
        ),
        first_trial=champion,
    )
    assert best == champion
    assert json.loads(runs.client().get_run(run_id).data.tags["skillops.first_trial"]) == champion.model_dump()
    # Outside the search space (batch size 64 is not among its sizes), it is not tried.
    outside = champion.model_copy(update={"batch_size": 64})
    best = tuning.tune(
        tuning.TrialWorker(
            recipe=recipe,
            data_dir=paths.directory,
            experiment=recipe.name,
            parent_run_id=run_id,
            output_dir=tmp_path / "tuning",
            study_name="second",
            attempt_dir=tmp_path / "b",
        ),
        first_trial=outside,
    )
    assert best.batch_size == 8


def test_an_unreachable_storage_is_named_before_any_trial(small_esco, tiny_bert, mlflow_store, tmp_path, monkeypatch):
    recipe = load_recipe(str(tiny_recipe_yaml(tmp_path / "recipe.yaml", small_esco, tiny_bert)))
    recipe = recipe.with_overrides({"search.storage": "postgresql://nobody@127.0.0.1:9/optuna"})
    with pytest.raises(RecipeError, match=r"search.storage: cannot open the Optuna storage postgresql://nobody@"):
        tuning.open_storage(tuning.storage_url(recipe.search, tmp_path))


def _open_together(url: str, openers: int) -> list[Exception]:
    """`openers` threads open the storage at `url` and create or load one study, all at once."""
    together = threading.Barrier(openers)
    failures: list[Exception] = []

    def open_it():
        together.wait()
        try:
            optuna.create_study(study_name="shared", storage=tuning.open_storage(url), load_if_exists=True)
        except Exception as error:
            failures.append(error)

    threads = [threading.Thread(target=open_it) for _ in range(openers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


def test_openers_of_a_new_storage_at_once_all_get_it(tmp_path):
    """A pool's workers open a new study's storage together; Optuna creates it check-then-create,
    so before the retry most of them failed on a table or version row another had just made."""
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / str(round_) / 'optuna.db'}"
        assert _open_together(url, openers=6) == []
        assert optuna.get_all_study_names(url) == ["shared"]


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
    from skillops.judging.evaluation import QueryScores

    values = [0.2, 0.4, 0.9, 0.5]
    scores = QueryScores(evaluator="reranking", ids=list("abcd"), slices=[""] * 4, per_query={"map": values})
    assert scores.standard_error("map") == pytest.approx(float(np.std(values, ddof=1) / 2))


def test_a_validation_point_is_reported_to_optuna_once(mlflow_store, recwarn):
    """A trial that runs more steps than planned (the taxonomy-aware batches hold fewer rows than
    the plan assumed) validates twice near its last point: steps 56 and 59 both round to point 4
    at 14 steps a point. The first is reported, the second only logged, and Optuna does not warn."""
    from types import SimpleNamespace

    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    run_id = runs.start_run("points", "trial", {})
    callback = tuning._pruning_callback(trial, evaluator=None, metric="map", run_id=run_id)
    args = SimpleNamespace(eval_steps=14)
    for step, score in ((14, 0.2), (28, 0.3), (42, 0.4), (56, 0.5), (59, 0.6)):
        callback.on_evaluate(args, SimpleNamespace(global_step=step), None, metrics={"eval_map": score})
    assert study.trials[0].intermediate_values == {1: 0.2, 2: 0.3, 3: 0.4, 4: 0.5}
    assert not [w for w in recwarn if "already reported" in str(w.message)]
    logged = runs.client().get_metric_history(run_id, "validation_map")
    assert [m.step for m in logged] == [14, 28, 42, 56, 59]
