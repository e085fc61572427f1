"""Training samples per second with 1 and 2 processes (`training.processes`, torchrun + DDP, gloo on
CPU), one thread each, one after the other in one invocation, on the bundled sample of a built-in
recipe with its base model.

    .venv/bin/python bench/training_processes.py [recipe] [--steps N]

The baseline is one process training the same data, batch size (per process) and steps. The wall
time includes loading the model and, for several processes, starting them: what a run pays.
Writes bench/results/training_processes.json and prints the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

# One thread per process: set before torch is imported, here and in the processes torchrun starts.
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "training_processes.json"


def samples_per_second(recipe_name: str, steps: int, processes: int) -> dict:
    import torch

    from skillops.config import load_recipe
    from skillops.inputs import preparation
    from skillops.training.trainer import TrainingSpec, train_model

    torch.set_num_threads(1)
    recipe = load_recipe(recipe_name)
    config = recipe.training.model_copy(update={"max_steps": steps, "processes": processes})
    with tempfile.TemporaryDirectory(prefix=f"bench-training-{processes}-") as tmp:
        paths = preparation.write_task(preparation.build_task(recipe), Path(tmp) / "data", {})
        started = time.perf_counter()
        result = train_model(TrainingSpec.for_recipe(recipe, paths.train, Path(tmp) / "out", config))
        seconds = time.perf_counter() - started
    samples = result.steps * config.batch_size * processes
    return {"processes": processes, "steps": result.steps, "samples": samples, "seconds": round(seconds, 1),
            "samples_per_second": round(samples / seconds, 2)}  # fmt: skip


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("recipe", nargs="?", default="esco-occupation-skills")
    cli.add_argument("--steps", type=int, default=30)
    args = cli.parse_args()
    one, two = (samples_per_second(args.recipe, args.steps, processes) for processes in (1, 2))
    result = {
        "recipe": args.recipe,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at the end",
        "one_process": one,
        "two_processes": two,
        "ratio_two_over_one": round(two["samples_per_second"] / one["samples_per_second"], 2),
    }
    RESULTS.write_text(json.dumps(result, indent=1) + "\n", "utf-8")
    for row in (one, two):
        print(f"{row['processes']} process(es): {row['samples']} samples in {row['seconds']} s = "
              f"{row['samples_per_second']}/s")  # fmt: skip
    print(f"training samples/s, 2 processes / 1 process: {result['ratio_two_over_one']}x  (written to {RESULTS})")


if __name__ == "__main__":
    main()
