"""A few bad inputs of `tests/integration/test_bad_inputs.py`, one of each kind (raw ESCO files,
a table's scores, what preparation builds, a golden set), through the whole train-esco flow
against a store with a champion: refused before training, the MLflow run closed FAILED with the
reason, no new version, the champion unchanged. And settings the flow cannot run are refused
before any MLflow run."""

import mlflow
import pytest

from bad_inputs import MODEL_NAME, assert_refused, bad_recipe
from helpers import tiny_recipe_yaml
from skillops.errors import DataError, RecipeError
from train_esco import train_esco

pytestmark = pytest.mark.usefixtures("prefect_harness")
END_TO_END = ["relation to a missing skill", "score 1.7", "train/eval leakage", "golden query also in training"]


@pytest.mark.parametrize("case", END_TO_END)
def test_bad_input_stops_the_flow_before_training(case, store_with_champion, small_esco, tiny_bert, tmp_path):
    with pytest.raises(DataError) as error:
        train_esco(recipe=str(bad_recipe(case, tmp_path, small_esco, tiny_bert)))
    assert_refused(str(error.value), case, store_with_champion)
    run = mlflow.search_runs(experiment_names=[MODEL_NAME], order_by=["start_time DESC"]).iloc[0]
    assert run.status == "FAILED" and "Error" in run["tags.skillops.failure"]


def test_trial_workers_of_the_pool_without_their_deployment_are_refused_first(
    store_with_champion, small_esco, tiny_bert, tmp_path
):
    """`search.workers: pool` on a Prefect server without the tune-trials deployment (no worker
    could take a trial run): refused before any MLflow run, naming the setting and the fix."""
    path = tiny_recipe_yaml(
        tmp_path / "recipe.yaml", small_esco, tiny_bert, name=MODEL_NAME, registered_model_name=MODEL_NAME
    )
    runs_before = len(mlflow.search_runs(experiment_names=[MODEL_NAME]))
    overrides = {"search.parallel": 2, "search.workers": "pool", "search.storage": "postgresql://team@db/optuna"}
    with pytest.raises(
        RecipeError,
        match=r"search.workers = pool, but the Prefect server has no deployment tune-trials/pool: deploy prefect.yaml",
    ):
        train_esco(recipe=str(path), overrides=overrides)
    assert len(mlflow.search_runs(experiment_names=[MODEL_NAME])) == runs_before
