"""skillops' whole-ranking metrics against an independent implementation: WorkRB's
`calculate_ranking_metrics` (the metric code of the field's ESCO benchmark), query by query, on the
same score matrices. Where the two define a metric differently (MRR's cut-off, `rp@k`, tied scores)
the test shows how they relate, as the docs say."""

from __future__ import annotations

import numpy as np
import pytest
from workrb.metrics import ranking as workrb  # a dev dependency: WorkRB's metric code, offline

from skillops.judging.evaluation import ranking_metrics


def _theirs(row: np.ndarray, positives: list[int], grades: list[float] | None, metrics: list[str]) -> dict:
    return workrb.calculate_ranking_metrics(row[None, :], [positives], metrics, None if grades is None else [grades])


def _matrices():
    """Tie-free score matrices: several positives, one positive, graded relevance."""
    rng = np.random.default_rng(7)
    cases = []
    for queries, documents, graded in ((12, 300, False), (9, 40, True), (15, 1000, True)):
        scores = rng.permutation(queries * documents).reshape(queries, documents) / (queries * documents)
        positives, grades = [], []
        for query in range(queries):
            count = 1 if query % 3 == 0 else int(rng.integers(2, 25))
            positives.append(sorted(rng.choice(documents, size=count, replace=False).tolist()))
            grades.append(rng.choice([1.0, 2.0], size=count).tolist() if graded else [1.0] * count)
        cases.append((scores, positives, grades if graded else None))
    return cases


@pytest.mark.parametrize("case", range(3))
def test_map_mrr_ndcg_and_recall_equal_workrb_per_query(case):
    scores, positives, grades = _matrices()[case]
    ours = ranking_metrics(scores, positives, grades)
    for query, row in enumerate(scores):
        query_grades = None if grades is None else grades[query]
        theirs = _theirs(row, positives[query], query_grades, ["map", "mrr", "ndcg@10", "recall@10", "recall@100"])
        assert ours["map"][query] == pytest.approx(theirs["map"], abs=1e-6)
        # WorkRB's MRR has no cut-off; skillops reports MRR@10 and keeps the uncut one beside it.
        assert ours["mrr"][query] == pytest.approx(theirs["mrr"], abs=1e-6)
        assert ours["mrr_at_10"][query] == pytest.approx(theirs["mrr"] if theirs["mrr"] >= 0.1 else 0.0, abs=1e-6)
        assert ours["ndcg_at_10"][query] == pytest.approx(theirs["ndcg@10"], abs=1e-6)
        assert ours["recall_at_10"][query] == pytest.approx(theirs["recall@10"], abs=1e-6)
        assert ours["recall_at_100"][query] == pytest.approx(theirs["recall@100"], abs=1e-6)
        # WorkRB's rp@k is the share of relevant documents in the top k, of min(k, R): R-precision
        # is its value at k = R, the query's own number of relevant documents.
        count = len(positives[query])
        assert ours["r_precision"][query] == pytest.approx(
            _theirs(row, positives[query], None, [f"rp@{count}"])[f"rp@{count}"], abs=1e-6
        )


def test_graded_relevance_weighs_essential_skills_above_optional_ones():
    """With the same ranks, putting the essential skill (grade 2) first scores a higher NDCG than
    putting the optional one first; binary metrics do not see the grades."""
    scores = np.array([[0.9, 0.8, 0.1, 0.0]])
    essential_first = ranking_metrics(scores, [[0, 1]], [[2.0, 1.0]])
    optional_first = ranking_metrics(scores, [[0, 1]], [[1.0, 2.0]])
    assert essential_first["ndcg_at_10"][0] == pytest.approx(1.0)
    assert optional_first["ndcg_at_10"][0] < 1.0
    assert essential_first["map"] == optional_first["map"] == [1.0]


def test_tied_scores_are_ordered_by_document_id_not_by_column():
    """The documented difference: on tied scores skillops orders documents by id (as
    sentence-transformers' IR evaluator does), WorkRB by numpy's argsort of the scores. Here the
    relevant document (column 1) ties with column 0 but has the smaller id: skillops ranks it
    first, WorkRB second."""
    scores = np.array([[0.5, 0.5, 0.1]])
    by_id = np.array([1, 0, 2])  # column 1's id sorts first ("d0" < "d1")
    assert ranking_metrics(scores, [[1]], None, by_id)["map"] == [1.0]
    assert _theirs(scores[0], [1], None, ["map"])["map"] == pytest.approx(0.5)
    assert ranking_metrics(scores, [[1]])["map"] == [0.5]  # ties by column: the same as WorkRB here
