"""skillops' own training, scoring and export on a GPU, in one command of a few minutes.

    python bench/gpu.py                       # on a GPU machine (see docs/gpu-check.md)
    python bench/gpu.py --device cpu --tiny   # the same parts on CPU with tiny models (the fast tier)

Runs skillops' trainer (`skillops.training.trainer.train_model`: its taxonomy-aware batches, losses and
precision), scorer (`skillops.judging.evaluation`) and exporter (`skillops.serving.variants`) with MLflow, Prefect
and Optuna made unimportable, on data it brings: the bundled ESCO sample (its training table,
its test set and golden set ranking the whole vocabulary) and that vocabulary grown to ESCO 1.2's
13,939 skills (`bench/vocabulary.py`'s labels) for throughput. Parts, each written to
bench/results/gpu.json as soon as it ends:

1. minilm: all-MiniLM-L6-v2 at card 004's settings (the job-skills recipe's training: MNRL,
   batch 32, lr 5e-5, max_seq_length 256) for a fixed number of steps, once per precision (bf16
   and fp32 on a GPU; fp32 only on CPU): samples/s, peak memory, and on the golden set the
   per-query MAP difference and how often the top-1 skill is the same.
2. xlmr-large: an XLM-RoBERTa-large-shaped model (card 000's architecture, its 250,002-token
   vocabulary, random weights from the configuration) with MNRL at batch 32 (card 000) and
   CachedMNRL at mini-batch 32 with 2 accumulation steps (card 001): samples/s, tokens/s, peak
   memory and MFU. FLOPs counted as 6 x non-embedding parameters x tokens (forward and
   backward; the attention's length-squared term and padding left out, so MFU is a floor);
   tokens are the rows' real token counts, cut at max_seq_length; the peak is the GPU's dense
   bf16 figure.
3. sampler: the taxonomy-aware batches against the library's NO_DUPLICATES sampler: steps/s of
   the same training, the time between steps (data loader and sampler: what the GPU waits for)
   as a share of each step, and the time the sampler takes to lay out one batch.
4. scoring: documents/s encoding the grown vocabulary in fp32 and bf16, and the test set's
   whole-vocabulary MAP of both (equal within one standard error of the per-query values).
5. export: the ONNX and int8 variants of part 1's model (trained in the GPU's precision), built
   as the pipeline builds them: share of test queries whose top-1 skill equals the fp32 model's.

The whole run stops at --budget-seconds (default 300); parts not reached are listed as such.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "gpu.json"
sys.path.insert(0, str(REPO / "src"))  # a GPU machine runs the checkout, uninstalled

# Dense bf16 peak of known GPUs (no sparsity), for MFU.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}
# The cards' base models' published configurations (hidden size, layers, heads, feed-forward, vocabulary).
SHAPES = {
    "xlm-roberta-large": ("xlm-roberta", 1024, 24, 16, 4096, 250002),
    "all-MiniLM-L6-v2": ("bert", 384, 6, 12, 1536, 30522),
    "tiny-xlm-roberta": ("xlm-roberta", 32, 2, 2, 64, 250002),
    "tiny-bert": ("bert", 32, 2, 2, 64, 30522),
}


# What a GPU machine may not have, and what this check must never need: made unimportable (None in
# sys.modules: `import` raises ImportError, and libraries that probe for them find nothing).
UNIMPORTABLE = ("mlflow", "prefect", "optuna")


def build(shape: str, folder: Path, tokenizer: str) -> int:
    """A randomly initialised model of `shape` saved in `folder` with all-MiniLM-L6-v2's tokenizer
    (the only one here offline: its ids fall inside every shape's vocabulary); returns its number
    of parameters outside the embeddings (what MFU counts)."""
    import transformers

    kind, hidden, layers, heads, feed_forward, vocab = SHAPES[shape]
    size = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads}
    if kind == "xlm-roberta":
        config = transformers.XLMRobertaConfig(
            vocab_size=vocab, intermediate_size=feed_forward, max_position_embeddings=514, **size
        )
    else:
        config = transformers.BertConfig(vocab_size=vocab, intermediate_size=feed_forward, **size)
    model = transformers.AutoModel.from_config(config)
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(tokenizer).save_pretrained(folder)
    return sum(p.numel() for name, p in model.named_parameters() if "embeddings" not in name)


class Bench:
    def __init__(self, device: str, tiny: bool, work: Path, out: Path, minilm: str) -> None:
        import torch

        from skillops.config import load_recipe
        from skillops.inputs import preparation
        from skillops.training.modeling import mixed_precision, precision_name

        self.device, self.tiny, self.work, self.out = device, tiny, work, out
        self.cuda = device == "cuda"
        self.gpu = torch.cuda.get_device_name() if self.cuda else f"CPU ({os.cpu_count()} cores)"
        # What `training.precision: auto` trains in here, then fp32 to compare with (CPU: fp32 alone).
        self.precisions = list(dict.fromkeys([precision_name(mixed_precision("auto")), "fp32"]))
        self.recipe = load_recipe("esco-occupation-skills")
        card004 = load_recipe("job-skills").training
        self.training = card004.model_copy(
            update={"max_steps": 2 if tiny else 150, "evals_during_training": 0, "checkpoint_every_steps": 0}
        )
        self.paths = preparation.write_task(preparation.build_task(self.recipe), work / "task", {})
        self.rows: dict[str, dict] = {}
        # The model part 1, 3 and 4 train and encode: MiniLM, or a tiny BERT with its tokenizer.
        if tiny:
            build("tiny-bert", work / "tiny-bert", minilm)
        self.minilm = str(work / "tiny-bert") if tiny else minilm
        self.tokenizer = minilm

    def eval_set(self, name: str) -> Path:
        return self.paths.eval_set(name)

    def write(self, part: str, row: dict) -> None:
        self.rows[part] = row
        self.out.parent.mkdir(parents=True, exist_ok=True)
        result = {"date": time.strftime("%Y-%m-%d"), "device": self.gpu, "tiny": self.tiny, "parts": self.rows}
        self.out.write_text(json.dumps(result, indent=1) + "\n", "utf-8")
        print(f"{part}: {json.dumps(row)}", flush=True)

    def synchronize(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def peak_memory_gib(self) -> float | None:
        if not self.cuda:
            return None
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**30, 2)

    def train(self, base_model: str, label: str, **update) -> dict:
        """skillops' training for the fixed number of steps; times every step after the first two
        (kernels and allocator warm), and the gaps between steps."""
        import torch
        from transformers import TrainerCallback

        from skillops.config import LossConfig
        from skillops.training.trainer import TrainingSpec, train_model

        bench = self
        marks: list[tuple[float, float]] = []  # (step began, step ended)

        class Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                bench.synchronize()
                self.began = time.perf_counter()
                if state.global_step == 2 and bench.cuda:
                    torch.cuda.reset_peak_memory_stats()

            def on_step_end(self, args, state, control, **kwargs):
                bench.synchronize()
                marks.append((self.began, time.perf_counter()))

        loss = update.pop("loss", self.recipe.loss)
        config = self.training.model_copy(update=update)
        spec = TrainingSpec(
            base_model=base_model,
            train_path=self.paths.train,
            config=config,
            loss=LossConfig.model_validate(loss) if isinstance(loss, dict) else loss,
            prompts=self.recipe.prompts,
            output_dir=self.work / label,
            label=label,
        )
        result = train_model(spec, callbacks=[Clock()])
        timed = marks[2:] or marks
        seconds = timed[-1][1] - timed[0][0]
        between = sum(later[0] - earlier[1] for earlier, later in zip(timed, timed[1:], strict=False))
        samples = len(timed) * config.batch_size * config.gradient_accumulation_steps
        return {
            "model_dir": result.model_dir,
            "steps": len(timed),
            "samples_per_second": round(samples / seconds, 1),
            "steps_per_second": round(len(timed) / seconds, 2),
            "between_steps_share": round(between / seconds, 4),
            "peak_memory_gib": self.peak_memory_gib(),
        }

    def top1_and_scores(self, model, name: str):
        """Per-query whole-vocabulary MAP and each query's top-1 document."""
        from sentence_transformers.util import cos_sim

        from skillops.inputs.preparation import read_eval_set
        from skillops.judging.evaluation import Encoder, score_encoded

        data = read_eval_set(self.eval_set(name))
        encode = Encoder(model, self.recipe.prompts, self.recipe.evaluation.batch_size)
        scores = score_encoded(encode, data, self.recipe.evaluation)  # encodes every text once; reused below
        queries = encode(list(data["queries"].values()), as_query=True)
        documents = encode(list(data["corpus"].values()), as_query=False)
        top1 = cos_sim(queries, documents).argmax(dim=1).cpu().numpy()
        return scores.values(self.recipe.evaluation.primary_metric), top1

    # The parts -----------------------------------------------------------------------------

    def part_minilm(self) -> None:
        import numpy as np

        from skillops.training.modeling import load_model

        arms = {}
        for precision in self.precisions:
            trained = self.train(self.minilm, f"minilm-{precision}", precision=precision)
            values, top1 = self.top1_and_scores(load_model(str(trained["model_dir"])), "golden-descriptions")
            arms[precision] = {**trained, "golden_map": float(np.mean(values)), "values": values, "top1": top1}
        reference = arms["fp32"]
        row = {"model": "tiny BERT" if self.tiny else self.minilm, "steps": self.training.max_steps}
        for precision, arm in arms.items():
            row[precision] = {k: arm[k] for k in ("samples_per_second", "peak_memory_gib", "golden_map")}
            if precision != "fp32":
                row[precision]["mean_abs_query_difference"] = float(
                    np.mean(np.abs(arm["values"] - reference["values"]))
                )
                row[precision]["same_top1_share"] = float(np.mean(arm["top1"] == reference["top1"]))
        self.trained = arms[self.precisions[0]]["model_dir"]  # the GPU's precision: what part 5 exports
        self.write("minilm", row)

    def part_xlmr_large(self) -> None:
        from transformers import AutoConfig, AutoTokenizer

        shape = "tiny-xlm-roberta" if self.tiny else "xlm-roberta-large"
        folder = self.work / shape
        non_embedding = build(shape, folder, self.tokenizer)
        config = AutoConfig.from_pretrained(folder)
        tokens_per_sample = _tokens_per_sample(
            AutoTokenizer.from_pretrained(folder), self.paths.train, self.recipe.training.max_seq_length
        )
        peak = next((flops for gpu, flops in PEAK_BF16_FLOPS.items() if gpu in self.gpu), None)
        row = {"shape": shape, "vocabulary": config.vocab_size, "non_embedding_parameters": non_embedding}
        steps = 2 if self.tiny else 20
        for label, loss, update in (
            ("mnrl_b32", {"name": "mnrl", "scale": 20.0}, {"batch_size": 32}),
            (
                "cached_mnrl_mb32_ga2",
                {"name": "cached_mnrl", "scale": 20.0, "mini_batch_size": 32},
                {"batch_size": 32, "gradient_accumulation_steps": 2},
            ),
        ):
            trained = self.train(
                str(folder),
                f"{shape}-{label}",
                loss=loss,
                max_steps=steps + 2,
                max_seq_length=self.recipe.training.max_seq_length,  # card 000's
                **update,
            )
            tokens = trained["samples_per_second"] * tokens_per_sample
            row[label] = {
                "samples_per_second": trained["samples_per_second"],
                "tokens_per_second": round(tokens),
                "peak_memory_gib": trained["peak_memory_gib"],
                "mfu": round(6 * non_embedding * tokens / peak, 4) if peak else None,
            }
        self.write("xlmr-large", row)

    def part_sampler(self) -> None:
        from datasets import Dataset

        from skillops.training.batches import taxonomy_aware_batches

        precision = self.precisions[0]
        row = {"batch_size": self.training.batch_size}
        for label, aware in (("taxonomy_aware", True), ("no_duplicates", False)):
            trained = self.train(self.minilm, f"sampler-{label}", precision=precision, taxonomy_aware_batches=aware)
            row[label] = {k: trained[k] for k in ("steps_per_second", "between_steps_share")}
        dataset = Dataset.from_parquet(str(self.paths.train))
        started = time.perf_counter()
        batches = list(taxonomy_aware_batches(dataset, self.training.batch_size, drop_last=False, seed=1, world=1))
        row["sampler_ms_per_batch"] = round(1000 * (time.perf_counter() - started) / len(batches), 3)
        self.write("sampler", row)

    def part_scoring(self) -> None:
        import numpy as np
        import pandas as pd
        import torch
        from vocabulary import vocabulary

        from skillops.training.modeling import load_model

        skills = pd.read_csv(self.recipe.data.location / "skills_en.csv", dtype=str, keep_default_na=False)
        texts = vocabulary(skills.preferredLabel.str.strip().tolist(), 2000 if self.tiny else 13939)

        row = {"documents": len(texts)}
        for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            model = load_model(self.minilm).to(dtype)
            model.encode(texts[:256], batch_size=256)  # warm
            self.synchronize()
            started = time.perf_counter()
            model.encode(texts, batch_size=256, show_progress_bar=False)
            self.synchronize()
            values, _ = self.top1_and_scores(model, "test")
            row[precision] = {
                "documents_per_second": round(len(texts) / (time.perf_counter() - started)),
                "test_map": float(np.mean(values)),
                "test_map_standard_error": float(np.std(values, ddof=1) / np.sqrt(len(values))),
            }
        row["equal_within_noise"] = bool(
            abs(row["bf16"]["test_map"] - row["fp32"]["test_map"]) <= row["fp32"]["test_map_standard_error"]
        )
        self.write("scoring", row)

    def part_export(self) -> None:
        import numpy as np

        from skillops.serving import variants
        from skillops.training.modeling import load_model

        model_dir = Path(self.trained)
        variants.export(load_model(str(model_dir)), model_dir, ["onnx", "int8"])
        _, reference = self.top1_and_scores(variants.load(model_dir, "fp32"), "test")
        row = {"queries": len(reference)}
        for variant in ("onnx", "int8"):
            _, top1 = self.top1_and_scores(variants.load(model_dir, variant), "test")
            row[f"{variant}_same_top1_share"] = float(np.mean(top1 == reference))
        self.write("export", row)


def _tokens_per_sample(tokenizer, train_path: Path, max_length: int) -> float:
    """Tokens one training row feeds the model: its anchor and its positive, cut at max_length."""
    import pandas as pd

    table = pd.read_parquet(train_path)
    lengths = [
        len(ids)
        for column in ("anchor", "positive")
        for ids in tokenizer(table[column].tolist(), truncation=True, max_length=max_length)["input_ids"]
    ]
    return 2 * sum(lengths) / len(lengths)


def _installed_minilm() -> str:
    from skillops.training.modeling import resolve_model

    return resolve_model("sentence-transformers/all-MiniLM-L6-v2")


def _figures(values: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())


def print_table(rows: dict[str, dict]) -> None:
    """The figures a reader compares, one line each; the JSON has the rest."""
    lines = []
    for part, row in rows.items():
        if "not run" in row:
            lines.append((part, row["not run"]))
            continue
        for arm, value in row.items():
            if isinstance(value, dict):
                lines.append((f"{part} {arm}", _figures(value)))
        lines.append((part, _figures({k: v for k, v in row.items() if not isinstance(v, dict)})))
    width = max(len(name) for name, _ in lines)
    print("\n".join(f"{name:{width}}  {figures}" for name, figures in lines))


PARTS = ("minilm", "xlmr-large", "sampler", "scoring", "export")


def main() -> int:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    cli.add_argument("--tiny", action="store_true", help="tiny random models, two steps a part (the fast tier)")
    cli.add_argument("--budget-seconds", type=float, default=300)
    cli.add_argument(
        "--minilm",
        help="an all-MiniLM-L6-v2 folder (bench/gpu_carry.sh makes one); default: the installed package",
    )
    cli.add_argument("--out", type=Path, default=RESULTS, help=f"where the JSON goes (default {RESULTS})")
    args = cli.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # skillops picks CUDA whenever it sees it
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.modules.update(dict.fromkeys(UNIMPORTABLE))
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA on this machine: run `python bench/gpu.py --device cpu --tiny` to check the script here")
        return 2

    def out_of_time(*_):
        raise TimeoutError

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(int(args.budget_seconds))
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as work:
        bench = Bench(args.device, args.tiny, Path(work), args.out, args.minilm or _installed_minilm())
        expired = False
        for part in PARTS:
            if expired:
                bench.write(part, {"not run": f"the {args.budget_seconds:.0f} s budget ran out before it"})
                continue
            try:
                getattr(bench, "part_" + part.replace("-", "_"))()
            except TimeoutError:
                expired = True
                bench.write(part, {"not run": f"the {args.budget_seconds:.0f} s budget ran out during it"})
        signal.alarm(0)
    print_table(bench.rows)
    print(f"written to {args.out}")
    return 0 if all("not run" not in row for row in bench.rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
