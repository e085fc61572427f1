"""Reranking evaluation (MAP, MRR@k, NDCG@k) with sentence-transformers' own evaluator.

Using the library's RerankingEvaluator, not a re-implementation, keeps skillops' numbers equal to
what the model cards report; only the metric names are sanitised for MLflow.
"""

from __future__ import annotations

from pathlib import Path

from skillops.config import EvaluationConfig
from skillops.esco import read_samples
from skillops.tracking import metric_name


def reranking_evaluator(samples_path: Path, config: EvaluationConfig):
    from sentence_transformers.sentence_transformer.evaluation import RerankingEvaluator

    return RerankingEvaluator(
        read_samples(samples_path), at_k=config.at_k, batch_size=config.batch_size, write_csv=False
    )


def evaluate(model, samples_path: Path, config: EvaluationConfig) -> dict[str, float]:
    """Scores of one model on one frozen sample file, keyed by sanitised names (map, ndcg_at_100)."""
    scores = reranking_evaluator(samples_path, config)(model)
    return {metric_name(key): float(value) for key, value in scores.items()}
