"""Scoring: reranking (MAP, MRR@k, NDCG@k over each query's short list), information retrieval
(each query ranks the whole corpus: MAP with no cut-off, R-precision, accuracy/precision/recall@k,
NDCG@10 with graded relevance, MRR@10, MAP@100) and embedding similarity (Pearson and Spearman of
cosine scores).

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

from skillops.config import IR_CUTOFFS, SHORT_LIST, EvaluationConfig, Prompts
from skillops.inputs.preparation import read_eval_set


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
    """One served variant (onnx, int8, int8_blocks) of the candidate against its fp32 weights, on every gate set."""

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


class Encoder:
    """One model's embeddings of texts, each text encoded once per side (queries with the query
    prompt, documents with the document prompt) however many sets and queries it appears in: the
    ESCO recipe's test and golden sets all rank the same whole vocabulary, and its skills are the
    candidates of many queries."""

    def __init__(self, model, prompts: Prompts, batch_size: int) -> None:
        self.model, self.prompts, self.batch_size = model, prompts, batch_size
        self._cache: dict[bool, dict[str, Any]] = {True: {}, False: {}}

    def __call__(self, texts: list[str], as_query: bool):
        """The embeddings of `texts`, one row each, in their order (a torch tensor)."""
        import torch

        cache = self._cache[as_query]
        missing = [text for text in dict.fromkeys(texts) if text not in cache]
        if missing:
            # encode_query/encode_document with an explicit prompt ("" for none), as
            # sentence-transformers' own evaluators do: the model's saved prompts are then never
            # added a second time.
            encode = self.model.encode_query if as_query else self.model.encode_document
            prompt = self.prompts.query if as_query else self.prompts.document
            vectors = encode(
                missing, prompt=prompt, batch_size=self.batch_size, convert_to_tensor=True, show_progress_bar=False
            )
            cache.update(zip(missing, vectors, strict=True))
        return torch.stack([cache[text] for text in texts]) if texts else torch.empty(0)


def _reranking_scores(encode: Encoder, samples: list[dict], config: EvaluationConfig) -> dict[str, list[float]]:
    import torch
    from sentence_transformers.util import cos_sim
    from sklearn.metrics import average_precision_score, ndcg_score

    at_k = config.at_k
    queries = encode([sample["query"] for sample in samples], as_query=True)
    # Each distinct text once: the same skills are the candidates of many queries (a golden set of
    # 91 queries lists 11,032 candidates, 715 of them distinct).
    unique: dict[str, int] = {}
    for sample in samples:
        for text in (*sample["positive"], *sample["negative"]):
            unique.setdefault(text, len(unique))
    documents = encode(list(unique), as_query=False)
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


def ranking_metrics(
    similarity: np.ndarray,
    relevant: list[list[int]],
    relevance: list[list[float]] | None = None,
    tie_order: np.ndarray | None = None,
) -> dict[str, list[float]]:
    """Per-query metrics of ranking every document (the columns of `similarity`) for each query
    (its rows), with no cut-off unless the metric's name has one.

    `relevant[q]`: the columns relevant to query q; `relevance[q]`: their grades (default 1 each:
    ESCO's essential skills are 2, optional ones 1). Binary metrics count every relevant column
    whatever its grade; NDCG weighs each by 2^grade - 1 (the gain WorkRB, TREC and scikit-learn's
    exponential form use), so with grades of 1 it is the binary NDCG. Ties are broken by
    `tie_order` (a rank per column; the library's IR evaluator orders tied documents by id), else
    by column. Keys: `map` (over the whole ranking, as WorkRB computes it), `r_precision`, `mrr`
    (no cut-off) and `<kind>_at_<k>` for every cut-off of IR_CUTOFFS.
    """
    rows, columns = similarity.shape
    tie_order = np.arange(columns) if tie_order is None else tie_order
    values: dict[str, list[float]] = {"map": [], "r_precision": [], "mrr": []}
    values |= {f"{kind}_at_{k}": [] for kind, cutoffs in IR_CUTOFFS.items() for k in cutoffs}
    for row in range(rows):
        order = np.lexsort((tie_order, -similarity[row]))
        rank_of = np.empty(columns, dtype=np.int64)
        rank_of[order] = np.arange(1, columns + 1)
        docs = np.asarray(relevant[row], dtype=np.int64)
        grades = np.ones(len(docs)) if relevance is None else np.asarray(relevance[row], dtype=float)
        ranks = rank_of[docs]
        by_rank = np.argsort(ranks, kind="stable")
        ranks, grades = ranks[by_rank], grades[by_rank]
        found = np.arange(1, len(ranks) + 1)  # relevant documents at or above each relevant rank
        count = len(ranks)
        values["map"].append(float(np.mean(found / ranks)))
        values["r_precision"].append(float(np.sum(ranks <= count) / count))
        values["mrr"].append(float(1 / ranks[0]))
        for k in IR_CUTOFFS["accuracy"]:
            values[f"accuracy_at_{k}"].append(float(ranks[0] <= k))
        for k in IR_CUTOFFS["precision"]:
            values[f"precision_at_{k}"].append(float(np.sum(ranks <= k) / k))
        for k in IR_CUTOFFS["recall"]:
            values[f"recall_at_{k}"].append(float(np.sum(ranks <= k) / count))
        for k in IR_CUTOFFS["mrr"]:
            values[f"mrr_at_{k}"].append(float(1 / ranks[0]) if ranks[0] <= k else 0.0)
        for k in IR_CUTOFFS["ndcg"]:
            top = ranks <= k
            dcg = np.sum((2.0 ** grades[top] - 1) / np.log2(ranks[top] + 1))
            ideal = np.sort(grades)[::-1][:k]
            idcg = np.sum((2.0**ideal - 1) / np.log2(np.arange(2, len(ideal) + 2)))
            values[f"ndcg_at_{k}"].append(float(dcg / idcg) if idcg > 0 else 0.0)
        for k in IR_CUTOFFS["map"]:
            within = ranks <= k
            values[f"map_at_{k}"].append(float(np.sum(found[within] / ranks[within]) / min(k, count)))
    return values


def _retrieval_scores(encode: Encoder, data: dict, config: EvaluationConfig) -> dict[str, list[float]]:
    """Every query ranks the whole corpus (for the ESCO recipe: every skill of the download)."""
    from sentence_transformers.util import cos_sim

    query_ids, doc_ids = list(data["queries"]), list(data["corpus"])
    queries = encode([data["queries"][q] for q in query_ids], as_query=True)
    corpus = encode([data["corpus"][d] for d in doc_ids], as_query=False)
    similarity = cos_sim(queries, corpus).cpu().numpy()
    column = {doc: index for index, doc in enumerate(doc_ids)}
    tie_order = np.argsort(np.argsort(np.asarray(doc_ids, dtype=object), kind="stable"), kind="stable")
    grades = data.get("relevance", {})
    relevant = [[column[doc] for doc in data["relevant_docs"][q]] for q in query_ids]
    relevance = [[float(grades.get(q, {}).get(doc, 1)) for doc in data["relevant_docs"][q]] for q in query_ids]
    computed = ranking_metrics(similarity, relevant, relevance, tie_order)
    values = {name: computed[name.removeprefix("cosine_")] for name in config.metric_names() if name != SHORT_LIST}
    if SHORT_LIST in config.metric_names():
        # Card 000's setup: each query's relevant documents among a frozen draw of others.
        short = []
        for row, query_id in enumerate(query_ids):
            kept = relevant[row] + [column[doc] for doc in data["short_list"][query_id]]
            within = ranking_metrics(
                similarity[row : row + 1, kept], [list(range(len(relevant[row])))], None, tie_order[kept]
            )
            short.append(within["map"][0])
        values[SHORT_LIST] = short
    return values


def score_queries(model, eval_set_path: Path, config: EvaluationConfig, prompts: Prompts) -> QueryScores:
    """Per-query scores of one model on one frozen evaluation set, encoding each text once.

    The means equal what sentence-transformers' evaluators report on the same model and data
    (tests/test_training.py checks it); only the per-query values are new.
    """
    return score_sets(model, {"set": eval_set_path}, config, prompts)["set"]


def score_sets(model, eval_sets: dict[str, Path], config: EvaluationConfig, prompts: Prompts) -> dict[str, QueryScores]:
    """Per-query scores of one model on several frozen evaluation sets (name -> file), each
    distinct text encoded once across all of them."""
    encode = Encoder(model, prompts, config.batch_size)
    return {name: score_encoded(encode, read_eval_set(path), config) for name, path in eval_sets.items()}


def score_encoded(encode: Encoder, data: Any, config: EvaluationConfig) -> QueryScores:
    """Per-query scores of a loaded eval set with `encode`'s embeddings (shared with other work)."""
    if config.evaluator == "reranking":
        return QueryScores(
            evaluator=config.evaluator,
            ids=[s["query"] for s in data],
            slices=[s.get("slice", "") for s in data],
            per_query=_reranking_scores(encode, data, config),
        )
    if config.evaluator == "information_retrieval":
        slices = data.get("query_slices", {})
        return QueryScores(
            evaluator=config.evaluator,
            ids=list(data["queries"]),
            slices=[slices.get(q, "") for q in data["queries"]],
            per_query=_retrieval_scores(encode, data, config),
        )
    import torch

    first, second = encode(data["sentence1"], as_query=True), encode(data["sentence2"], as_query=False)
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
            scores = score_encoded(Encoder(model, prompts, config.batch_size), data, config)
            metrics = scores.aggregate(config.metric_names())
            if with_stderr:
                metrics[f"{config.primary_metric}_stderr"] = scores.standard_error(config.primary_metric)
            return metrics

    return Scorer()
