"""What judging on the whole vocabulary costs at ESCO's size, against the short list it replaced.

    .venv/bin/python bench/vocabulary.py [--documents 14000]

The bundled sample's 1,278 skills grown to ESCO 1.2's size (13,939) with distinct ESCO-shaped
labels made from its own words; its test occupations and golden descriptions as queries. For
all-MiniLM-L6-v2 as fp32 and each served variant (built as the pipeline builds them), in one run:

- the vocabulary pass: every document encoded once (what every gate set of a run then shares);
- the evaluate stage's scoring of one model on the test set and the golden set (whole
  vocabulary, graded metrics, card 000's short list from the same ranking);
- the baseline: the same two sets scored the old way, each query's skills among 100 random
  others (reranking), as a ratio.

Then what a run and the promotion authority spend per candidate at that size (2 cores here):
the run scores base (cached after its first run), the candidate's fp32 and variants, and the
champion (cached once scored on the snapshot); the authority scores the candidate's four again
(it takes no score from a worker) and reads the champion's from its holdings. Writes
bench/results/vocabulary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "vocabulary.json"


def vocabulary(labels: list[str], size: int, seed: int = 0) -> list[str]:
    """`size` distinct skill-like labels: the real ones, then each real label's head word joined to
    another label's object ("manage" + "database security" -> "manage database security"), as ESCO's
    own labels are built (verb phrase + object)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    found = dict.fromkeys(labels)
    heads = [label.split()[0] for label in labels if len(label.split()) > 1]
    tails = [" ".join(label.split()[1:]) for label in labels if len(label.split()) > 1]
    while len(found) < size:
        found.setdefault(f"{heads[rng.integers(len(heads))]} {tails[rng.integers(len(tails))]}")
    return list(found)[:size]


def _timed(work):
    started = time.perf_counter()
    value = work()
    return value, time.perf_counter() - started


def main(size: int) -> dict:
    import pandas as pd

    from skillops.config import load_recipe
    from skillops.inputs import preparation
    from skillops.judging.evaluation import Encoder, score_sets
    from skillops.serving import variants
    from skillops.training.modeling import load_model, resolve_model

    every_variant = ("fp32", *variants.FILES)  # as the pipeline builds them and the gate scores them
    recipe = load_recipe("esco-occupation-skills")
    with tempfile.TemporaryDirectory(prefix="bench-vocabulary-") as tmp:
        tmp = Path(tmp)
        # The sample grown to `size` skills: the same occupations and relations, more skills to rank.
        esco = tmp / "esco"
        esco.mkdir()
        for name in ("occupations_en.csv", "occupationSkillRelations_en.csv"):
            (esco / name).write_bytes((recipe.data.location / name).read_bytes())
        skills = pd.read_csv(recipe.data.location / "skills_en.csv", dtype=str, keep_default_na=False)
        texts = vocabulary(skills.preferredLabel.str.strip().tolist(), size)
        grown = pd.DataFrame({"conceptUri": [f"bench:{i}" for i in range(len(texts) - len(skills))]})
        grown["preferredLabel"] = texts[len(skills) :]
        pd.concat([skills, grown], ignore_index=True).fillna("").to_csv(esco / "skills_en.csv", index=False)
        whole = recipe.model_copy(update={"data": recipe.data.model_copy(update={"path": str(esco)})})
        short = whole.model_copy(
            update={
                "evaluation": whole.evaluation.model_copy(
                    update={"evaluator": "reranking", "primary_metric": "map", "short_list_negatives": None}
                )
            }
        )
        sets = {}
        for label, variant_recipe in (("whole", whole), ("short", short)):
            paths = preparation.write_task(preparation.build_task(variant_recipe), tmp / label, {})
            sets[label] = {part: paths.eval_set(part) for part in ("test", "golden-descriptions")}
        documents = json.loads(sets["whole"]["test"].read_text())["corpus"]
        model_dir = tmp / "model"
        load_model(resolve_model(recipe.base_model), recipe.training.max_seq_length).save(str(model_dir))
        variants.export(load_model(str(model_dir)), model_dir, list(variants.FILES))
        rows = []
        for variant in every_variant:
            model = variants.load(model_dir, variant)
            model.encode(list(documents.values())[:64])  # warm
            encode = Encoder(model, recipe.prompts, recipe.evaluation.batch_size)
            _, vocabulary_pass = _timed(lambda e=encode: e(list(documents.values()), as_query=False))
            scored, evaluate = _timed(lambda m=model: score_sets(m, sets["whole"], whole.evaluation, whole.prompts))
            _, baseline = _timed(lambda m=model: score_sets(m, sets["short"], short.evaluation, short.prompts))
            rows.append(
                {
                    "variant": variant,
                    "documents": len(documents),
                    "vocabulary_pass_s": vocabulary_pass,
                    "evaluate_s": evaluate,
                    "short_list_s": baseline,
                    "vs_short_list": evaluate / baseline,
                    "test_cosine_map": scored["test"].metric("cosine_map"),
                    "golden_cosine_map": scored["golden-descriptions"].metric("cosine_map"),
                }
            )
            print(
                f"{variant:11}: vocabulary pass {vocabulary_pass:6.1f} s; test + golden {evaluate:6.1f} s "
                f"(short lists {baseline:5.1f} s, {evaluate / baseline:4.1f}x); MAP test "
                f"{rows[-1]['test_cosine_map']:.4f}, golden {rows[-1]['golden_cosine_map']:.4f}",
                flush=True,
            )
    per_model = {row["variant"]: row["evaluate_s"] for row in rows}
    authority = sum(per_model.values())  # the candidate's fp32 and variants; the champion's are cached
    run = per_model["fp32"] + authority  # base (on its first run) and the same
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}",
        "model": recipe.base_model,
        "rows": rows,
        "run_evaluate_stage_s": run,
        "authority_per_candidate_s": authority,
    }
    print(
        f"\nPer candidate at {size:,} documents: the run's evaluate stage {run:.0f} s (base on its first run, "
        f"the candidate's {len(per_model)}); the promotion authority {authority:.0f} s (the candidate's "
        f"{len(per_model)} again; the champion's from its holdings)."
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1), "utf-8")
    return result


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=13939, help="skills to rank (ESCO 1.2: 13,939)")
    main(parser.parse_args().documents)
