"""Which pruner: Optuna's median, successive halving and Hyperband, and skillops' noise-aware
median, judged on the same trials of a built-in recipe's bundled sample.

    .venv/bin/python bench/pruners.py [recipe] [--trials 8]

One search runs every trial to its end (no pruner) and records each trial's validation score and
standard error at every validation point. Each pruner then replays those curves in the same order
(what it would have stopped, and when), so all of them judge identical trials: the training they
would have spent (validation points reached, against the search without pruning) and the best
trial they would have kept (against the best of all), for the first 3, 4, ... trials of the
search (the budget, `search.n_trials`). Writes bench/results/pruners.json.
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
RESULTS = REPO / "bench" / "results" / "pruners.json"
PRUNERS = ("median", "noise_aware_median", "successive_halving", "hyperband")


def record_curves(recipe) -> tuple[list[dict], float]:
    """Every trial of one search without pruning: its parameters, score and stderr per point, final score."""
    import optuna

    from skillops.inputs import preparation
    from skillops.tracking import runs
    from skillops.training import tuning

    with tempfile.TemporaryDirectory(prefix="bench-pruners-") as tmp:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlruns/mlflow.db"
        paths = preparation.write_task(preparation.build_task(recipe), Path(tmp) / "data", {})
        run_id = runs.start_run(recipe.name, "bench pruners", {})
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
            )
        )
        seconds = time.perf_counter() - started
        study = optuna.load_study(study_name="bench", storage=tuning.storage_url(recipe.search, Path(tmp) / "attempt"))
        trials = [
            {
                "params": t.params,
                "points": {int(point): value for point, value in t.intermediate_values.items()},
                "stderr": {
                    int(k.rsplit("_", 1)[1]): v for k, v in t.user_attrs.items() if k.startswith("validation_stderr_")
                },
                "final": t.value,
            }
            for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        ]
    return trials, seconds


def replay(trials: list[dict], search) -> dict:
    """The recorded trials, in order, through the pruner `search.pruner` names."""
    import optuna

    from skillops.training.tuning import make_pruner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Named: Hyperband puts a trial in a bracket by a hash of the study's name and the trial's number.
    study = optuna.create_study(study_name="replay", direction="maximize", pruner=make_pruner(search))
    spent, kept = 0, []
    for recorded in trials:
        trial = study.ask()
        for point in sorted(recorded["points"]):
            spent += 1
            trial.set_user_attr(f"validation_stderr_{point}", recorded["stderr"].get(point, 0.0))
            trial.report(recorded["points"][point], point)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, recorded["final"])
            kept.append(recorded)
    best = max(kept, key=lambda t: t["final"])
    return {"points_trained": spent, "completed": len(kept), "best_kept": best["final"], "best_params": best["params"]}


def main() -> None:
    import torch

    from skillops.config import load_recipe

    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("recipe", nargs="?", default="esco-occupation-skills")
    cli.add_argument("--trials", type=int, default=8)
    arguments = cli.parse_args()
    recipe = load_recipe(arguments.recipe).with_overrides(
        {"search.n_trials": arguments.trials, "search.pruner": "none"}
    )
    trials, seconds = record_curves(recipe)
    every_point = sum(len(t["points"]) for t in trials)
    best = max(t["final"] for t in trials)
    best_stderr = max(trials, key=lambda t: t["final"])["stderr"]
    results = {name: replay(trials, recipe.search.model_copy(update={"pruner": name})) for name in PRUNERS}
    # With a budget of the first k trials: how much worse the best kept trial is than the best of those k.
    by_budget = {
        name: {
            budget: round(
                max(t["final"] for t in trials[:budget])
                - replay(trials[:budget], recipe.search.model_copy(update={"pruner": name}))["best_kept"],
                4,
            )
            for budget in range(3, len(trials) + 1)
        }
        for name in PRUNERS
    }
    result = {
        "recipe": recipe.name,
        "trials": len(trials),
        "search_seconds_without_pruning": round(seconds, 1),
        "best_of_all": best,
        "best_stderr_at_last_point": best_stderr.get(max(best_stderr, default=0)),
        "pruners": {
            name: {
                **r,
                "share_of_training": round(r["points_trained"] / every_point, 3),
                "regret": round(best - r["best_kept"], 4),
                "regret_by_budget": by_budget[name],
            }
            for name, r in results.items()
        },
        "curves": trials,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
    }
    RESULTS.write_text(json.dumps(result, indent=1) + "\n", "utf-8")
    print(
        f"{len(trials)} trials without pruning in {seconds:.0f} s; best validation "
        f"{recipe.evaluation.primary_metric} {best:.4f} (standard error {result['best_stderr_at_last_point']:.4f})"
    )
    budgets = list(by_budget[PRUNERS[0]])
    print(f"{'pruner':22}{'training':>10}{'completed':>11}{'best kept':>11}   regret, first 3..{budgets[-1]} trials")
    for name, row in result["pruners"].items():
        regrets = " ".join(f"{value:.3f}" for value in row["regret_by_budget"].values())
        print(f"{name:22}{row['share_of_training']:10.0%}{row['completed']:11d}{row['best_kept']:11.4f}   {regrets}")
    print(f"Written to {RESULTS}")


if __name__ == "__main__":
    main()
