"""The promotion gate as a pure function: same per-query scores, same decision, testable from a table.

A candidate is compared with a reference (the champion, or the base model when there is no
champion yet) on the same frozen test set, query by query:

1. the primary metric is strictly higher, by at least `min_delta` and `min_relative_delta`;
2. a one-sided paired permutation test says the improvement is unlikely to be noise
   (p < `significance_level`), unless the policy turns that off;
3. no other headline metric drops by more than `secondary_tolerance`;
4. no slice with enough queries drops its primary metric by more than `slice_tolerance`;
5. on every golden set (a frozen benchmark that never changes with the data) the primary metric
   drops by at most `golden_tolerance` and, where the set is large enough for the paired test,
   not significantly; sets named in `require_golden_improvement` must rise.

Every check is computed and kept in the decision, so a report shows all of them, and the reason
names the first that failed.

The policy a registered model is judged by belongs to the model (`ModelPolicy`, stored with it):
a run whose own policy is weaker in any field (`weaker_than`) may register, never promote.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from skillops.config import PromotionPolicy, Recipe
from skillops.errors import PolicyError
from skillops.judging.evaluation import QueryScores, VariantCheck

CONFIDENCE = 0.95  # of the bootstrap interval reported for the primary metric's difference


class ModelPolicy(BaseModel):
    """What a registered model's candidates are judged by, kept with the model: the gate's policy,
    the metric it compares and the golden sets (by name, with the fingerprint of their content)
    every candidate must be scored on."""

    promotion: PromotionPolicy
    evaluator: str
    primary_metric: str
    at_k: int
    golden: dict[str, str] = {}  # golden set name -> fingerprint of its file
    max_variant_drop: float = 0.005  # serving.max_relative_drop: how far below fp32 a served variant may be

    @classmethod
    def of_recipe(cls, recipe: Recipe) -> ModelPolicy:
        """What a recipe would judge the model's candidates by, golden sets fingerprinted by content."""
        from skillops.inputs.preparation import fingerprint_files

        evaluation = recipe.evaluation
        return cls(
            promotion=recipe.promotion,
            evaluator=evaluation.evaluator,
            primary_metric=evaluation.primary_metric,
            at_k=evaluation.at_k,
            golden={golden.name: fingerprint_files([golden.location]) for golden in evaluation.golden},
            max_variant_drop=recipe.serving.max_relative_drop,
        )

    def with_promotion(self, fields: dict[str, Any]) -> ModelPolicy:
        """A copy with promotion fields replaced ("golden_tolerance" or "promotion.golden_tolerance"),
        validated as a recipe's are: an unknown field or a bad value raises `PolicyError`."""
        changed = {field.removeprefix("promotion."): value for field, value in fields.items()}
        try:
            promotion = PromotionPolicy.model_validate({**self.promotion.model_dump(), **changed})
        except ValidationError as error:
            problem = error.errors()[0]
            raise PolicyError(
                f"promotion.{'.'.join(str(p) for p in problem['loc'])} = {problem.get('input')!r}: {problem['msg']}"
            ) from None
        return self.model_copy(update={"promotion": promotion})


# Fields where a higher value lets more candidates through ...
_LOOSER_WHEN_HIGHER = ("secondary_tolerance", "slice_tolerance", "golden_tolerance", "min_slice_queries")
# ... and where a lower one does (fewer resamples: a coarser p-value).
_LOOSER_WHEN_LOWER = ("min_delta", "min_relative_delta", "resamples")


def weaker_than(run: ModelPolicy, model: ModelPolicy) -> list[str]:
    """Every field in which the run's policy would let through a candidate the model's would not,
    each as `field: the run's value (the model's: value)`; empty when the run is at least as strict."""
    ours, theirs = run.promotion, model.promotion
    found = []

    def weaker(field: str, value, required) -> None:
        found.append(f"{field}: {value!r} (the model's: {required!r})")

    for field in _LOOSER_WHEN_HIGHER:
        if getattr(ours, field) > getattr(theirs, field):
            weaker(f"promotion.{field}", getattr(ours, field), getattr(theirs, field))
    for field in _LOOSER_WHEN_LOWER:
        if getattr(ours, field) < getattr(theirs, field):
            weaker(f"promotion.{field}", getattr(ours, field), getattr(theirs, field))
    level, required_level = ours.significance_level, theirs.significance_level
    if required_level is not None and (level is None or level > required_level):
        weaker("promotion.significance_level", level, required_level)
    dropped = sorted(set(theirs.require_golden_improvement) - set(ours.require_golden_improvement))
    if dropped:
        weaker(
            "promotion.require_golden_improvement", ours.require_golden_improvement, theirs.require_golden_improvement
        )
    if run.max_variant_drop > model.max_variant_drop:
        weaker("serving.max_relative_drop", run.max_variant_drop, model.max_variant_drop)
    for field in ("evaluator", "primary_metric", "at_k"):
        if getattr(run, field) != getattr(model, field):
            weaker(f"evaluation.{field}", getattr(run, field), getattr(model, field))
    for name, fingerprint in sorted(model.golden.items()):
        if name not in run.golden:
            found.append(f"evaluation.golden: no golden set {name!r} (the model's golden sets: {sorted(model.golden)})")
        elif run.golden[name] != fingerprint:
            found.append(
                f"evaluation.golden {name!r}: another file (content {run.golden[name]}; the model's: {fingerprint})"
            )
    return found


class Check(BaseModel):
    name: str  # "improvement", "min_delta", "significance", "metric <name>", "slice <label>"
    passed: bool
    detail: str


class Comparison(BaseModel):
    candidate: float
    reference: float
    delta: float
    queries: int | None = None  # slices and golden sets


class Decision(BaseModel):
    promote: bool
    reason: str
    metric: str
    candidate: float
    reference: float
    reference_name: str  # "champion" or "base model"
    reference_version: str | None = None
    delta: float
    p_value: float | None = None  # one-sided paired permutation test, candidate > reference
    interval: tuple[float, float] | None = None  # paired bootstrap interval of the delta
    checks: list[Check] = []
    served_version: str | None = None  # set by the registry: the served version the champion alias moved to
    metrics: dict[str, Comparison] = {}
    slices: dict[str, Comparison] = {}
    golden: dict[str, Comparison] = {}


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis (vectorised over resamples)."""
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    return (a * b).sum(axis=-1) / np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))


def _correlation_difference(metric: str, x: np.ndarray, y: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Correlation with the gold scores of cosines x minus that of cosines y (vectorised)."""
    from scipy.stats import rankdata

    if metric.startswith("spearman"):
        x, y, gold = (rankdata(values, axis=-1) for values in (x, y, gold))
    return _pearson(gold, x) - _pearson(gold, y)


def paired_test(
    candidate: QueryScores, reference: QueryScores, metric: str, policy: PromotionPolicy
) -> tuple[float, tuple[float, float]]:
    """(one-sided p-value that the candidate is better, bootstrap interval of the difference).

    The permutation test swaps candidate and reference scores within each query (exact when
    there are few queries); the interval resamples queries with replacement. For similarity the
    queries are pairs and the statistic is the difference of correlations with the gold scores.
    """
    from scipy.stats import bootstrap, permutation_test

    x, y = candidate.values(metric), reference.values(metric)
    if np.array_equal(x, y):
        return 1.0, (0.0, 0.0)
    if candidate.evaluator == "embedding_similarity":
        gold = np.asarray(candidate.gold)

        def permuted(a, b, axis=-1):  # permutations keep the pairs' order: gold stays aligned
            return _correlation_difference(metric, a, b, gold)

        def resampled(a, b, g, axis=-1):  # resamples take the gold scores along with their pairs
            return _correlation_difference(metric, a, b, g)

        samples = (x, y, gold)
    else:

        def permuted(a, b, axis=-1):
            return np.mean(a, axis=axis) - np.mean(b, axis=axis)

        resampled, samples = permuted, (x, y)
    rng = np.random.default_rng(policy.seed)
    p_value = permutation_test(
        (x, y),
        permuted,
        permutation_type="samples",
        alternative="greater",
        n_resamples=policy.resamples,
        vectorized=True,
        rng=rng,
    ).pvalue
    interval = bootstrap(
        samples,
        resampled,
        paired=True,
        vectorized=True,
        n_resamples=policy.resamples,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=rng,
    ).confidence_interval
    return float(p_value), (float(interval.low), float(interval.high))


def _slices(candidate: QueryScores, reference: QueryScores, metric: str) -> dict[str, Comparison]:
    labels = np.asarray(candidate.slices)
    comparisons = {}
    for label in sorted(set(candidate.slices) - {""}):
        rows = np.flatnonzero(labels == label)
        score, bar = candidate.metric(metric, rows), reference.metric(metric, rows)
        comparisons[label] = Comparison(candidate=score, reference=bar, delta=score - bar, queries=len(rows))
    return comparisons


def _golden_check(
    name: str, candidate: QueryScores, reference: QueryScores, reference_name: str, metric: str, policy: PromotionPolicy
) -> tuple[Check, Comparison]:
    """One golden set: no drop beyond the tolerance, no significant drop, a rise where required."""
    _same_queries(candidate, reference, reference_name, f"versions of golden set {name!r}")
    score, bar = candidate.metric(metric), reference.metric(metric)
    comparison = Comparison(candidate=score, reference=bar, delta=score - bar, queries=len(candidate.ids))
    required = name in policy.require_golden_improvement
    passed = comparison.delta > 0 if required else comparison.delta >= -policy.golden_tolerance
    detail = (
        f"golden set {name!r} ({comparison.queries} queries): {metric} {score:.4f} vs the {reference_name}'s "
        f"{bar:.4f} ({comparison.delta:+.4f}; "
        + ("must improve" if required else f"tolerance {policy.golden_tolerance}")
    )
    level = policy.significance_level
    if level is not None and 0.5**comparison.queries < level and comparison.delta < 0:
        p_worse, _ = paired_test(reference, candidate, metric, policy)  # one-sided: the reference is better
        passed = passed and p_worse >= level
        detail += f"; paired test that it is worse: p = {p_worse:.4f}, level {level}"
    return Check(name=f"golden {name}", passed=passed, detail=detail + ")"), comparison


def _same_queries(candidate: QueryScores, reference: QueryScores, reference_name: str, sets: str) -> None:
    if candidate.ids != reference.ids:
        raise ValueError(
            f"The candidate and the {reference_name} were scored on different {sets} ({len(candidate.ids)} and "
            f"{len(reference.ids)} queries); score both on the same frozen set."
        )


def policy_check(weaker_policy: list[str]) -> Check:
    """The failed check of a run whose policy is weaker than its model's (`weaker_than`)."""
    return Check(
        name="policy",
        passed=False,
        detail="this run's policy is weaker than the one the model is judged by, so it may register but not "
        f"promote: {'; '.join(weaker_policy)}. Run with the model's policy (`skillops policy` shows it; a "
        "maintainer changes it with `skillops policy --set` or `--from-recipe`)",
    )


def refuse_unjudgeable(
    weaker_policy: list[str], metric: str, reference_name: str, reference_version: str | None
) -> Decision:
    """The decision on a candidate scored by another evaluator than its model's: nothing to compare
    (its scores are not the model's metric), refused for the policy alone."""
    check = policy_check(weaker_policy)
    nan = float("nan")
    return Decision(
        promote=False,
        reason=check.detail,
        metric=metric,
        candidate=nan,
        reference=nan,
        reference_name=reference_name,
        reference_version=reference_version,
        delta=nan,
        checks=[check],
    )


def decide(
    candidate: QueryScores,
    reference: QueryScores,
    reference_name: str,
    metric: str,
    headline: list[str],
    policy: PromotionPolicy,
    reference_version: str | None = None,
    golden: dict[str, tuple[QueryScores, QueryScores]] | None = None,
    weaker_policy: list[str] | None = None,
) -> Decision:
    """Promote only if every check of the policy passes (see the module docstring). `golden`:
    golden set name -> (candidate's, reference's) per-query scores on it. `weaker_policy`: the
    fields in which the run's policy is weaker than the model's (`weaker_than`); any fails the run."""
    _same_queries(candidate, reference, reference_name, "test sets")
    metrics = {}
    for name in dict.fromkeys([metric, *headline]):
        score, bar = candidate.metric(name), reference.metric(name)
        metrics[name] = Comparison(candidate=score, reference=bar, delta=score - bar)
    score, bar, delta = metrics[metric].candidate, metrics[metric].reference, metrics[metric].delta
    p_value, interval = paired_test(candidate, reference, metric, policy)
    versus = f"the {reference_name}'s {bar:.4f}"

    verdict = "beats" if delta > 0 else "is equal to" if delta == 0 else "is worse than"
    checks = [policy_check(weaker_policy)] if weaker_policy else []
    checks.append(
        Check(
            name="improvement",
            passed=delta > 0,
            detail=f"{metric} {score:.4f} {verdict} {versus}" + (f" by {delta:.4f}" if delta > 0 else ""),
        )
    )
    needed = max(policy.min_delta, policy.min_relative_delta * abs(bar))
    if needed > 0:
        checks.append(
            Check(
                name="min_delta",
                passed=delta >= needed,
                detail=f"{metric} {score:.4f} vs {versus}: {delta:+.4f}, "
                f"{'at least' if delta >= needed else 'less than'} the +{needed:.4f} required "
                f"(min_delta {policy.min_delta}, min_relative_delta {policy.min_relative_delta})",
            )
        )
    significant = policy.significance_level is None or p_value < policy.significance_level
    level = "not required" if policy.significance_level is None else f"level {policy.significance_level}"
    queries = len(candidate.ids)
    # With n queries a sign-flip test cannot go below 1/2^n: say so rather than refuse silently.
    hopeless = policy.significance_level is not None and 0.5**queries >= policy.significance_level
    checks.append(
        Check(
            name="significance",
            passed=significant,
            detail=f"paired permutation test over {queries} queries: p = {p_value:.4f} ({level}); "
            f"{CONFIDENCE:.0%} interval of the difference [{interval[0]:.4f}, {interval[1]:.4f}]"
            + (
                f"; {queries} queries can never reach p < {policy.significance_level}: enlarge data.split.test"
                if hopeless
                else ""
            ),
        )
    )
    for name, comparison in metrics.items():
        if name != metric:
            checks.append(
                Check(
                    name=f"metric {name}",
                    passed=comparison.delta >= -policy.secondary_tolerance,
                    detail=f"{name} {comparison.candidate:.4f} vs {comparison.reference:.4f} ({comparison.delta:+.4f}; "
                    f"tolerance {policy.secondary_tolerance})",
                )
            )
    slices = _slices(candidate, reference, metric)
    for label, comparison in slices.items():
        held = comparison.queries >= policy.min_slice_queries
        checks.append(
            Check(
                name=f"slice {label}",
                passed=not held or comparison.delta >= -policy.slice_tolerance,
                detail=f"slice {label!r} ({comparison.queries} queries): {metric} {comparison.candidate:.4f} vs "
                f"{comparison.reference:.4f} ({comparison.delta:+.4f}; "
                + (
                    f"tolerance {policy.slice_tolerance})"
                    if held
                    else f"fewer than {policy.min_slice_queries} queries, not held to the tolerance)"
                ),
            )
        )
    golden_comparisons = {}
    for name, (on_set, reference_on_set) in (golden or {}).items():
        check, golden_comparisons[name] = _golden_check(name, on_set, reference_on_set, reference_name, metric, policy)
        checks.append(check)
    failed = [check for check in checks if not check.passed]
    if failed:
        reason = (
            failed[0].detail
            if failed[0].name != "significance"
            else (f"{metric} {score:.4f} beats {versus} by {delta:.4f}, but not significantly: {failed[0].detail}")
        )
    else:
        reason = f"{metric} {score:.4f} beats {versus} by {delta:.4f} (p = {p_value:.4f}; {level})"
    return Decision(
        promote=not failed,
        reason=reason,
        metric=metric,
        candidate=score,
        reference=bar,
        reference_name=reference_name,
        reference_version=reference_version,
        delta=delta,
        p_value=p_value,
        interval=interval,
        checks=checks,
        metrics=metrics,
        slices=slices,
        golden=golden_comparisons,
    )


SERVING_ORDER = ("int8", "int8_blocks", "onnx")  # fastest first


def choose_variant(
    fp32: dict[str, float], built: dict[str, dict[str, float]], prefer: str, max_relative_drop: float, metric: str
) -> tuple[str, list[VariantCheck]]:
    """The variant to serve and the check of each built one. `fp32` and each of `built`: eval set
    -> primary metric. The preferred variant is served if, on every set, its primary metric is at
    most `max_relative_drop` below fp32's; else the next faster one that is; else fp32."""
    checks = []
    for variant, scores in built.items():
        drop = {s: (fp32[s] - value) / abs(fp32[s]) if fp32[s] else fp32[s] - value for s, value in scores.items()}
        worst = max(drop, key=drop.get)
        detail = (
            f"{variant}: {metric} on {worst} {scores[worst]:.4f} vs fp32's {fp32[worst]:.4f} "
            f"({-drop[worst]:+.2%}; tolerance -{max_relative_drop:.2%})"
        )
        checks.append(VariantCheck(variant=variant, served=False, primary=scores, drop=drop, detail=detail))
    within = {c.variant for c in checks if max(c.drop.values()) <= max_relative_drop}
    order = SERVING_ORDER[SERVING_ORDER.index(prefer) :] if prefer in SERVING_ORDER else ()
    served = next((variant for variant in order if variant in within), "fp32")
    for check in checks:
        check.served = check.variant == served
        if not check.served:
            why = "more than the tolerance below fp32" if check.variant not in within else f"{served} is served"
            check.detail += f": not served, {why}"
    return served, checks
