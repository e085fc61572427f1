"""Scoring with sentence-transformers' own evaluators: reranking (MAP, MRR@k, NDCG@k), information
retrieval (accuracy/precision/recall@k, NDCG@10, MRR@10, MAP@100) and embedding similarity
(Pearson and Spearman of cosine scores).

Using the library's evaluators, not re-implementations, keeps skillops' numbers equal to what the
model cards report; only the metric names are sanitised for MLflow (`tracking.metric_name`).
"""

from __future__ import annotations

from pathlib import Path

from skillops.config import IR_CUTOFFS, EvaluationConfig, Prompts
from skillops.tasks import read_eval_set
from skillops.tracking import metric_name


def _with_prompt(prompt: str, texts: list[str]) -> list[str]:
    return [prompt + text for text in texts] if prompt else list(texts)


def build_evaluator(eval_set_path: Path, config: EvaluationConfig, prompts: Prompts):
    """The recipe's evaluator on one frozen evaluation set, with the recipe's prompts applied the
    way the model sees them in training (queries get `prompts.query`, documents `prompts.document`)."""
    from sentence_transformers.sentence_transformer import evaluation

    data = read_eval_set(eval_set_path)
    if config.evaluator == "reranking":
        samples = [
            {
                "query": prompts.query + sample["query"],
                "positive": _with_prompt(prompts.document, sample["positive"]),
                "negative": _with_prompt(prompts.document, sample["negative"]),
            }
            for sample in data
        ]
        return evaluation.RerankingEvaluator(samples, at_k=config.at_k, batch_size=config.batch_size, write_csv=False)
    if config.evaluator == "information_retrieval":
        return evaluation.InformationRetrievalEvaluator(
            data["queries"],
            data["corpus"],
            {query: set(docs) for query, docs in data["relevant_docs"].items()},
            accuracy_at_k=list(IR_CUTOFFS["accuracy"]),
            precision_recall_at_k=list(IR_CUTOFFS["precision"]),
            ndcg_at_k=list(IR_CUTOFFS["ndcg"]),
            mrr_at_k=list(IR_CUTOFFS["mrr"]),
            map_at_k=list(IR_CUTOFFS["map"]),
            batch_size=config.batch_size,
            query_prompt=prompts.query or None,
            corpus_prompt=prompts.document or None,
            score_functions=None,
            write_csv=False,
        )
    return evaluation.EmbeddingSimilarityEvaluator(
        _with_prompt(prompts.query, data["sentence1"]),
        _with_prompt(prompts.document, data["sentence2"]),
        data["score"],
        batch_size=config.batch_size,
        similarity_fn_names=["cosine"],
        write_csv=False,
    )


def sanitise(scores: dict[str, float]) -> dict[str, float]:
    return {metric_name(key): float(value) for key, value in scores.items()}


def evaluate(model, eval_set_path: Path, config: EvaluationConfig, prompts: Prompts) -> dict[str, float]:
    """Scores of one model on one frozen evaluation set, keyed by skillops' metric names."""
    return sanitise(build_evaluator(eval_set_path, config, prompts)(model))
