"""Trials per hour with 1 and 2 tuning workers (`search.parallel`) on one study, one thread each,
measured one after the other in one invocation on the bundled sample of a built-in recipe.

    .venv/bin/python bench/tuning_workers.py [recipe] [--trials N]

The baseline is the one-worker search of the same recipe, data, space and seed. Writes
bench/results/tuning_workers.json and prints the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

# One thread per worker: set before torch is imported, here and in the workers it starts.
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "tuning_workers.json"


def trials_per_hour(recipe_name: str, trials: int, parallel: int) -> dict:
    import optuna
    import torch

    from skillops.config import load_recipe
    from skillops.inputs import preparation
    from skillops.tracking import runs
    from skillops.training import tuning, tuning_workers

    torch.set_num_threads(1)
    recipe = load_recipe(recipe_name).with_overrides(
        # Short trials that are never pruned: the bench counts trials, not their quality.
        {"search.n_trials": trials, "search.parallel": parallel, "search.epochs": 0.2, "search.evals_per_trial": 1}
    )
    with tempfile.TemporaryDirectory(prefix=f"bench-tuning-{parallel}-") as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlruns/mlflow.db"
        paths = preparation.write_task(preparation.build_task(recipe), Path(tmp) / "data", {})
        run_id = runs.start_run(recipe.name, f"bench {parallel} worker(s)", {})
        started = time.perf_counter()
        tuning.tune(
            tuning.TrialWorker(
                recipe=recipe,
                data_dir=paths.directory,
                experiment=recipe.name,
                parent_run_id=run_id,
                output_dir=Path(tmp) / "tuning",
                study_name="bench",
                attempt_dir=Path(tmp) / "attempt",
            ),
            start_workers=tuning_workers.starter(recipe.search, None),
        )
        seconds = time.perf_counter() - started
        storage = tuning.storage_url(recipe.search, Path(tmp) / "attempt")
        study = optuna.load_study(study_name="bench", storage=storage)
        finished = len([t for t in study.trials if t.state.is_finished() and t.state.name != "FAIL"])
    return {
        "workers": parallel,
        "trials": finished,
        "seconds": round(seconds, 1),
        "per_hour": finished / seconds * 3600,
    }


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("recipe", nargs="?", default="esco-occupation-skills")
    cli.add_argument("--trials", type=int, default=4)
    args = cli.parse_args()
    one, two = (trials_per_hour(args.recipe, args.trials, parallel) for parallel in (1, 2))
    result = {
        "recipe": args.recipe,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at the end",
        "one_worker": one,
        "two_workers": two,
        "ratio_two_over_one": round(two["per_hour"] / one["per_hour"], 2),
    }
    RESULTS.write_text(json.dumps(result, indent=1) + "\n", "utf-8")
    for row in (one, two):
        print(f"{row['workers']} worker(s): {row['trials']} trials in {row['seconds']} s = {row['per_hour']:.0f}/hour")
    print(f"trials per hour, 2 workers / 1 worker: {result['ratio_two_over_one']}x  (written to {RESULTS})")


if __name__ == "__main__":
    main()
