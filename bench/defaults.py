"""Which batches and negatives the ESCO recipe trains with by default, decided by measurement.

    .venv/bin/python bench/defaults.py [--seeds 1 2 3] [--budget 90] [--recipe esco-occupation-skills]

Six arms, each trained for the same wall-clock time (`--budget` seconds of optimizer steps) from
the recipe's base model and settings, over three seeds, and judged as users run the model: every
held-out occupation and golden description ranks the whole vocabulary (MAP with no cut-off,
golden precision@10), with card 000's short list beside it:

- `no-duplicates b32`: sentence-transformers' NO_DUPLICATES batches of 32;
- `no-duplicates bN`: the same at the taxonomy-aware batches' mean size N (they cannot be filled);
- `taxonomy-aware b32`: skillops' batches that keep every anchor's known positives apart;
- each again `+ hard negatives`: one negative per row mined by `skillops.inputs.preparation` from the
  whole vocabulary with the base model (never one of the occupation's skills; the nearest ten
  skipped as likely unlinked positives, the next 50 shared out among the occupation's rows).

Equal time: each arm's seconds per step are measured first (over one epoch from seed 0), and
each run is given the steps that fill the budget, so its learning-rate schedule ends where
its time does. The decision: the cheapest arm (library batches, no mining) is the default unless
another beats it on golden MAP (91 queries) by more than the larger spread (max - min over the
seeds) of the two, without losing more than that spread on test MAP. Writes
bench/results/defaults.json and prints the table and the decision (`--table` prints them again
from that file).
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
RESULTS = REPO / "bench" / "results" / "defaults.json"
WARM_UP_STEPS = 2  # not timed: the first steps pay for loading and allocation
HARD_NEGATIVES = {"num_negatives": 1, "range_min": 10, "range_max": 60, "relative_margin": None}
# Cheapest first: the library's own batches, then skillops' sampler (one pass to plan an epoch),
# then mining (the base model over the vocabulary once per run).
ARMS = (
    ("no-duplicates b32", False, False, 32),
    ("no-duplicates bN", False, False, None),
    ("taxonomy-aware b32", True, False, 32),
    ("no-duplicates b32 + hard negatives", False, True, 32),
    ("no-duplicates bN + hard negatives", False, True, None),
    ("taxonomy-aware b32 + hard negatives", True, True, 32),
)


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Seconds per step from the end of step WARM_UP_STEPS to the end of the training."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == WARM_UP_STEPS:
                self.started = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.seconds_per_step = (time.perf_counter() - self.started) / (state.global_step - WARM_UP_STEPS)

    return StepTimer()


def prepare(recipe, tmp: Path) -> dict:
    """The task's training table without and with mined negatives, written once for all arms."""
    from skillops.config import MiningConfig
    from skillops.inputs import preparation

    task = preparation.build_task(recipe)
    plain = preparation.write_task(task, tmp / "plain", {})
    mining = recipe.model_copy(
        update={"data": recipe.data.model_copy(update={"mine_negatives": MiningConfig(**HARD_NEGATIVES)})}
    )
    started = time.perf_counter()
    mined = preparation.with_mined_negatives(task, mining)
    mining_seconds = time.perf_counter() - started
    return {
        False: plain,
        True: preparation.write_task(mined, tmp / "mined", {}),
        "mining_seconds": mining_seconds,
    }


def mean_batch(train_path: Path, recipe) -> int:
    """Rows per batch the taxonomy-aware sampler averages over an epoch at the recipe's batch size."""
    from datasets import Dataset

    from skillops.training.trainer import plan_steps

    dataset = Dataset.from_parquet(str(train_path))
    config = recipe.training.model_copy(update={"taxonomy_aware_batches": True, "processes": 1})
    return round(len(dataset) / plan_steps(dataset, config, recipe.loss).steps_per_epoch)


def arm_config(recipe, aware: bool, batch_size: int, seed: int, max_steps: int):
    return recipe.training.model_copy(
        update={"seed": seed, "taxonomy_aware_batches": aware, "batch_size": batch_size, "max_steps": max_steps}
    )


def run_arm(recipe, paths, config, output: Path, label: str) -> dict:
    from datasets import Dataset

    from skillops.inputs.preparation import golden_part
    from skillops.judging.evaluation import score_sets
    from skillops.training.batches import false_negative_shares
    from skillops.training.modeling import load_model
    from skillops.training.trainer import TrainingSpec, plan_steps, train_model

    dataset = Dataset.from_parquet(str(paths.train))
    plan = plan_steps(dataset, config, recipe.loss)
    shares = false_negative_shares(dataset, config.batch_size, 1, config.taxonomy_aware_batches, config.seed)
    spec = TrainingSpec.for_recipe(recipe, paths.train, output, config, label=label)
    started = time.perf_counter()
    result = train_model(spec)
    seconds = time.perf_counter() - started
    rows_per_step = len(dataset) / plan.steps_per_epoch
    row = {
        "steps": result.steps,
        "steps_per_epoch": plan.steps_per_epoch,
        "rows_per_step": rows_per_step,
        "epochs": result.steps / plan.steps_per_epoch,
        "seconds": seconds,
        "false_negative_share": shares["false_in_batch_negatives_share"],
    }
    golden = golden_part(recipe.evaluation.golden[0].name)
    scores = score_sets(
        load_model(str(result.model_dir), config.max_seq_length),
        {part: paths.eval_set(part) for part in ("test", golden)},
        recipe.evaluation,
        recipe.prompts,
    )
    return row | {
        "test_map": scores["test"].metric("cosine_map"),
        "test_short_list_map": scores["test"].metric("cosine_short_list_map"),
        "golden_map": scores[golden].metric("cosine_map"),
        "golden_precision_at_10": scores[golden].metric("cosine_precision_at_10"),
    }


def calibrate(recipe, prepared: dict, arms: list[tuple], budget: float, tmp: Path) -> dict[str, int]:
    """Steps per arm that fill `budget` seconds, from each arm's seconds per step over one whole
    epoch: taxonomy-aware batches are full early in an epoch and small late, so a few steps
    would not tell."""
    from datasets import Dataset

    from skillops.training.trainer import TrainingSpec, plan_steps, train_model

    steps = {}
    for name, aware, mined, batch_size in arms:
        timer = step_timer()
        dataset = Dataset.from_parquet(str(prepared[mined].train))
        epoch = plan_steps(dataset, arm_config(recipe, aware, batch_size, 0, -1), recipe.loss).steps_per_epoch
        config = arm_config(recipe, aware, batch_size, 0, epoch)
        spec = TrainingSpec.for_recipe(
            recipe, prepared[mined].train, tmp / "calibration" / name.replace(" ", "-"), config, label=f"{name} timing"
        )
        train_model(spec, callbacks=[timer])
        steps[name] = max(1, int(budget / timer.seconds_per_step))
        print(
            f"calibration: {name}: {timer.seconds_per_step:.3f} s/step over an epoch -> {steps[name]} steps", flush=True
        )
    return steps


def spread(values: list[float]) -> float:
    return max(values) - min(values)


def summary(rows: list[dict], steps: dict[str, int], budget: float) -> list[str]:
    lines = [
        "| arm | seeds | test MAP (whole vocabulary) | golden MAP | golden P@10 | test MAP, short list | "
        "steps | epochs | rows/step | false negatives | samples/s | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in dict.fromkeys(r["arm"] for r in rows):
        group = [r for r in rows if r["arm"] == arm]

        def cell(key, group=group):
            values = [r[key] for r in group]
            return f"{statistics.mean(values):.4f} (±{spread(values) / 2:.4f})"

        def mean(key, group=group):
            return statistics.mean(r[key] for r in group)

        lines.append(
            f"| {arm} | {len(group)} | {cell('test_map')} | {cell('golden_map')} | {cell('golden_precision_at_10')} | "
            f"{cell('test_short_list_map')} | {mean('steps'):.0f} | {mean('epochs'):.2f} | {mean('rows_per_step'):.1f} | "
            f"{mean('false_negative_share'):.2%} | {mean('rows_per_step') * steps[arm] / budget:.1f} | "
            f"{mean('seconds'):.0f} |"
        )
    lines.append("")
    lines.append(
        "Cells: mean over the seeds (± half the spread, max - min). samples/s: rows trained per second "
        "of the budget, from the timing epoch on an idle machine; wall s: each run's training, model "
        "loading included."
    )
    return lines


def decide(rows: list[dict]) -> tuple[str, list[str]]:
    """The cheapest arm, unless another's golden MAP gain beats both arms' spreads on golden MAP
    and its test MAP does not fall by more than their test spread; the best such arm wins."""
    arms = list(dict.fromkeys(r["arm"] for r in rows))

    def values(arm, key):
        return [r[key] for r in rows if r["arm"] == arm]

    cheapest = arms[0]
    lines = [
        f"| arm | golden MAP gain over {cheapest} | larger golden spread | test MAP change | larger test spread | beats it |",
        "|---|---|---|---|---|---|",
    ]
    winner, best_gain = cheapest, 0.0
    for arm in arms[1:]:
        gain = statistics.mean(values(arm, "golden_map")) - statistics.mean(values(cheapest, "golden_map"))
        golden_spread = max(spread(values(arm, "golden_map")), spread(values(cheapest, "golden_map")))
        change = statistics.mean(values(arm, "test_map")) - statistics.mean(values(cheapest, "test_map"))
        test_spread = max(spread(values(arm, "test_map")), spread(values(cheapest, "test_map")))
        beats = gain > golden_spread and change > -test_spread
        lines.append(
            f"| {arm} | {gain:+.4f} | {golden_spread:.4f} | {change:+.4f} | {test_spread:.4f} | {'yes' if beats else 'no'} |"
        )
        if beats and gain > best_gain:
            winner, best_gain = arm, gain
    return winner, lines


def main(recipe_name: str, seeds: list[int], budget: float) -> None:
    from skillops.config import load_recipe

    recipe = load_recipe(recipe_name)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-defaults-") as tmp:
        tmp = Path(tmp)
        prepared = prepare(recipe, tmp)
        mean_sizes = {mined: mean_batch(prepared[mined].train, recipe) for mined in (False, True)}
        arms = [
            (name.replace("bN", f"b{mean_sizes[mined]}"), aware, mined, size or mean_sizes[mined])
            for name, aware, mined, size in ARMS
        ]
        steps = calibrate(recipe, prepared, arms, budget, tmp)
        for seed in seeds:
            for name, aware, mined, batch_size in arms:
                config = arm_config(recipe, aware, batch_size, seed, steps[name])
                output = tmp / f"{name.replace(' ', '-')}-seed-{seed}"
                row = {"arm": name, "seed": seed, "batch_size": batch_size}
                row |= run_arm(recipe, prepared[mined], config, output, f"{name} seed {seed}")
                rows.append(row)
                print(json.dumps(row), flush=True)
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "recipe": recipe_name,
        "budget_seconds": budget,
        "hard_negatives": HARD_NEGATIVES,
        "mining_seconds": prepared["mining_seconds"],
        "steps": steps,
        "rows": rows,
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, no GPU",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = render(results)
    RESULTS.write_text(json.dumps(results, indent=1), "utf-8")
    print("\n".join(results["table"]))


def render(results: dict) -> dict:
    """The results with their table and decision, from the rows and the calibrated steps."""
    winner, decision = decide(results["rows"])
    table = summary(results["rows"], results["steps"], results["budget_seconds"])
    return results | {"table": [*table, "", *decision, "", f"Default: {winner}."], "default": winner}


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="esco-occupation-skills")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--budget", type=float, default=90.0, help="seconds of training per run")
    parser.add_argument("--table", action="store_true", help=f"print the table of {RESULTS.name} again, run nothing")
    arguments = parser.parse_args()
    if arguments.table:
        print("\n".join(render(json.loads(RESULTS.read_text("utf-8")))["table"]))
    else:
        main(arguments.recipe, arguments.seeds, arguments.budget)
