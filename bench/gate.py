"""What the promotion gate costs, per built-in recipe, against a plain baseline in the same run.

    .venv/bin/python bench/gate.py [recipe ...]     (default: three recipes, one per evaluator)

For each recipe, in a fresh MLflow store with the base model registered as champion:
- baseline: scoring the champion on the frozen test set the way a run without a cache must
  (load from the registry, encode every text, per-query metrics);
- cache: the same call again, now answered by the score cache (same version, same snapshot);
- gate: the whole decision (paired permutation test and bootstrap, 10,000 resamples each,
  secondary metrics and slices) of the base model against the same model cut to 32 tokens.
Writes bench/results/gate.md and prints the same table.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "gate.md"
DEFAULT = ["esco-occupation-skills", "course-skill-retrieval", "resume-job-similarity"]


def bench_recipe(name: str, tmp: Path) -> dict:
    from skillops.config import load_recipe
    from skillops.inputs import preparation
    from skillops.judging import score_cache
    from skillops.judging.evaluation import score_queries
    from skillops.judging.promotion import decide
    from skillops.tracking import registry, runs
    from skillops.training.modeling import load_model

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlruns/mlflow.db"
    recipe = load_recipe(name)
    paths = preparation.write_task(preparation.build_task(recipe), tmp / "data", {})
    test_set = paths.eval_set("test")
    snapshot = preparation.fingerprint_files([test_set])

    def score(model, eval_sets):
        return {"test": score_queries(model, test_set, recipe.evaluation, recipe.prompts)}

    base = load_model(recipe.base_model, recipe.training.max_seq_length)
    base.save(str(tmp / "base"))
    run_id = runs.start_run(recipe.name, "bench", {})
    version = registry.register(tmp / "base", run_id, recipe.registered_model_name, {})
    runs.end_run(run_id)

    started = time.perf_counter()
    champion, source = score_cache.version_scores(recipe.registered_model_name, version, snapshot, ["test"], score)
    champion = champion["test"]
    rescored = time.perf_counter() - started
    assert source.startswith("version"), source
    started = time.perf_counter()
    cached, source = score_cache.version_scores(recipe.registered_model_name, version, snapshot, ["test"], score)
    cached = cached["test"]
    from_cache = time.perf_counter() - started
    assert source.startswith("cached") and cached == champion, source

    shorter = score_queries(load_model(recipe.base_model, 32), test_set, recipe.evaluation, recipe.prompts)
    started = time.perf_counter()
    decision = decide(
        champion,
        shorter,
        "champion",
        recipe.evaluation.primary_metric,
        recipe.evaluation.headline_metrics(),
        recipe.promotion,
    )
    gate = time.perf_counter() - started
    return {
        "recipe": name,
        "evaluator": recipe.evaluation.evaluator,
        "queries": len(champion.ids),
        "rescored": rescored,
        "cached": from_cache,
        "gate": gate,
        "p_value": decision.p_value,
        "delta": decision.delta,
        "metric": recipe.evaluation.primary_metric,
    }


def main(names: list[str]) -> None:
    rows = []
    for name in names:
        with tempfile.TemporaryDirectory(prefix=f"bench-gate-{name}-") as tmp:
            rows.append(bench_recipe(name, Path(tmp)))
        print(f"{name}: done", flush=True)
    lines = [
        "# The promotion gate: champion re-scoring, score cache, paired test",
        "",
        "| recipe | evaluator | test queries | champion re-scored (baseline) | from the cache | speed-up | gate decision | max_seq 128 vs 32: delta, p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['evaluator']} | {r['queries']} | {r['rescored']:.2f} s | {r['cached'] * 1000:.1f} ms | "
            f"{r['rescored'] / r['cached']:.0f}x | {r['gate']:.2f} s | {r['metric']} {r['delta']:+.4f}, p = {r['p_value']:.4f} |"
        )
    lines += [
        "",
        f"Machine: {os.cpu_count()} CPU cores, {platform.machine()}, no GPU; model all-MiniLM-L6-v2 (offline package).",
    ]
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text, "utf-8")
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(sys.argv[1:] or DEFAULT)
