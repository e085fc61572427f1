"""Steps and time to the champion's test MAP: a retrain from the base model against one from the
champion (`training.init_from: champion`), in one run on the bundled sample of a built-in recipe.

    .venv/bin/python bench/warm_start.py [recipe] [--older 0.6]

The champion is the base model trained with the recipe's settings on an older slice of the
training rows (the first `--older` share: last week's data). Both retrains then train on all rows
with the same settings, scored on the test set at 12 points of the way. Prints the steps and
seconds each needs to reach the champion's test MAP and the from-base retrain's final test MAP,
and what the promotion gate (the recipe's policy, paired test on the test set's queries) says of
each retrain against the champion. Writes bench/results/warm_start.json and the two curves as
docs/images/warm_start.png (shown in the docs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
CHART = REPO / "docs" / "images" / "warm_start.png"
EVALS = 12


def curve(start_model: str, start_score: float, train: Path, recipe, test_set: Path, work: Path) -> dict:
    """Test scores at step 0 (`start_score`, the start model's) and EVALS points of a training,
    seconds of training alone per step, and the trained model's per-query test scores (what the
    gate judges)."""
    from transformers import TrainerCallback

    from skillops.judging.evaluation import score_queries, scorer
    from skillops.training.modeling import load_model
    from skillops.training.trainer import TrainingSpec, train_model

    metric = recipe.evaluation.primary_metric
    scoring = {"seconds": 0.0}

    class TimeEvaluations(TrainerCallback):  # the curve's own cost is not the training's
        def on_step_end(self, args, state, control, **kwargs):
            if control.should_evaluate:
                scoring["began"] = time.perf_counter()

        def on_evaluate(self, args, state, control, **kwargs):
            scoring["seconds"] += time.perf_counter() - scoring.pop("began", time.perf_counter())

    config = recipe.training.model_copy(update={"evals_during_training": EVALS})
    started = time.perf_counter()
    result = train_model(
        TrainingSpec(
            base_model=start_model,
            train_path=train,
            config=config,
            loss=recipe.loss,
            prompts=recipe.prompts,
            output_dir=work,
            label=f"from {Path(start_model).name}",
        ),
        evaluator=scorer(test_set, recipe.evaluation, recipe.prompts),
        callbacks=[TimeEvaluations()],
    )
    training_seconds = time.perf_counter() - started - scoring["seconds"]
    history = json.loads(result.log_history.read_text())
    points = [(0, start_score)] + [(e["step"], e[f"eval_{metric}"]) for e in history if f"eval_{metric}" in e]
    final = score_queries(load_model(str(result.model_dir)), test_set, recipe.evaluation, recipe.prompts)
    if points[-1][0] != result.steps:
        points.append((result.steps, final.metric(metric)))
    return {
        "points": points,
        "steps": result.steps,
        "seconds_per_step": training_seconds / result.steps,
        "final": final,
    }


def reached(run: dict, target: float) -> dict:
    step = next((step for step, score in run["points"] if score >= target - 1e-9), None)
    return {"step": step, "seconds": None if step is None else round(step * run["seconds_per_step"], 1)}


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import torch

    from skillops.config import load_recipe
    from skillops.inputs import preparation
    from skillops.judging.evaluation import evaluate, score_queries
    from skillops.judging.promotion import decide
    from skillops.training.modeling import load_model
    from skillops.training.trainer import TrainingSpec, train_model

    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("recipe", nargs="?", default="esco-occupation-skills")
    cli.add_argument("--older", type=float, default=0.6, help="share of the training rows the champion saw")
    arguments = cli.parse_args()
    recipe = load_recipe(arguments.recipe)
    metric = recipe.evaluation.primary_metric
    with tempfile.TemporaryDirectory(prefix="bench-warm-start-") as tmp:
        work = Path(tmp)
        paths = preparation.write_task(preparation.build_task(recipe), work / "data", {})
        rows = pd.read_parquet(paths.train)
        older = work / "older.parquet"
        rows.iloc[: int(len(rows) * arguments.older)].to_parquet(older)
        print(
            f"champion: {recipe.base_model} trained on {len(rows) * arguments.older:.0f} of {len(rows)} rows",
            flush=True,
        )
        champion = train_model(
            TrainingSpec(
                base_model=recipe.base_model,
                train_path=older,
                config=recipe.training,
                loss=recipe.loss,
                prompts=recipe.prompts,
                output_dir=work / "champion",
                label="champion",
            )
        ).model_dir
        test_set = paths.eval_set("test")
        champion_scores = score_queries(load_model(str(champion)), test_set, recipe.evaluation, recipe.prompts)
        target = champion_scores.metric(metric)
        print("retrain from the base model on all rows", flush=True)
        base_score = evaluate(
            load_model(recipe.base_model, recipe.training.max_seq_length), test_set, recipe.evaluation, recipe.prompts
        )[metric]
        base = curve(recipe.base_model, base_score, paths.train, recipe, test_set, work / "from-base")
        print("retrain from the champion on all rows", flush=True)
        warm = curve(str(champion), target, paths.train, recipe, test_set, work / "from-champion")

    gate = {
        start: decide(
            run["final"], champion_scores, "champion", metric, recipe.evaluation.headline_metrics(), recipe.promotion
        )
        for start, run in (("from_base", base), ("from_champion", warm))
    }
    full = base["points"][-1][1]
    result = {
        "recipe": recipe.name,
        "metric": f"test {metric}",
        "champion_score": round(target, 4),
        "from_base_final_score": round(full, 4),
        "from_champion_final_score": round(warm["points"][-1][1], 4),
        "total_steps": base["steps"],
        "to_champion_score": {"from_base": reached(base, target), "from_champion": reached(warm, target)},
        "to_from_base_final_score": {"from_base": reached(base, full), "from_champion": reached(warm, full)},
        "gate_on_test_set": {
            start: {"promote": decision.promote, "p_value": decision.p_value, "reason": decision.reason}
            for start, decision in gate.items()
        },
        "curves": {"from_base": base["points"], "from_champion": warm["points"]},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"load {os.getloadavg()[0]:.2f} at the end",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "warm_start.json").write_text(json.dumps(result, indent=1) + "\n", "utf-8")
    figure, axes = plt.subplots(figsize=(7, 4))
    for name, run in (("from the base model", base), ("from the champion", warm)):
        axes.plot(*zip(*run["points"], strict=True), marker="o", label=name)
    axes.axhline(target, color="grey", linestyle="--", label="champion")
    axes.set(xlabel="training step", ylabel=f"test {metric}", title=f"Retraining {recipe.name} on all rows")
    axes.legend()
    figure.tight_layout()
    figure.savefig(CHART, dpi=120)

    print(
        f"\ntest {metric}: champion {target:.4f}; after {base['steps']} steps: from base {full:.4f}, "
        f"from champion {result['from_champion_final_score']:.4f}"
    )
    for label, goal in (
        ("champion's score", "to_champion_score"),
        ("from-base final score", "to_from_base_final_score"),
    ):
        for start in ("from_base", "from_champion"):
            hit = result[goal][start]
            where = "not reached" if hit["step"] is None else f"step {hit['step']} ({hit['seconds']} s of training)"
            print(f"to the {label:22} {start.replace('_', ' '):14} {where}")
    for start, decision in gate.items():
        verdict = "promote" if decision.promote else "keep the champion"
        print(f"gate, retrain {start.replace('_', ' ')}: {verdict} ({decision.reason})")
    print(f"Written to {RESULTS / 'warm_start.json'} and {CHART}")


if __name__ == "__main__":
    main()
