"""The train-esco flow end to end on tiny data, against a real temporary MLflow store."""

import json

import mlflow
import pytest

from helpers import set_cell, tiny_recipe_yaml
from skillops.errors import DataValidationError
from skillops.training.modeling import load_model
from train_esco import train_esco

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _versions(name):
    """The candidates' tags by version, and the served model's aliases."""
    from skillops.tracking.runs import client

    mlflow_client = client()
    versions = mlflow_client.search_model_versions(f"name = '{name}-candidates'")
    served = mlflow_client.search_model_versions(f"name = '{name}'")
    aliases = mlflow_client.get_registered_model(name).aliases if served else {}
    return {int(v.version): v.tags for v in versions}, aliases


def test_two_runs_register_two_versions_and_gate_the_champion(
    small_esco, tiny_bert, mlflow_store, tmp_path, monkeypatch
):
    from skillops.stages import evaluation, shared, training

    loaded = []  # which model folders the stages load: the trained one once, for scoring and registering
    for stage in (evaluation, shared, training):
        monkeypatch.setattr(stage, "load_model", lambda path, *rest: loaded.append(path) or load_model(path, *rest))
    # A random tiny model trained with a high learning rate reliably beats its own untrained self.
    recipe = tiny_recipe_yaml(
        tmp_path / "recipe.yaml",
        small_esco,
        tiny_bert,
        training={"max_steps": 80, "learning_rate": 2e-3},
        search={"learning_rate": [1e-3, 3e-3]},
    )

    first = train_esco(recipe=str(recipe))
    versions, aliases = _versions("tiny-esco")
    assert first["promoted"], first["reason"]
    assert first["version"] == "1" and set(versions) == {1} and first["served_version"] == "1"
    assert str(aliases["champion"]) == "1"
    assert versions[1]["skillops.decision"] == "promoted"
    assert "beats the base model's" in versions[1]["skillops.decision_reason"]
    assert versions[1]["skillops.eval_fingerprint"] and versions[1]["skillops.git_commit"]
    assert len([path for path in loaded if path.endswith("/train/model")]) == 1, loaded

    # One step at a vanishing learning rate: the candidate is about the base model, so it loses.
    weak = {"search.n_trials": 0, "training.max_steps": 1, "training.learning_rate": 1e-9}
    second = train_esco(recipe=str(recipe), overrides=weak)
    versions, aliases = _versions("tiny-esco")
    assert second["version"] == "2" and set(versions) == {1, 2}
    assert not second["promoted"]
    assert str(aliases["champion"]) == "1"
    assert versions[2]["skillops.decision"] == "not promoted"
    assert "the champion's" in versions[2]["skillops.decision_reason"]
    assert versions[2]["skillops.previous_champion"] == "1"

    # The same data, recipe and code again: a skip is recorded, nothing is trained or registered.
    third = train_esco(recipe=str(recipe), overrides=weak)
    assert third["skipped"] and third["same_as_run"] == second["run_id"]
    assert set(_versions("tiny-esco")[0]) == {1, 2}

    runs = mlflow.search_runs(experiment_names=["tiny-esco"])
    assert runs.set_index("run_id")["tags.skillops.kind"][third["run_id"]] == "skip"
    runs = runs[runs["tags.skillops.kind"] != "skip"]
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    trials = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert set(parents.status) == {"FINISHED"} and len(parents) == 2
    assert len(trials) == 2  # the first run's two trials, each a child run; the second did not tune
    second_run = parents[parents.run_id == second["run_id"]].iloc[0]
    # The second run scored the champion on its own test set, next to base and candidate; the
    # first run had cached version 1's per-query scores on this snapshot, so none was re-encoded.
    assert second_run["metrics.champion_map"] > second_run["metrics.test_map"]
    assert second_run["metrics.champion_map"] == pytest.approx(float(versions[1]["test_map"]), abs=1e-6)
    assert second_run["tags.skillops.judged_against"] == "1"
    # The same base model on the same eval snapshot: its scores were kept, not encoded again.
    assert second_run["tags.skillops.base_scores"].startswith("cached scores of the base model")
    assert second_run["metrics.base_map"] == pytest.approx(
        parents.set_index("run_id")["metrics.base_map"][first["run_id"]]
    )
    assert parents["metrics.base_map"].notna().all()
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(first["run_id"], "report")}
    assert {
        f"report/{name}"
        for name in ("evaluation.md", "evaluation.json", "per_query.json", "model_card.md", "comparison.png")
    } <= artifacts
    assert "charts/loss_curve.png" in {a.path for a in mlflow.MlflowClient().list_artifacts(first["run_id"], "charts")}
    report = json.loads(mlflow.artifacts.load_text(f"runs:/{second['run_id']}/report/evaluation.json"))
    assert report["decision"]["reference_version"] == "1" and report["decision"]["p_value"] is not None
    assert report["champion_scores"].startswith("cached scores of version 1")
    card = mlflow.artifacts.load_text(f"runs:/{first['run_id']}/report/model_card.md")
    assert "# tiny-esco candidate 1 (served as version 1)" in card and "CC BY 4.0" in card

    # What the MLflow UI shows: a model-training experiment, the data sets each run used (the
    # Dataset column), GX's Data Docs, Optuna's views and a version description from the card.
    client = mlflow.MlflowClient()
    assert client.get_experiment_by_name("tiny-esco").tags["mlflow.experimentKind"] == "custom_model_development"
    inputs = client.get_run(first["run_id"]).inputs.dataset_inputs
    contexts = {i.tags[0].value: i.dataset for i in inputs if i.tags and i.tags[0].key == "mlflow.data.context"}
    assert set(contexts) == {"training", "validation", "test"}
    assert all(dataset.digest for dataset in contexts.values())
    assert contexts["test"].digest == versions[1]["skillops.eval_fingerprint"]
    assert json.loads(contexts["training"].source)["uri"] == str(small_esco)
    for name in ("inputs", "prepared"):
        docs = {a.path for a in client.list_artifacts(first["run_id"], f"validation/data_docs/{name}")}
        assert f"validation/data_docs/{name}/index.html" in docs, docs
    tuning = {a.path for a in client.list_artifacts(first["run_id"], "tuning")}
    assert {f"tuning/optuna_{view}.png" for view in ("history", "importances", "parallel_coordinate")} <= tuning
    description = client.get_model_version("tiny-esco", "1").description
    assert "Promoted: map" in description and first["run_id"] in description
    # The UI's user and Source columns: the account (the local user here) and what ran it.
    tags = client.get_run(first["run_id"]).data.tags
    assert tags["mlflow.user"].endswith("(local store)") and tags["mlflow.source.type"] in ("JOB", "LOCAL")
    assert tags["mlflow.source.git.commit"] == versions[1]["skillops.git_commit"]

    # Warm start: from the champion, one vanishing step keeps the champion's weights, so the
    # candidate scores as the champion does (not as the base model), and the gate keeps it. Not
    # to the last digit: that step still nudges each weight by about 1e-9, enough to swap two
    # near-tied skills in a ranking of a random tiny model (CI saw 1.1e-5 once, 2026-12-06).
    warm = {**weak, "training.init_from": "champion", "promotion.min_delta": 0.001}
    fourth = train_esco(recipe=str(recipe), overrides=warm)
    assert not fourth["promoted"] and fourth["version"] == "3"
    run = client.get_run(fourth["run_id"])
    assert run.data.tags["skillops.init_from"] == "champion version 1"
    assert run.data.metrics["test_map"] == pytest.approx(run.data.metrics["champion_map"], abs=1e-3)
    assert abs(run.data.metrics["test_map"] - run.data.metrics["base_map"]) > 0.01


def test_broken_data_stops_before_training_and_registers_nothing(esco_copy, tiny_bert, mlflow_store, tmp_path):
    set_cell(esco_copy / "skills_en.csv", 0, "preferredLabel", "")
    recipe = tiny_recipe_yaml(tmp_path / "recipe.yaml", esco_copy, tiny_bert)

    with pytest.raises(DataValidationError, match="skills_en.csv: column 'preferredLabel'"):
        train_esco(recipe=str(recipe))

    assert _versions("tiny-esco") == ({}, {})
    runs = mlflow.search_runs(experiment_names=["tiny-esco"])
    assert list(runs.status) == ["FAILED"]
    assert "DataValidationError" in runs["tags.skillops.failure"].iloc[0]
    assert not (mlflow_store.parent / "outputs" / "attempts").exists()  # no tuning, no training
