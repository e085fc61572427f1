"""GPU training throughput of each built-in recipe's card model shape: samples/s, tokens/s, an MFU
estimate and peak memory, with bf16 (fp16 where bf16 is missing) as the pipeline trains.

    .venv/bin/python bench/gpu.py [--steps N]

The weights are random, built from the published configurations of the cards' base models (no
download): XLM-RoBERTa large (card 000, and multilingual-e5-large of card 003),
multilingual-e5-base (card 001, an XLM-RoBERTa base), all-mpnet-base-v2 (card 002) and
all-MiniLM-L6-v2 (card 004). A step is what the recipe's loss does with a batch: encode both
sides at the recipe's max_seq_length, mean-pool, in-batch-negatives (or cosine) loss, backward,
AdamW. MFU = 6 x parameters x tokens per second / the GPU's peak dense bf16 FLOPS (known GPUs
only). Without CUDA it says so and exits 0. Writes bench/results/gpu.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "gpu.json"

# The base models' published configurations (hidden size, layers, heads, feed-forward, vocabulary).
SHAPES = {
    "xlm-roberta-large": ("xlm-roberta", 1024, 24, 16, 4096, 250002),
    "multilingual-e5-base": ("xlm-roberta", 768, 12, 12, 3072, 250002),
    "all-mpnet-base-v2": ("mpnet", 768, 12, 12, 3072, 30527),
    "all-MiniLM-L6-v2": ("bert", 384, 6, 12, 1536, 30522),
}
# Which shape each built-in recipe's model card trains (the recipes ship MiniLM for offline runs).
CARD_SHAPES = {
    "esco-occupation-skills": "xlm-roberta-large",
    "course-skill-retrieval": "multilingual-e5-base",
    "resume-job-similarity": "all-mpnet-base-v2",
    "term-retrieval": "xlm-roberta-large",  # multilingual-e5-large is an XLM-RoBERTa large
    "job-skills": "all-MiniLM-L6-v2",
}
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def build(shape: str):
    import transformers

    kind, hidden, layers, heads, feed_forward, vocab = SHAPES[shape]
    size = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads}
    if kind == "xlm-roberta":
        config = transformers.XLMRobertaConfig(
            vocab_size=vocab, intermediate_size=feed_forward, max_position_embeddings=514, **size
        )
        return transformers.XLMRobertaModel(config)
    if kind == "mpnet":
        config = transformers.MPNetConfig(vocab_size=vocab, intermediate_size=feed_forward, **size)
        return transformers.MPNetModel(config)
    return transformers.BertModel(transformers.BertConfig(vocab_size=vocab, intermediate_size=feed_forward, **size))


def measure(recipe_name: str, steps: int) -> dict:
    import torch

    from skillops.config import load_recipe

    recipe = load_recipe(recipe_name)
    shape = CARD_SHAPES[recipe_name]
    batch, length = recipe.training.batch_size, recipe.training.max_seq_length
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    model = build(shape).cuda().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.training.learning_rate)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    vocab = model.config.vocab_size

    def step() -> None:
        ids = torch.randint(5, vocab, (2, batch, length), device="cuda")
        with torch.autocast("cuda", dtype=dtype):
            anchor, positive = (model(input_ids=side).last_hidden_state.mean(dim=1) for side in ids)
            anchor, positive = (torch.nn.functional.normalize(x.float(), dim=-1) for x in (anchor, positive))
            if recipe.loss.name == "cosine_similarity":
                loss = ((anchor * positive).sum(-1) - 0.5).pow(2).mean()
            else:  # (Cached)MNRL: every other positive of the batch is a negative
                scores = anchor @ positive.T * recipe.loss.scale
                loss = torch.nn.functional.cross_entropy(scores, torch.arange(batch, device="cuda"))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up: kernels, allocator
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    tokens_per_second = steps * 2 * batch * length / seconds
    parameters = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name()
    peak = next((flops for gpu, flops in PEAK_BF16_FLOPS.items() if gpu in name), None)
    return {
        "recipe": recipe_name,
        "shape": shape,
        "parameters": parameters,
        "batch": batch,
        "max_seq_length": length,
        "dtype": str(dtype).removeprefix("torch."),
        "samples_per_second": round(steps * batch / seconds, 1),
        "tokens_per_second": round(tokens_per_second),
        "mfu": round(6 * parameters * tokens_per_second / peak, 3) if peak else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "gpu": name,
    }


def main() -> int:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--steps", type=int, default=20)
    args = cli.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA: bench/gpu.py measures GPU training; nothing to measure on this machine")
        return 0
    rows = [measure(recipe, args.steps) for recipe in CARD_SHAPES]
    RESULTS.write_text(json.dumps(rows, indent=1) + "\n", "utf-8")
    print(f"{'recipe':24} {'shape':22} {'samples/s':>9} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>8}")
    for row in rows:
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "-"
        print(
            f"{row['recipe']:24} {row['shape']:22} {row['samples_per_second']:>9} {row['tokens_per_second']:>10} "
            f"{mfu:>6} {row['peak_memory_gib']:>8}"
        )
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
