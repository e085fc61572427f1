"""The gate with a real model: a candidate fine-tuned on shuffled positives (every training
occupation paired with another's skills) is refused, against the real, untouched test set."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import BUNDLED_ESCO, REPO
from skillops.config import BUILTIN_RECIPES_DIR, load_recipe
from skillops.inputs import preparation
from skillops.tracking import registry
from train_esco import train_esco

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _builtin_recipe_on_a_copy(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """The built-in ESCO recipe, untuned, one epoch, on a copy of the bundled sample to break."""
    esco = Path(shutil.copytree(BUNDLED_ESCO, tmp_path / f"esco-{name}"))
    recipe = yaml.safe_load((BUILTIN_RECIPES_DIR / "esco-occupation-skills.yaml").read_text("utf-8"))
    recipe.update(name=name, registered_model_name=name)
    recipe["data"]["path"] = str(esco)
    recipe["search"]["n_trials"] = 0
    recipe["training"]["epochs"] = 1
    # Served as fp32: these tests are about the data the gate sees; the served variants have their
    # own (test_served_variant_flow.py), and building them for MiniLM twice a test costs minutes.
    recipe["serving"] = {"variants": [], "prefer": "fp32"}
    recipe_file = tmp_path / f"{name}.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe), "utf-8")
    return esco, recipe_file


def test_a_candidate_trained_on_shuffled_positives_is_never_promoted(mlflow_store, tmp_path):
    esco, recipe_file = _builtin_recipe_on_a_copy(tmp_path, "shuffled")

    # Shuffle the skills of the training occupations only: validation and test stay real.
    split = preparation.build_task(load_recipe(recipe_file)).split
    relations_file = esco / "occupationSkillRelations_en.csv"
    relations = pd.read_csv(relations_file, dtype=str, keep_default_na=False)
    train_rows = relations.occupationUri.isin(split["train"])  # the split is by occupation URI
    relations.loc[train_rows, "skillUri"] = np.random.default_rng(0).permutation(
        relations.loc[train_rows, "skillUri"].to_numpy()
    )
    relations.drop_duplicates(["occupationUri", "skillUri"]).to_csv(relations_file, index=False)
    assert preparation.build_task(load_recipe(recipe_file)).split == split

    result = train_esco(recipe=str(recipe_file))

    assert not result["promoted"], result["reason"]
    assert registry.champion_version("shuffled") is None
    assert "worse than the base model's" in result["reason"] or "not significantly" in result["reason"]


def test_slices_travel_from_a_data_column_to_the_gate(tiny_bert, tmp_path):
    """`data.columns.slice` labels each query (here a made-up region per job description); the
    test set keeps the labels, training does not see them, and the gate compares slice by slice."""
    from skillops.config import parse_recipe
    from skillops.judging.evaluation import score_queries
    from skillops.judging.promotion import decide
    from skillops.training.modeling import load_model

    frame = pd.read_csv(REPO / "src" / "skillops" / "data" / "samples" / "job-skills.csv")
    descriptions = sorted(frame.job_description.unique())
    frame["region"] = frame.job_description.map(
        {text: ("north", "south")[i % 2] for i, text in enumerate(descriptions)}
    )
    frame.to_csv(tmp_path / "jobs.csv", index=False)
    recipe = parse_recipe(
        {
            "name": "sliced",
            "base_model": str(tiny_bert),
            "data": {
                "format": "table",
                "path": str(tmp_path / "jobs.csv"),
                "shape": "pairs",
                "columns": {"anchor": "job_description", "positive": "skill", "slice": "region"},
            },
            "evaluation": {"evaluator": "information_retrieval", "primary_metric": "cosine_ndcg_at_10"},
        },
        "test",
    )
    task = preparation.build_task(recipe)
    assert "slice" not in task.train.columns
    paths = preparation.write_task(task, tmp_path / "prepared", {})
    assert set(task.eval_sets["test"]["query_slices"].values()) == {"north", "south"}

    scores = score_queries(load_model(str(tiny_bert)), paths.eval_set("test"), recipe.evaluation, recipe.prompts)
    decision = decide(
        scores,
        scores,
        "champion",
        recipe.evaluation.primary_metric,
        recipe.evaluation.headline_metrics(),
        recipe.promotion,
    )
    assert set(decision.slices) == {"north", "south"}
    assert sum(s.queries for s in decision.slices.values()) == len(scores.ids)
    assert any(check.name == "slice north" for check in decision.checks)


def test_a_refresh_with_permuted_relations_is_refused_by_the_golden_set(mlflow_store, tmp_path):
    """A refresh whose relations give every occupation another's skills makes its own test split
    wrong in the same way; the frozen golden set of the built-in recipe still holds the truth."""
    esco, recipe_file = _builtin_recipe_on_a_copy(tmp_path, "golden")
    assert [golden.name for golden in load_recipe(recipe_file).evaluation.golden] == ["descriptions"]

    def golden_check(result) -> dict:
        report = json.loads((tmp_path / "outputs" / result["run_id"] / "evaluation.json").read_text("utf-8"))
        (check,) = [c for c in report["decision"]["checks"] if c["name"] == "golden descriptions"]
        return {**check, **report["decision"]["golden"]["descriptions"], "scores": report["golden"]["descriptions"]}

    first = train_esco(recipe=str(recipe_file))
    assert first["promoted"], first["reason"]
    passed = golden_check(first)
    assert passed["passed"] and passed["delta"] > 0.02, passed  # fine-tuning helps on descriptions too

    relations_file = esco / "occupationSkillRelations_en.csv"
    relations = pd.read_csv(relations_file, dtype=str, keep_default_na=False)
    occupations = sorted(relations.occupationUri.unique())
    another = {uri: occupations[(i + 1) % len(occupations)] for i, uri in enumerate(occupations)}
    relations["occupationUri"] = relations.occupationUri.map(another)
    relations.to_csv(relations_file, index=False)

    second = train_esco(recipe=str(recipe_file))

    assert not second["promoted"]
    assert registry.champion_version("golden") == "1"
    failed = golden_check(second)
    assert not failed["passed"] and failed["delta"] < -0.01, failed
    assert failed["reference"] == pytest.approx(passed["candidate"])  # the champion, on the same frozen set, as served
    report = (tmp_path / "outputs" / second["run_id"] / "evaluation.md").read_text("utf-8")
    assert f"FAIL: golden set 'descriptions' (91 queries): cosine_map {failed['candidate']:.4f}" in report
