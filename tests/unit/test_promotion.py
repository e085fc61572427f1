"""The promotion gate, table-driven on per-query scores: improvement, min_delta (absolute and
relative), significance, secondary metrics and slices."""

import numpy as np
import pytest

from skillops.config import PromotionPolicy
from skillops.judging.evaluation import QueryScores
from skillops.judging.promotion import ModelPolicy, choose_variant, decide, weaker_than

N = 24
REFERENCE = np.linspace(0.3, 0.7, N)  # mean 0.5
NOISE = np.random.default_rng(7).normal(0, 0.08, N)


def ranking(map_values, mrr_values=None, slices=None) -> QueryScores:
    map_values = np.asarray(map_values, dtype=float)
    return QueryScores(
        evaluator="reranking",
        ids=[f"q{i}" for i in range(N)],
        slices=slices or [""] * N,
        per_query={
            "map": map_values.tolist(),
            "mrr_at_10": (map_values if mrr_values is None else np.asarray(mrr_values)).tolist(),
        },
    )


HALVES = ["de"] * (N // 2) + ["en"] * (N // 2)
# Better overall (en +0.2) while the de slice drops by 0.05.
SLICE_DROP = REFERENCE + np.where(np.array(HALVES) == "de", -0.05, 0.2)


@pytest.mark.parametrize(
    ("candidate", "reference_slices", "policy", "promote", "reason_part"),
    [
        pytest.param(REFERENCE + 0.1, None, {}, True, "beats the champion's 0.5000 by 0.1000 (p = 0.0001", id="better"),
        pytest.param(REFERENCE, None, {}, False, "is equal to the champion's", id="equal"),
        pytest.param(REFERENCE - 0.05, None, {}, False, "is worse than the champion's", id="worse"),
        pytest.param(
            REFERENCE + 0.005, None, {"min_delta": 0.01}, False, "less than the +0.0100 required", id="below-min-delta"
        ),
        pytest.param(
            REFERENCE + 0.02,
            None,
            {"min_relative_delta": 0.05},
            False,
            "less than the +0.0250 required",
            id="below-relative-delta",
        ),
        pytest.param(
            REFERENCE + 0.03, None, {"min_relative_delta": 0.05}, True, "by 0.0300", id="above-relative-delta"
        ),
        # Higher on average, but within noise: refused when significance is required ...
        pytest.param(REFERENCE + NOISE - NOISE.mean() + 0.005, None, {}, False, "but not significantly", id="noise"),
        # ... and promoted when the policy does not require it.
        pytest.param(
            REFERENCE + NOISE - NOISE.mean() + 0.005,
            None,
            {"significance_level": None},
            True,
            "not required",
            id="noise-no-significance",
        ),
        pytest.param(SLICE_DROP, HALVES, {}, False, "slice 'de' (12 queries): map", id="slice-regression"),
        pytest.param(SLICE_DROP, HALVES, {"min_slice_queries": 13}, True, "beats", id="slice-too-small-to-hold"),
        pytest.param(SLICE_DROP, HALVES, {"slice_tolerance": 0.06}, True, "beats", id="slice-within-tolerance"),
    ],
)
def test_decision_table(candidate, reference_slices, policy, promote, reason_part):
    decision = decide(
        ranking(candidate, slices=reference_slices),
        ranking(REFERENCE, slices=reference_slices),
        "champion",
        "map",
        ["map", "mrr_at_10"],
        PromotionPolicy(**policy),
        reference_version="3",
    )
    assert decision.promote is promote, decision.reason
    assert reason_part in decision.reason
    assert decision.reference_version == "3"
    assert {check.name for check in decision.checks} >= {"improvement", "significance", "metric mrr_at_10"}


def test_a_secondary_metric_that_drops_blocks_promotion():
    candidate = ranking(REFERENCE + 0.1, mrr_values=REFERENCE - 0.05)
    decision = decide(candidate, ranking(REFERENCE), "base model", "map", ["map", "mrr_at_10"], PromotionPolicy())
    assert not decision.promote
    assert decision.reason.startswith("mrr_at_10 0.4500 vs 0.5000 (-0.0500; tolerance 0.01)")
    assert decision.metrics["map"].delta == pytest.approx(0.1)


def test_the_significance_level_decides_a_small_improvement():
    """The same small, consistent improvement on 6 queries: an exact permutation test gives
    p = 1/64, which passes at 0.05 and fails at 0.01."""
    reference = REFERENCE[:6]
    candidate, champion = (
        QueryScores(evaluator="reranking", ids=list("abcdef"), slices=[""] * 6, per_query={"map": list(values)})
        for values in (reference + 0.01, reference)
    )
    loose = decide(candidate, champion, "champion", "map", ["map"], PromotionPolicy(significance_level=0.05))
    strict = decide(candidate, champion, "champion", "map", ["map"], PromotionPolicy(significance_level=0.01))
    assert loose.p_value == pytest.approx(1 / 64)
    assert loose.promote and not strict.promote


def test_similarity_is_compared_by_correlation_over_resampled_pairs():
    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 1, 200)

    def similarity(cosines):
        return QueryScores(
            evaluator="embedding_similarity",
            ids=[str(i) for i in range(200)],
            slices=[""] * 200,
            per_query={"cosine": list(cosines)},
            gold=list(gold),
        )

    sharp, blurred = similarity(gold + rng.normal(0, 0.05, 200)), similarity(gold + rng.normal(0, 0.4, 200))
    headline = ["spearman_cosine", "pearson_cosine"]
    better = decide(sharp, blurred, "champion", "spearman_cosine", headline, PromotionPolicy())
    assert better.promote and better.p_value < 0.001 and better.interval[0] > 0
    assert not decide(blurred, sharp, "champion", "spearman_cosine", headline, PromotionPolicy()).promote


def test_scores_from_different_test_sets_are_not_compared():
    other = ranking(REFERENCE)
    other.ids = [f"other{i}" for i in range(N)]
    with pytest.raises(ValueError, match="different test sets"):
        decide(ranking(REFERENCE + 0.1), other, "champion", "map", ["map"], PromotionPolicy())


# Golden sets: (candidate, reference) per set, next to a test set on which the candidate is clearly better.
STEADY = (ranking(REFERENCE), ranking(REFERENCE))
IMPROVED = (ranking(REFERENCE + 0.05), ranking(REFERENCE))
DROPPED = (ranking(REFERENCE - 0.1), ranking(REFERENCE))
SLIGHTLY_WORSE = (ranking(REFERENCE - 0.005), ranking(REFERENCE))  # within a 0.01 tolerance, every query lower


@pytest.mark.parametrize(
    ("golden", "policy", "promote", "reason_part"),
    [
        pytest.param({"esco": IMPROVED, "courses": STEADY}, {}, True, "beats", id="better-on-golden"),
        pytest.param(
            {"esco": IMPROVED, "courses": DROPPED},
            {},
            False,
            "golden set 'courses' (24 queries): map 0.4000 vs the champion's 0.5000 (-0.1000; tolerance 0.01",
            id="one-golden-set-regresses",
        ),
        pytest.param({"esco": DROPPED}, {"golden_tolerance": 0.2}, True, "beats", id="drop-within-tolerance-untested"),
        pytest.param(
            {"esco": SLIGHTLY_WORSE},
            {},
            False,
            "(-0.0050; tolerance 0.01; paired test that it is worse: p = 0.0001, level 0.05)",
            id="small-but-significant-drop",
        ),
        pytest.param(
            {"esco": SLIGHTLY_WORSE}, {"significance_level": None}, True, "beats", id="small-drop-no-significance"
        ),
        pytest.param(
            {"esco": STEADY},
            {"require_golden_improvement": ["esco"]},
            False,
            "golden set 'esco' (24 queries): map 0.5000 vs the champion's 0.5000 (+0.0000; must improve)",
            id="required-improvement-missing",
        ),
    ],
)
def test_golden_sets_in_the_gate(golden, policy, promote, reason_part):
    if "golden_tolerance" in policy:
        policy = {**policy, "significance_level": None}  # a 0.1 drop on 24 queries is significant
    decision = decide(
        ranking(REFERENCE + 0.1),
        ranking(REFERENCE),
        "champion",
        "map",
        ["map"],
        PromotionPolicy(**policy),
        "3",
        golden,
    )
    assert decision.promote is promote, decision.reason
    assert reason_part in decision.reason
    assert set(decision.golden) == set(golden)
    assert [check.name for check in decision.checks if check.name.startswith("golden")] == [
        f"golden {n}" for n in golden
    ]


MODEL_POLICY = ModelPolicy(
    promotion=PromotionPolicy(), evaluator="reranking", primary_metric="map", at_k=100, golden={"descriptions": "abc"}
)


@pytest.mark.parametrize(
    ("change", "weaker"),
    [
        ({}, []),
        ({"promotion": {"significance_level": 0.01, "min_delta": 0.01}}, []),  # stricter is fine
        ({"promotion": {"significance_level": None}}, ["promotion.significance_level: None (the model's: 0.05)"]),
        ({"promotion": {"significance_level": 0.1}}, ["promotion.significance_level: 0.1 (the model's: 0.05)"]),
        ({"promotion": {"golden_tolerance": 1.0}}, ["promotion.golden_tolerance: 1.0 (the model's: 0.01)"]),
        ({"promotion": {"secondary_tolerance": 0.5}}, ["promotion.secondary_tolerance: 0.5 (the model's: 0.01)"]),
        ({"promotion": {"resamples": 100}}, ["promotion.resamples: 100 (the model's: 10000)"]),
        ({"primary_metric": "mrr_at_100"}, ["evaluation.primary_metric: 'mrr_at_100' (the model's: 'map')"]),
        (
            {"golden": {}},
            ["evaluation.golden: no golden set 'descriptions' (the model's golden sets: ['descriptions'])"],
        ),
        (
            {"golden": {"descriptions": "xyz"}},
            ["evaluation.golden 'descriptions': another file (content xyz; the model's: abc)"],
        ),
    ],
)
def test_a_policy_weaker_than_the_models_names_each_field(change, weaker):
    data = MODEL_POLICY.model_dump()
    data["promotion"] |= change.pop("promotion", {})
    run = ModelPolicy.model_validate(data | change)
    assert weaker_than(run, MODEL_POLICY) == weaker


def test_a_weaker_policy_refuses_even_a_clear_improvement():
    candidate, reference = ranking(REFERENCE + 0.2), ranking(REFERENCE)
    fields = ["promotion.significance_level: None (the model's: 0.05)"]
    decision = decide(candidate, reference, "champion", "map", ["map"], PromotionPolicy(), weaker_policy=fields)
    assert not decision.promote and decision.checks[0].name == "policy"
    assert "weaker than the one the model is judged by" in decision.reason and fields[0] in decision.reason
    assert decision.delta == pytest.approx(0.2)  # the other checks are still computed and reported


EXACT = {"test": 0.750, "golden-d": 0.60}  # what fp32 scores; a variant scoring this loses nothing
LOSES = {"test": 0.740, "golden-d": 0.60}  # -1.33% on test


@pytest.mark.parametrize(
    ("int8", "blocks", "onnx", "prefer", "served", "says"),
    [
        ({"test": 0.748, "golden-d": 0.60}, EXACT, EXACT, "int8", "int8", "int8: map on test"),
        (LOSES, EXACT, EXACT, "int8", "int8_blocks", "int8: map on test 0.7400"),
        (LOSES, LOSES, EXACT, "int8", "onnx", "more than the tolerance"),
        ({"test": 0.750, "golden-d": 0.58}, {"test": 0.750, "golden-d": 0.58}, EXACT, "int8", "onnx", "on golden-d"),
        (LOSES, LOSES, {"test": 0.749, "golden-d": 0.58}, "int8", "fp32", "-3.33%"),
        (EXACT, EXACT, EXACT, "int8_blocks", "int8_blocks", "int8_blocks is served"),
        (EXACT, EXACT, EXACT, "onnx", "onnx", "onnx is served"),
        ({"test": 0.760, "golden-d": 0.61}, EXACT, EXACT, "fp32", "fp32", "fp32 is served"),
    ],
)
def test_the_variant_served_is_the_fastest_within_the_tolerance_on_every_set(int8, blocks, onnx, prefer, served, says):
    built = {"int8": int8, "int8_blocks": blocks, "onnx": onnx}
    chosen, checks = choose_variant(EXACT, built, prefer, 0.005, "map")
    assert chosen == served
    assert [c.variant for c in checks if c.served] == ([served] if served != "fp32" else [])
    assert any(says in c.detail for c in checks), [c.detail for c in checks]
