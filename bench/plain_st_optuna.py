"""The baseline of bench/overhead.py: what a user could write instead of skillops, in plain
sentence-transformers + Optuna. The trainer's own `hyperparameter_search` (TPE with a seed, the
median pruner at the validation steps), a final training with the best trial's parameters, and
sentence-transformers' InformationRetrievalEvaluator on the test and golden sets: each query
ranks the whole vocabulary (MAP at k = the corpus size, the full ranking's MAP). No MLflow, no
checks, no registry.

    python bench/plain_st_optuna.py settings.json     # prints one JSON line of times and scores

settings.json names the prepared data folder (train.parquet, validation.json, test.json and the
golden set's file: the flow's own frozen sets) and the search and training settings;
bench/overhead.py writes it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import optuna
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.base.sampler import BatchSamplers
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

settings = json.loads(Path(sys.argv[1]).read_text())
data = Path(settings["data"])
train = Dataset.from_parquet(str(data / "train.parquet"))


def whole_vocabulary(part: str) -> tuple[InformationRetrievalEvaluator, str]:
    """The library's evaluator on one of the flow's frozen sets, and the name of its MAP over the
    full ranking (MAP at k = every document)."""
    frozen = json.loads((data / f"{part}.json").read_text())
    k = len(frozen["corpus"])
    evaluator = InformationRetrievalEvaluator(
        frozen["queries"], frozen["corpus"], frozen["relevant_docs"], map_at_k=[k], name=part,
        accuracy_at_k=[1], precision_recall_at_k=[1], mrr_at_k=[10], ndcg_at_k=[10], show_progress_bar=False,
    )  # fmt: skip
    return evaluator, f"{part}_cosine_map@{k}"


validation, validation_map = whole_vocabulary("validation")
test, test_map_name = whole_vocabulary("test")
golden, golden_map_name = whole_vocabulary(settings["golden"])
seconds = {}


def model_init(trial=None):
    model = SentenceTransformer(settings["model"])
    model.max_seq_length = settings["max_seq_length"]
    return model


def hp_space(trial):
    # In skillops' order: the seeded sampler draws its random numbers in the order of the calls,
    # so another order gives other parameters to the same trial number.
    learning_rate = trial.suggest_float("learning_rate", *settings["learning_rate"], log=True)
    batch_size = trial.suggest_categorical("batch_size", settings["batch_sizes"])
    steps = int(-(-len(train) // batch_size) * settings["trial_epochs"])
    return {
        "learning_rate": learning_rate,
        "per_device_train_batch_size": batch_size,
        "warmup_steps": trial.suggest_float("warmup_ratio", *settings["warmup_ratio"]),
        "eval_steps": max(1, steps // settings["evals_per_trial"]),
    }


def arguments(output: str, epochs: float, **more) -> SentenceTransformerTrainingArguments:
    return SentenceTransformerTrainingArguments(
        output_dir=output,
        num_train_epochs=epochs,
        seed=settings["seed"],
        batch_sampler=BatchSamplers.NO_DUPLICATES,  # one skill is the positive of many occupations
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        **more,
    )


started = time.perf_counter()
base = model_init()
base_map, base_golden_map = test(base)[test_map_name], golden(base)[golden_map_name]
seconds["evaluation"] = time.perf_counter() - started

started = time.perf_counter()
searcher = SentenceTransformerTrainer(
    # warmup_steps given as a float: the search casts each suggested value to the type of the
    # argument's current value, and the default 0 (an int) would turn every warmup ratio into 0.
    args=arguments("plain-search", settings["trial_epochs"], eval_strategy="steps", warmup_steps=0.0),
    train_dataset=train,
    evaluator=validation,
    model_init=model_init,
    loss=lambda model: MultipleNegativesRankingLoss(model, scale=settings["scale"]),
)
best = searcher.hyperparameter_search(
    hp_space=hp_space,
    compute_objective=lambda metrics: metrics[f"eval_{validation_map}"],
    n_trials=settings["n_trials"],
    direction="maximize",
    backend="optuna",
    sampler=optuna.samplers.TPESampler(seed=settings["seed"]),
    pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
)
seconds["tuning"] = time.perf_counter() - started

started = time.perf_counter()
model = model_init()
trainer = SentenceTransformerTrainer(
    model=model,
    args=arguments(
        "plain-final",
        settings["epochs"],
        learning_rate=best.hyperparameters["learning_rate"],
        per_device_train_batch_size=best.hyperparameters["batch_size"],
        warmup_steps=best.hyperparameters["warmup_ratio"],
    ),
    train_dataset=train,
    loss=MultipleNegativesRankingLoss(model, scale=settings["scale"]),
)
trainer.train()
model.save("plain-model")  # as the flow does: a model is trained to be kept
seconds["training"] = time.perf_counter() - started

started = time.perf_counter()
test_map, golden_map = test(model)[test_map_name], golden(model)[golden_map_name]
seconds["evaluation"] += time.perf_counter() - started
print(
    json.dumps(
        {
            "seconds": seconds,
            "base_map": base_map,
            "test_map": test_map,
            "base_golden_map": base_golden_map,
            "golden_map": golden_map,
            "best": best.hyperparameters,
        }
    )
)
