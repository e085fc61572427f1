"""Embeddings per second on CPU for the variants skillops serves: fp32 PyTorch (the baseline), ONNX
(optimised graph), int8 (dynamic quantisation) and int8_blocks (quantised in blocks), at batch 1
and 32, with one thread and all of them, in one run; each with its test-metric delta against fp32,
printed as ratios.

    .venv/bin/python bench/serving.py [recipe] [--texts N] [--repeats R]

The model is the recipe's base model as the pipeline exports it (all-MiniLM-L6-v2, offline, for the
built-in recipes); the texts are the recipe's documents (ESCO's skill labels) and queries. The
test metric is the recipe's primary metric on its frozen test set and each golden set, scored by
the same code as the gate. Writes bench/results/serving.json.
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
RESULTS = REPO / "bench" / "results" / "serving.json"


def throughput(model, texts: list[str], batch_size: int, repeats: int) -> float:
    """Median texts per second over `repeats` passes (after one warm-up pass)."""
    model.encode(texts[: batch_size * 2], batch_size=batch_size, show_progress_bar=False)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.encode(texts, batch_size=batch_size, show_progress_bar=False)
        rates.append(len(texts) / (time.perf_counter() - started))
    return statistics.median(rates)


def main(recipe_name: str, count: int, repeats: int) -> dict:
    import pandas as pd
    import torch

    from skillops.config import load_recipe
    from skillops.inputs import preparation
    from skillops.judging.evaluation import score_queries
    from skillops.serving import variants
    from skillops.training.modeling import load_model, resolve_model

    every_variant = ("fp32", *variants.FILES)  # as the pipeline builds them and the gate scores them
    recipe = load_recipe(recipe_name)
    metric = recipe.evaluation.primary_metric
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        paths = preparation.write_task(preparation.build_task(recipe), Path(tmp) / "data", {})
        model_dir = Path(tmp) / "model"
        base = load_model(resolve_model(recipe.base_model), recipe.training.max_seq_length)
        base.save(str(model_dir))
        started = time.perf_counter()
        variants.export(base, model_dir, list(variants.FILES))
        exported = time.perf_counter() - started
        texts = pd.read_parquet(paths.documents)["text"].tolist()[:count]
        gate_sets = ["test", *(preparation.golden_part(g.name) for g in recipe.evaluation.golden)]
        rows, quality = [], {}
        for threads in (1, os.cpu_count() or 1):
            torch.set_num_threads(threads)
            for variant in every_variant:
                model = variants.load(model_dir, variant, threads=threads)
                if variant not in quality:
                    quality[variant] = {
                        s: score_queries(model, paths.eval_set(s), recipe.evaluation, recipe.prompts).metric(metric)
                        for s in gate_sets
                    }
                for batch_size in (1, 32):
                    rate = throughput(model, texts, batch_size, repeats)
                    rows.append({"variant": variant, "threads": threads, "batch": batch_size, "texts_per_s": rate})
                    print(f"{variant:11} threads {threads} batch {batch_size:>2}: {rate:8.1f} texts/s", flush=True)
        sizes = {v: (model_dir / variants.FILES[v]).stat().st_size for v in variants.FILES}
        sizes["fp32"] = (model_dir / "model.safetensors").stat().st_size
    baseline = {(r["threads"], r["batch"]): r["texts_per_s"] for r in rows if r["variant"] == "fp32"}
    for row in rows:
        row["vs_fp32"] = row["texts_per_s"] / baseline[(row["threads"], row["batch"])]
    deltas = {
        v: {s: (quality[v][s] - quality["fp32"][s]) / quality["fp32"][s] for s in quality[v]} for v in every_variant
    }
    result = {
        "recipe": recipe_name,
        "model": recipe.base_model,
        "texts": len(texts),
        "metric": metric,
        "quality": quality,
        "relative_delta_vs_fp32": deltas,
        "rows": rows,
        "file_bytes": sizes,
        "export_seconds": exported,
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, {platform.processor() or 'cpu'}",
    }
    print()
    print(f"{'variant':11} {'threads':>7} {'batch':>5} {'texts/s':>9} {'vs fp32':>8}")
    for row in rows:
        print(
            f"{row['variant']:11} {row['threads']:>7} {row['batch']:>5} {row['texts_per_s']:>9.1f} {row['vs_fp32']:>7.2f}x"
        )
    for variant in every_variant:
        shown = ", ".join(f"{s} {quality[variant][s]:.4f} ({deltas[variant][s]:+.2%})" for s in quality[variant])
        print(f"{variant}: {metric} {shown}; file {sizes[variant] / 1e6:.1f} MB")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1), "utf-8")
    return result


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default="esco-occupation-skills")
    parser.add_argument("--texts", type=int, default=640, help="documents encoded per pass")
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    main(arguments.recipe, arguments.texts, arguments.repeats)
