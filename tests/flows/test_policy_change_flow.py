"""A model whose champion was judged under the short-list metric (card 000's reranking) moves to
the whole vocabulary only by a recorded policy change: a run of the new recipe registers and is
refused, naming the evaluator; a maintainer takes the recipe's policy, with a reason; the next run
judges the candidate against the champion scored on the new sets, by the new metric."""

from __future__ import annotations

import json

import yaml

from helpers import seed_champion, tiny_recipe_yaml
from skillops import gate
from skillops.cli import main as cli
from train_esco import train_esco

WHOLE_VOCABULARY = {"evaluator": "information_retrieval", "primary_metric": "cosine_map", "short_list_negatives": 20}
STRONG = {"training.max_steps": 80, "training.learning_rate": 2e-3}


def test_a_model_moves_to_the_whole_vocabulary_by_a_recorded_policy_change(
    small_esco, tiny_bert, mlflow_store, tmp_path, prefect_harness, capsys
):
    recipe = tiny_recipe_yaml(tmp_path / "recipe.yaml", small_esco, tiny_bert)
    assert seed_champion(tiny_bert, "tiny-esco") == "1"  # promoted under the short-list policy
    assert gate.local().policy("tiny-esco").primary_metric == "map"

    written = yaml.safe_load(recipe.read_text())
    written["evaluation"] = WHOLE_VOCABULARY
    recipe.write_text(yaml.safe_dump(written))
    refused = train_esco(recipe=str(recipe), overrides={**STRONG, "training.seed": 3})
    assert not refused["promoted"] and refused["version"] == "2"
    assert "evaluation.evaluator: 'information_retrieval' (the model's: 'reranking')" in refused["reason"]

    assert cli(["policy", str(recipe), "--from-recipe", "--reason", "judge on the whole vocabulary"]) == 0
    changes = gate.local().policy_changes("tiny-esco")
    assert changes[-1]["why"] == "judge on the whole vocabulary"
    assert (changes[-1]["from"]["evaluator"], changes[-1]["to"]["evaluator"]) == ("reranking", "information_retrieval")

    moved = train_esco(recipe=str(recipe), overrides={**STRONG, "training.seed": 5})
    assert moved["version"] == "3" and moved["reason"].startswith("cosine_map ")

    def report_of(run: dict) -> dict:
        return json.loads((tmp_path / "outputs" / run["run_id"] / "evaluation.json").read_text("utf-8"))

    # The champion was scored on the new sets (by the refused run, which cached its scores on them),
    # never judged by its old short-list numbers.
    report = report_of(moved)
    snapshot = report["eval_fingerprint"]
    assert snapshot == report_of(refused)["eval_fingerprint"]
    assert report_of(refused)["champion_scores"].startswith(f"version 1 re-scored on eval snapshot {snapshot}")
    assert report["champion_scores"].startswith(f"cached scores of version 1 on eval snapshot {snapshot}")
    assert report["decision"]["reference_version"] == "1" and report["decision"]["metric"] == "cosine_map"
    assert {"cosine_map", "cosine_short_list_map"} <= set(report["scores"]["champion (v1)"])
