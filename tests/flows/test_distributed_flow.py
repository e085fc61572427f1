"""A two-process training (torchrun, gloo on this CPU) goes through the flow and is judged by the
gate like any other."""

from __future__ import annotations

import json

import pytest

from helpers import tiny_recipe_yaml
from skillops.tracking import runs


@pytest.mark.usefixtures("prefect_harness")
def test_a_two_process_training_is_judged_like_any_other(small_esco, tiny_bert, mlflow_store, tmp_path):
    from train_esco import train_esco

    recipe = tiny_recipe_yaml(
        tmp_path / "recipe.yaml",
        small_esco,
        tiny_bert,
        training={"max_steps": 40, "learning_rate": 2e-3, "processes": 2, "batch_size": 4},
        search={"n_trials": 0},
    )
    result = train_esco(recipe=str(recipe))
    assert result["version"] == "1" and "the base model's" in result["reason"]
    version = runs.client().get_model_version("tiny-esco-candidates", "1")
    assert version.tags["skillops.decision"] == ("promoted" if result["promoted"] else "not promoted")
    assert json.loads(version.tags["skillops.decision_numbers"])["reference_name"] == "base model"
    assert runs.get_params(result["run_id"])["training.processes"] == "2"
