"""promote: the gate judges the candidate against the champion of the moment."""

from __future__ import annotations

from skillops import gate
from skillops.config import load_recipe
from skillops.context import RunContext
from skillops.inputs import preparation
from skillops.inputs.preparation import PreparedData
from skillops.judging.evaluation import QueryScores, Scores
from skillops.judging.promotion import Decision, ModelPolicy
from skillops.stages.shared import remote_gate, version_scores
from skillops.tracking import registry, runs


class _RunEvidence:
    """What the local gate judges from: this run's per-query scores of the candidate (as served),
    the base model and the champion it scored, on its frozen sets; a champion that moved since is
    scored on the same sets (from the cache when its run saved them)."""

    def __init__(self, run: RunContext, data: PreparedData, scores: Scores) -> None:
        self.run, self.data, self.scores = run, data, scores

    def candidate(self) -> dict[str, QueryScores]:
        golden = {preparation.golden_part(n): v.candidate for n, v in self.scores.golden.items()}
        return {"test": self.scores.candidate, **golden}

    def reference(self, champion: str | None) -> tuple[dict[str, QueryScores], str | None]:
        scores = self.scores
        if champion is None:
            return {"test": scores.base, **{preparation.golden_part(n): v.base for n, v in scores.golden.items()}}, None
        if champion == scores.champion_version:
            golden = {preparation.golden_part(n): v.champion for n, v in scores.golden.items()}
            return {"test": scores.champion, **golden}, None
        return version_scores(self.run, self.data, champion)


def promote(
    run: RunContext, data: PreparedData, version: str, scores: Scores, shared_lock: str | None = None
) -> Decision:
    """Ask the gate to judge the candidate against the champion of the moment: the team's
    promotion authority, which scores it itself, or on one machine the local authority, which
    judges from this run's scores under the registry's lock (`shared_lock`: one the caller holds
    for every machine; see `registry`). The model's first policy is the recipe's as written
    (before this run's overrides), so overrides can never set it."""
    recipe = run.recipe
    name = recipe.registered_model_name
    remote = remote_gate()
    if remote is not None:
        decision = remote.judge(name, version, ModelPolicy.of_recipe(recipe))
    else:
        registry.require_shared_lock(shared_lock)
        authority = gate.local(shared_lock)
        written = load_recipe(run.recipe_source) if run.recipe_source else recipe
        why = f"first policy of the model: recipe {run.recipe_source or recipe.name} as written"
        authority.first_policy(name, ModelPolicy.of_recipe(written), why)
        decision = authority.judge(name, version, _RunEvidence(run, data, scores), ModelPolicy.of_recipe(recipe))
    runs.set_tags(
        run.run_id,
        {
            "skillops.decision": "promoted" if decision.promote else "not promoted",
            "skillops.decision_reason": decision.reason,
            "skillops.model_version": version,
            "skillops.judged_against": decision.reference_version or "base model",
            **({"skillops.served_version": decision.served_version} if decision.served_version else {}),
        },
    )
    if decision.p_value is not None:
        runs.log_metrics(run.run_id, {"decision_p_value": decision.p_value, "decision_delta": decision.delta})
    return decision
