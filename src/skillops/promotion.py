"""The promotion gate as a pure function: same inputs, same decision, testable from a table."""

from __future__ import annotations

from pydantic import BaseModel

from skillops.config import PromotionPolicy


class Decision(BaseModel):
    promote: bool
    reason: str
    metric: str
    candidate: float
    reference: float  # the champion's score, or the base model's when there is no champion
    reference_name: str  # "champion" or "base model"


def decide(
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    base: dict[str, float],
    metric: str,
    policy: PromotionPolicy,
) -> Decision:
    """Promote only if the candidate beats the champion (or, with none yet, the base model).

    All scores must come from the same evaluation set; "beats" means strictly greater and by at
    least `policy.min_delta`.
    """
    reference_name, reference = ("champion", champion) if champion is not None else ("base model", base)
    score, bar = candidate[metric], reference[metric]
    delta = score - bar
    common = dict(metric=metric, candidate=score, reference=bar, reference_name=reference_name)
    if delta <= 0:
        verdict = "equal to" if delta == 0 else "worse than"
        return Decision(
            promote=False,
            reason=f"{metric} {score:.4f} is {verdict} the {reference_name}'s {bar:.4f}",
            **common,
        )
    if delta < policy.min_delta:
        return Decision(
            promote=False,
            reason=f"{metric} {score:.4f} beats the {reference_name}'s {bar:.4f} by {delta:.4f}, "
            f"less than min_delta {policy.min_delta}",
            **common,
        )
    return Decision(
        promote=True,
        reason=f"{metric} {score:.4f} beats the {reference_name}'s {bar:.4f} by {delta:.4f} "
        f"(min_delta {policy.min_delta})",
        **common,
    )
