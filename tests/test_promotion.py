"""The promotion gate, table-driven: no champion / better / equal / worse / below min_delta."""

import pytest

from skillops.config import PromotionPolicy
from skillops.promotion import decide

BASE = {"map": 0.50}


@pytest.mark.parametrize(
    ("candidate", "champion", "min_delta", "promote", "reason_part"),
    [
        (0.60, None, 0.0, True, "beats the base model's 0.5000"),  # no champion, beats base
        (0.50, None, 0.0, False, "equal to the base model's"),  # no champion, ties base
        (0.40, None, 0.0, False, "worse than the base model's"),  # no champion, below base
        (0.70, 0.60, 0.0, True, "beats the champion's 0.6000"),  # better
        (0.60, 0.60, 0.0, False, "equal to the champion's"),  # equal
        (0.55, 0.60, 0.0, False, "worse than the champion's"),  # worse
        (0.605, 0.60, 0.01, False, "less than min_delta 0.01"),  # better, but below min_delta
        (0.62, 0.60, 0.01, True, "by 0.0200"),  # better by more than min_delta
        (0.505, None, 0.01, False, "less than min_delta"),  # min_delta applies against base too
    ],
)
def test_decision_table(candidate, champion, min_delta, promote, reason_part):
    decision = decide(
        {"map": candidate},
        None if champion is None else {"map": champion},
        BASE,
        "map",
        PromotionPolicy(min_delta=min_delta),
    )
    assert decision.promote is promote
    assert reason_part in decision.reason
    assert decision.reference_name == ("base model" if champion is None else "champion")
