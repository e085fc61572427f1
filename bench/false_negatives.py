"""What taxonomy-aware batches buy: each recipe trained with them and without (sentence-transformers'
NO_DUPLICATES batches), the same budget (the recipe's settings, one epoch), over several seeds;
test and golden primary metric (mean and standard deviation over the seeds), the share of false
in-batch negatives, and training throughput.

    .venv/bin/python bench/false_negatives.py [recipe ...] [--seeds 1 2 3] [--epochs 1] [--epochs-of job-skills=0.25]

Defaults: the bundled ESCO sample (card 000), job-skills (card 004) and course-skill-retrieval
(card 001, mined hard negatives), on the recipes' own all-MiniLM-L6-v2, no tuning. `--epochs-of`
gives one recipe a smaller budget (both samplers get the same). Writes
bench/results/false_negatives.json and prints the table, with a verdict per recipe: is the test
gain larger than the seeds' spread (the larger of the two standard deviations)?
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "false_negatives.json"
DEFAULT = ["esco-occupation-skills", "job-skills", "course-skill-retrieval"]


def bench_recipe(name: str, seeds: list[int], epochs: float, tmp: Path) -> list[dict]:
    from datasets import Dataset

    from skillops.config import load_recipe
    from skillops.inputs import preparation
    from skillops.judging.evaluation import evaluate
    from skillops.training.batches import false_negative_shares
    from skillops.training.modeling import load_model
    from skillops.training.trainer import TrainingSpec, train_model

    recipe = load_recipe(name)
    task = preparation.build_task(recipe)
    if recipe.data.mine_negatives is not None:
        task = preparation.Task(
            preparation.mine_negatives(task.train, recipe), task.eval_sets, task.split, task.documents
        )
    paths = preparation.write_task(task, tmp / name / "data", {})
    metric = recipe.evaluation.primary_metric
    gate_sets = ["test", *(preparation.golden_part(g.name) for g in recipe.evaluation.golden)]
    rows = []
    for seed in seeds:
        for aware in (False, True):
            config = recipe.training.model_copy(
                update={"seed": seed, "epochs": epochs, "taxonomy_aware_batches": aware}
            )
            shares = false_negative_shares(Dataset.from_parquet(str(paths.train)), config.batch_size, 1, aware, seed)
            spec = TrainingSpec.for_recipe(
                recipe,
                paths.train,
                tmp / name / f"seed-{seed}-{'aware' if aware else 'plain'}",
                config,
                label=f"{name} seed {seed} {'taxonomy-aware' if aware else 'no-duplicates'}",
            )
            started = time.perf_counter()
            result = train_model(spec)
            seconds = time.perf_counter() - started
            model = load_model(str(result.model_dir), recipe.training.max_seq_length)
            scores = {
                s: evaluate(model, paths.eval_set(s), recipe.evaluation, recipe.prompts)[metric] for s in gate_sets
            }
            rows.append(
                {
                    "recipe": name,
                    "seed": seed,
                    "sampler": "taxonomy-aware" if aware else "no-duplicates",
                    "metric": metric,
                    **scores,
                    "false_negative_share": shares["false_in_batch_negatives_share"],
                    "steps": result.steps,
                    "seconds": seconds,
                    "samples_per_s": len(task.train) * epochs / seconds,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def summary(rows: list[dict]) -> list[str]:
    lines = [
        "| recipe | sampler | metric | test mean ± sd | golden mean ± sd | false negatives | steps | samples/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        for sampler in ("no-duplicates", "taxonomy-aware"):
            group = [r for r in rows if r["recipe"] == recipe and r["sampler"] == sampler]
            golden = [k for k in group[0] if k.startswith("golden-")]

            def spread(key, group=group):
                values = [r[key] for r in group]
                return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0:.4f}"

            lines.append(
                f"| {recipe} | {sampler} | {group[0]['metric']} | {spread('test')} | "
                f"{spread(golden[0]) if golden else '-'} | {statistics.mean(r['false_negative_share'] for r in group):.2%} | "
                f"{statistics.mean(r['steps'] for r in group):.0f} | {statistics.mean(r['samples_per_s'] for r in group):.1f} |"
            )
    return lines


def verdicts(rows: list[dict]) -> list[str]:
    """Per recipe: the taxonomy-aware sampler's test gain against the seeds' spread."""
    lines = ["| recipe | test gain (aware - no-duplicates) | larger sd | gain > spread |", "|---|---|---|---|"]
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        test = {
            sampler: [r["test"] for r in rows if r["recipe"] == recipe and r["sampler"] == sampler]
            for sampler in ("no-duplicates", "taxonomy-aware")
        }
        gain = statistics.mean(test["taxonomy-aware"]) - statistics.mean(test["no-duplicates"])
        spread = max(statistics.stdev(values) if len(values) > 1 else 0.0 for values in test.values())
        lines.append(f"| {recipe} | {gain:+.4f} | {spread:.4f} | {'yes' if gain > spread else 'no'} |")
    return lines


def main(names: list[str], seeds: list[int], epochs: float, epochs_of: dict[str, float]) -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-false-negatives-") as tmp:
        for name in names:
            rows += bench_recipe(name, seeds, epochs_of.get(name, epochs), Path(tmp))
    table = summary(rows) + [""] + verdicts(rows)
    machine = f"{os.cpu_count()} CPU cores, {platform.machine()}, no GPU"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"rows": rows, "table": table, "epochs": epochs, "epochs_of": epochs_of, "machine": machine}, indent=1
        ),
        "utf-8",
    )
    print("\n".join(table))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", default=DEFAULT)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--epochs-of", nargs="*", default=[], metavar="RECIPE=EPOCHS", help="a recipe's own budget")
    arguments = parser.parse_args()
    budgets = {name: float(value) for name, value in (item.split("=", 1) for item in arguments.epochs_of)}
    main(arguments.recipes, arguments.seeds, arguments.epochs, budgets)
