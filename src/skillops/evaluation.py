"""Scoring: reranking (MAP, MRR@k, NDCG@k), information retrieval (accuracy/precision/recall@k,
NDCG@10, MRR@10, MAP@100) and embedding similarity (Pearson and Spearman of cosine scores).

The promotion gate needs each query's score, which sentence-transformers' evaluators do not
return, so `score_queries` computes their metrics per query from one encoding of each text; tests
check that its means equal the library's evaluators on the same model and data. Validation during
training, the tuner and the gate all use it (`Scorer`, `evaluate`), so there is one set of
numbers. Metric names are those of `EvaluationConfig.metric_names` (`ndcg_at_10`: MLflow refuses `@`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from skillops.config import IR_CUTOFFS, EvaluationConfig, Prompts
from skillops.preparation import read_eval_set


class QueryScores(BaseModel):
    """One model's scores on one frozen evaluation set, kept per query so that two models can be
    compared query by query (a paired test) and slice by slice, not only by their means.

    Ranking evaluators: `per_query[metric]` holds each query's value and the metric is their mean.
    Embedding similarity: `per_query["cosine"]` holds each pair's cosine and `gold` its score;
    Pearson and Spearman are computed over the pairs, so a resample is a resample of pairs.
    """

    evaluator: str
    ids: list[str]
    slices: list[str]
    per_query: dict[str, list[float]]
    gold: list[float] | None = None

    def metric(self, name: str, rows: np.ndarray | None = None) -> float:
        """The metric over all queries, or over the given rows (a slice or a resample)."""
        if self.evaluator == "embedding_similarity":
            return _correlation(name, np.asarray(self.gold), np.asarray(self.per_query["cosine"]), rows)
        values = np.asarray(self.per_query[name])
        return float(values.mean() if rows is None else values[rows].mean())

    def values(self, name: str) -> np.ndarray:
        """Per-query values the paired test permutes: the metric's, or the cosines for similarity."""
        return np.asarray(self.per_query["cosine" if self.evaluator == "embedding_similarity" else name])

    def aggregate(self, names: tuple[str, ...]) -> dict[str, float]:
        return {name: self.metric(name) for name in names}

    def standard_error(self, name: str) -> float:
        """How much the metric moves by the luck of which queries were drawn: the standard error of
        the mean over queries, or for a correlation over pairs (1 - r^2) / sqrt(n - 1)."""
        count = len(self.ids)
        if count < 2:
            return float("inf")
        if self.evaluator == "embedding_similarity":
            return (1 - self.metric(name) ** 2) / (count - 1) ** 0.5
        return float(np.asarray(self.per_query[name]).std(ddof=1) / count**0.5)


class GoldenScores(BaseModel):
    """Base, candidate and champion on one golden set."""

    base: QueryScores
    candidate: QueryScores
    champion: QueryScores | None


class VariantCheck(BaseModel):
    """One served variant (onnx, int8) of the candidate against its fp32 weights, on every gate set."""

    variant: str
    served: bool
    primary: dict[str, float]  # eval set -> the variant's primary metric
    drop: dict[str, float]  # eval set -> its relative drop below fp32 (negative: above)
    detail: str


class Scores(BaseModel):
    """Per-query scores of base, candidate and champion on the run's frozen test set, and on each
    golden set of the recipe (by name). The candidate's are those of the variant it is served as
    (`served_variant`); `variants` says how each built variant compared with fp32."""

    base: QueryScores
    candidate: QueryScores
    champion: QueryScores | None
    champion_version: str | None
    champion_source: str | None = None  # how the champion's scores were obtained (cache or re-scored)
    golden: dict[str, GoldenScores] = {}
    served_variant: str = "fp32"
    variants: list[VariantCheck] = []

    def table(self, metrics: list[str]) -> dict[str, dict[str, float]]:
        rows = {"base": self.base, "candidate": self.candidate}
        if self.champion is not None:
            rows[f"champion (v{self.champion_version})"] = self.champion
        return {model: values.aggregate(tuple(metrics)) for model, values in rows.items()}

    def golden_table(self, metrics: list[str]) -> dict[str, dict[str, dict[str, float]]]:
        """Golden set -> model -> metric, as `table` gives them for the test set."""
        tables = {}
        for name, sets in self.golden.items():
            rows = {"base": sets.base, "candidate": sets.candidate}
            if sets.champion is not None:
                rows[f"champion (v{self.champion_version})"] = sets.champion
            tables[name] = {model: values.aggregate(tuple(metrics)) for model, values in rows.items()}
        return tables


def _correlation(name: str, gold: np.ndarray, predicted: np.ndarray, rows: np.ndarray | None = None) -> float:
    from scipy.stats import pearsonr, spearmanr

    if rows is not None:
        gold, predicted = gold[rows], predicted[rows]
    correlation = spearmanr if name.startswith("spearman") else pearsonr
    return float(correlation(gold, predicted)[0])


def _encode(model, texts: list[str], prompt: str, as_query: bool, batch_size: int):
    # encode_query/encode_document with an explicit prompt ("" for none), as sentence-transformers'
    # own evaluators do: the model's saved prompts are then never added a second time.
    encode = model.encode_query if as_query else model.encode_document
    return encode(texts, prompt=prompt, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)


def _reranking_scores(model, samples: list[dict], config: EvaluationConfig, prompts: Prompts) -> dict[str, list[float]]:
    import torch
    from sentence_transformers.util import cos_sim
    from sklearn.metrics import average_precision_score, ndcg_score

    at_k = config.at_k
    queries = _encode(
        model, [sample["query"] for sample in samples], prompts.query, as_query=True, batch_size=config.batch_size
    )
    # Each distinct text once: the same skills are the candidates of many queries (a golden set of
    # 91 queries lists 11,032 candidates, 715 of them distinct).
    unique: dict[str, int] = {}
    for sample in samples:
        for text in (*sample["positive"], *sample["negative"]):
            unique.setdefault(text, len(unique))
    documents = _encode(model, list(unique), prompts.document, as_query=False, batch_size=config.batch_size)
    values: dict[str, list[float]] = {"map": [], f"mrr_at_{at_k}": [], f"ndcg_at_{at_k}": []}
    for index, sample in enumerate(samples):
        relevant = [1] * len(sample["positive"]) + [0] * len(sample["negative"])
        rows = [unique[text] for text in (*sample["positive"], *sample["negative"])]
        scores = cos_sim(queries[index], documents[rows])[0]
        top = torch.argsort(-scores)[:at_k].tolist()
        first_hit = next((rank for rank, doc in enumerate(top) if relevant[doc]), None)
        values[f"mrr_at_{at_k}"].append(0.0 if first_hit is None else 1 / (first_hit + 1))
        listed = scores.cpu().tolist()
        values[f"ndcg_at_{at_k}"].append(float(ndcg_score([relevant], [listed], k=at_k)))
        values["map"].append(float(average_precision_score(relevant, listed)))
    return values


def _retrieval_scores(model, data: dict, config: EvaluationConfig, prompts: Prompts) -> dict[str, list[float]]:
    from sentence_transformers.util import cos_sim

    query_ids, doc_ids = list(data["queries"]), list(data["corpus"])
    queries = _encode(
        model, [data["queries"][q] for q in query_ids], prompts.query, as_query=True, batch_size=config.batch_size
    )
    corpus = _encode(
        model, [data["corpus"][d] for d in doc_ids], prompts.document, as_query=False, batch_size=config.batch_size
    )
    similarity = cos_sim(queries, corpus).cpu().numpy()
    deepest = max(max(cutoffs) for cutoffs in IR_CUTOFFS.values())
    values: dict[str, list[float]] = {
        f"cosine_{kind}_at_{k}": [] for kind, cutoffs in IR_CUTOFFS.items() for k in cutoffs
    }
    for row, query_id in enumerate(query_ids):
        relevant = set(data["relevant_docs"][query_id])
        # Ties broken by document id, as sentence-transformers' evaluator does.
        ranked = sorted(range(len(doc_ids)), key=lambda d: (-similarity[row, d], doc_ids[d]))[:deepest]
        hits = [doc_ids[d] in relevant for d in ranked]
        for k in IR_CUTOFFS["accuracy"]:
            values[f"cosine_accuracy_at_{k}"].append(float(any(hits[:k])))
        for k in IR_CUTOFFS["precision"]:
            values[f"cosine_precision_at_{k}"].append(sum(hits[:k]) / k)
            values[f"cosine_recall_at_{k}"].append(sum(hits[:k]) / len(relevant))
        for k in IR_CUTOFFS["mrr"]:
            values[f"cosine_mrr_at_{k}"].append(next((1 / (rank + 1) for rank, hit in enumerate(hits[:k]) if hit), 0.0))
        for k in IR_CUTOFFS["ndcg"]:
            dcg = sum(1 / np.log2(rank + 2) for rank, hit in enumerate(hits[:k]) if hit)
            ideal = sum(1 / np.log2(rank + 2) for rank in range(min(k, len(relevant))))
            values[f"cosine_ndcg_at_{k}"].append(float(dcg / ideal))
        for k in IR_CUTOFFS["map"]:
            found, precision_sum = 0, 0.0
            for rank, hit in enumerate(hits[:k]):
                if hit:
                    found += 1
                    precision_sum += found / (rank + 1)
            values[f"cosine_map_at_{k}"].append(precision_sum / min(k, len(relevant)))
    return values


def score_queries(model, eval_set_path: Path, config: EvaluationConfig, prompts: Prompts) -> QueryScores:
    """Per-query scores of one model on one frozen evaluation set, encoding each text once.

    The means equal what sentence-transformers' evaluators report on the same model and data
    (tests/test_training.py checks it); only the per-query values are new.
    """
    return _score_loaded(model, read_eval_set(eval_set_path), config, prompts)


def _score_loaded(model, data: Any, config: EvaluationConfig, prompts: Prompts) -> QueryScores:
    if config.evaluator == "reranking":
        return QueryScores(
            evaluator=config.evaluator,
            ids=[s["query"] for s in data],
            slices=[s.get("slice", "") for s in data],
            per_query=_reranking_scores(model, data, config, prompts),
        )
    if config.evaluator == "information_retrieval":
        slices = data.get("query_slices", {})
        return QueryScores(
            evaluator=config.evaluator,
            ids=list(data["queries"]),
            slices=[slices.get(q, "") for q in data["queries"]],
            per_query=_retrieval_scores(model, data, config, prompts),
        )
    import torch

    first = _encode(model, data["sentence1"], prompts.query, as_query=True, batch_size=config.batch_size)
    second = _encode(model, data["sentence2"], prompts.document, as_query=False, batch_size=config.batch_size)
    cosines = torch.nn.functional.cosine_similarity(first, second).cpu().tolist()
    return QueryScores(
        evaluator=config.evaluator,
        ids=[str(i) for i in range(len(cosines))],
        slices=data.get("slice", [""] * len(cosines)),
        per_query={"cosine": cosines},
        gold=[float(s) for s in data["score"]],
    )


def evaluate(model, eval_set_path: Path, config: EvaluationConfig, prompts: Prompts) -> dict[str, float]:
    """Scores of one model on one frozen evaluation set, keyed by skillops' metric names."""
    return score_queries(model, eval_set_path, config, prompts).aggregate(config.metric_names())


def scorer(eval_set_path: Path, config: EvaluationConfig, prompts: Prompts, with_stderr: bool = False):
    """`evaluate` on one evaluation set as a sentence-transformers evaluator, for the trainer to
    call during training: validation curves, the tuner and the promotion gate score with the same
    code. `with_stderr` adds `<primary metric>_stderr` (the tuner's pruner weighs it). (Built on
    call: sentence-transformers is imported only when a model is trained.)"""
    from sentence_transformers.base.evaluation import BaseEvaluator

    data = read_eval_set(eval_set_path)  # once, not at every evaluation step

    class Scorer(BaseEvaluator):
        def __init__(self) -> None:
            super().__init__()
            self.primary_metric = config.primary_metric

        def __call__(
            self, model, output_path: str | None = None, epoch: float = -1, steps: int = -1
        ) -> dict[str, float]:
            scores = _score_loaded(model, data, config, prompts)
            metrics = scores.aggregate(config.metric_names())
            if with_stderr:
                metrics[f"{config.primary_metric}_stderr"] = scores.standard_error(config.primary_metric)
            return metrics

    return Scorer()
