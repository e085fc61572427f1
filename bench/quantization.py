"""What int8 costs a trained model, and what keeping some of it in fp32 buys back: dynamic int8
as the pipeline builds it, with the FFN or attention-output MatMuls (or the last layer) left in
fp32, int8_blocks (weights and activations quantised in blocks, a scale each) and static int8
calibrated on the training queries and a quarter of the vocabulary. Each arm's
primary metric on the recipe's test and golden sets against fp32 (as the gate judges a variant)
and its texts/s at batch 32 on every core, against fp32 PyTorch in the same run.

    .venv/bin/python bench/quantization.py [recipe] [--model DIR]

`--model` is a saved sentence-transformers folder (a champion's `model.sentence_transformer`, a
run's `attempt/train/model`); without it, the recipe's base model. Writes
bench/results/quantization.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "quantization.json"
# Which MatMul nodes stay fp32, by the names torch's exporter gives a BERT-like encoder's layers.
DYNAMIC_ARMS = {
    "dynamic, every MatMul": lambda name: False,
    "dynamic, attention output fp32": lambda name: "attention/output/dense" in name,
    "dynamic, FFN output fp32": lambda name: "/output/dense/" in name and "attention" not in name,
    "dynamic, FFN in and out fp32": lambda name: (
        "/intermediate/" in name or ("/output/dense/" in name and "attention" not in name)
    ),
}


def rate(model, texts: list[str], repeats: int = 3) -> float:
    model.encode(texts[:64], batch_size=32, show_progress_bar=False)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.encode(texts, batch_size=32, show_progress_bar=False)
        rates.append(len(texts) / (time.perf_counter() - started))
    return statistics.median(rates)


def static_int8(exported: Path, target: Path, tokenizer, texts: list[str], method) -> None:
    """Static int8 (QDQ), activations' ranges calibrated on `texts` padded to one length."""
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            full = range(0, len(texts) - 31, 32)  # equal shapes: the percentile calibrator stacks them
            encoded = [tokenizer(texts[i : i + 32], padding="max_length", truncation=True, max_length=48) for i in full]
            self.batches = iter([{k: np.asarray(v, dtype=np.int64) for k, v in e.items()} for e in encoded])

        def get_next(self):
            return next(self.batches, None)

    prepared = exported.with_name("prepared.onnx")
    quant_pre_process(str(exported), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(target),
        Batches(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        op_types_to_quantize=["MatMul"],
        calibrate_method=method,
    )
    prepared.unlink()


def main(recipe_name: str, model_path: str | None) -> dict:
    import onnx
    import pandas as pd
    import torch
    from onnxruntime.quantization import CalibrationMethod

    from skillops.config import load_recipe
    from skillops.inputs import checks, preparation
    from skillops.judging.evaluation import score_queries
    from skillops.serving import variants
    from skillops.training.modeling import load_model, resolve_model

    recipe = load_recipe(recipe_name)
    metric = recipe.evaluation.primary_metric
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="bench-quantization-") as tmp:
        paths = preparation.write_task(preparation.build_task(recipe), Path(tmp) / "data", {})
        gate_sets = ["test", *(preparation.golden_part(g.name) for g in recipe.evaluation.golden)]
        model_dir = Path(tmp) / "model"
        if model_path:
            shutil.copytree(model_path, model_dir, ignore=shutil.ignore_patterns("onnx"))
        else:
            load_model(resolve_model(recipe.base_model), recipe.training.max_seq_length).save(str(model_dir))
        fp32 = load_model(str(model_dir))
        texts = pd.read_parquet(paths.documents)["text"].tolist()
        train = pd.read_parquet(paths.train)
        calibration = sorted(set(train[checks.query_column(train)]) | set(texts[::4]), key=len)

        def scores(model) -> dict[str, float]:
            return {
                s: score_queries(model, paths.eval_set(s), recipe.evaluation, recipe.prompts).metric(metric)
                for s in gate_sets
            }

        reference = scores(fp32)
        baseline = rate(fp32, texts[:640])
        exported = variants.export_graph(fp32, model_dir / "onnx")
        matmuls = [
            n.name for n in onnx.load(str(exported)).graph.node if n.op_type == "MatMul" and "/encoder/" in n.name
        ]
        arms = {}

        def measure(name: str, build) -> None:
            build(model_dir / variants.FILES["int8"])
            model = variants.load(model_dir, "int8")
            arm_scores = scores(model)
            arms[name] = {
                "scores": arm_scores,
                "relative_delta": {s: (arm_scores[s] - reference[s]) / reference[s] for s in gate_sets},
                "texts_per_s": rate(model, texts[:640]),
            }
            arms[name]["vs_fp32"] = arms[name]["texts_per_s"] / baseline
            shown = ", ".join(f"{s} {arms[name]['relative_delta'][s]:+.2%}" for s in gate_sets)
            print(
                f"{name:34} {shown}; {arms[name]['texts_per_s']:7.1f} texts/s ({arms[name]['vs_fp32']:.2f}x)",
                flush=True,
            )

        for name, keep in DYNAMIC_ARMS.items():
            measure(
                name, lambda target, keep=keep: variants.quantize(exported, target, [m for m in matmuls if keep(m)])
            )
        last = max(int(m.split("layer.")[1].split("/")[0]) for m in matmuls if "layer." in m)
        measure(
            "dynamic, last layer fp32",
            lambda target: variants.quantize(exported, target, [m for m in matmuls if f"layer.{last}/" in m]),
        )
        for block in (128, 32):  # 128: the int8_blocks variant the pipeline builds
            measure(
                f"int8_blocks, blocks of {block}",
                lambda target, block=block: variants.quantize_blocks(exported, target, block),
            )
        for method in (CalibrationMethod.MinMax, CalibrationMethod.Percentile):
            measure(
                f"static ({method.name} calibration)",
                lambda target, method=method: static_int8(exported, target, fp32.tokenizer, calibration, method),
            )
    result = {
        "recipe": recipe_name,
        "model": model_path or recipe.base_model,
        "metric": metric,
        "fp32": {"scores": reference, "texts_per_s": baseline},
        "threads": os.cpu_count(),
        "batch": 32,
        "calibration_texts": len(calibration),
        "arms": arms,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1), "utf-8")
    return result


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default="esco-occupation-skills")
    parser.add_argument("--model", help="a saved sentence-transformers folder (default: the recipe's base model)")
    arguments = parser.parse_args()
    main(arguments.recipe, arguments.model)
