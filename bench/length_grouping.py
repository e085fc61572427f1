"""Length-grouped batches against batches drawn at random (`training.group_by_length`), for a
built-in recipe whose loss scores each pair alone (cosine similarity), in one run on its bundled
sample.

    .venv/bin/python bench/length_grouping.py [recipe]

Both trainings use the recipe's settings, data and seed; only the batch sampler differs. Prints the
share of padding in the tokens of each sampler's first-epoch batches (every text padded to the
longest of its batch after truncation), the training's wall time and samples per second, and the
test score of both models. Writes bench/results/length_grouping.json.
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
RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "length_grouping.json"


def padding_share(dataset, batches: list[list[int]], tokenizer, max_length: int) -> float:
    """Share of the tokens in the padded batches that are padding."""
    columns = [c for c in dataset.column_names if c != "score"]
    lengths = {
        column: [
            len(ids) for ids in tokenizer(list(dataset[column]), truncation=True, max_length=max_length)["input_ids"]
        ]
        for column in columns
    }
    padded = real = 0
    for batch in batches:
        for column in columns:
            sizes = [lengths[column][i] for i in batch]
            padded += max(sizes) * len(sizes)
            real += sum(sizes)
    return 1 - real / padded


def main() -> None:
    import torch
    from datasets import Dataset
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from torch.utils.data import RandomSampler

    from skillops.config import load_recipe
    from skillops.inputs import preparation
    from skillops.judging.evaluation import evaluate
    from skillops.training.batches import length_grouped_batches
    from skillops.training.modeling import load_model
    from skillops.training.trainer import TrainingSpec, train_model

    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("recipe", nargs="?", default="resume-job-similarity")
    arguments = cli.parse_args()
    recipe = load_recipe(arguments.recipe)
    if recipe.loss.in_batch_negatives:
        raise SystemExit(f"{recipe.name} trains with in-batch negatives, which are never grouped by length.")
    metric, config = recipe.evaluation.primary_metric, recipe.training
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-length-grouping-") as tmp:
        paths = preparation.write_task(preparation.build_task(recipe), Path(tmp) / "data", {})
        dataset = Dataset.from_parquet(str(paths.train))
        tokenizer = load_model(recipe.base_model, config.max_seq_length).tokenizer
        # The first epoch's batches of each sampler, as the trainer builds them.
        shuffle = torch.Generator().manual_seed(config.seed)
        samplers = {
            "random": DefaultBatchSampler(RandomSampler(dataset, generator=shuffle), config.batch_size, False),
            "grouped": length_grouped_batches(dataset, config.batch_size, False, ["score"], None, config.seed),
        }
        padding = {}
        for name, sampler in samplers.items():
            sampler.set_epoch(0)
            padding[name] = padding_share(dataset, list(sampler), tokenizer, config.max_seq_length)
        for name, group in (("random", False), ("grouped", True)):
            print(f"training with {name} batches", flush=True)
            started = time.perf_counter()
            result = train_model(
                TrainingSpec.for_recipe(
                    recipe,
                    paths.train,
                    Path(tmp) / name,
                    config.model_copy(update={"group_by_length": group}),
                    label=f"{name} batches",
                )
            )
            seconds = time.perf_counter() - started
            score = evaluate(
                load_model(str(result.model_dir)), paths.eval_set("test"), recipe.evaluation, recipe.prompts
            )
            results[name] = {
                "padding_share": round(padding[name], 3),
                "seconds": round(seconds, 1),
                "samples_per_second": round(result.steps * config.batch_size / seconds, 2),
                f"test_{metric}": round(score[metric], 4),
            }
    result = {
        "recipe": recipe.name,
        "rows": len(dataset),
        "batch_size": config.batch_size,
        "max_seq_length": config.max_seq_length,
        **results,
        "speedup": round(results["random"]["seconds"] / results["grouped"]["seconds"], 2),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"load {os.getloadavg()[0]:.2f} at the end",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n", "utf-8")
    print(f"\n{'':10}{'padding':>9}{'seconds':>9}{'samples/s':>11}{'test ' + metric:>22}")
    for name in ("random", "grouped"):
        row = results[name]
        print(
            f"{name:10}{row['padding_share']:9.0%}{row['seconds']:9.1f}{row['samples_per_second']:11.2f}"
            f"{row[f'test_{metric}']:22.4f}"
        )
    print(f"training time random/grouped: {result['speedup']:.2f}x. Written to {RESULTS}")


if __name__ == "__main__":
    main()
