"""report: the evaluation report, per-query scores, charts and the model card of the run."""

from __future__ import annotations

from skillops.context import RunContext
from skillops.inputs.preparation import PreparedData
from skillops.judging import index_churn as churn_of
from skillops.judging.evaluation import Scores
from skillops.judging.promotion import Decision
from skillops.stages.shared import remote_gate
from skillops.tracking import registry, runs
from skillops.tracking.reports import card_summary, write_evaluation_report


def report(
    run: RunContext,
    data: PreparedData,
    version: str,
    scores: Scores,
    decision: Decision,
    churn: churn_of.Churn | None = None,
) -> str:
    """The evaluation report, per-query scores, comparison chart and model card, logged under
    `report/`; returns the report's markdown (with the index churn after a promotion)."""
    text, files = write_evaluation_report(
        run.output_dir,
        run.recipe,
        version,
        run.run_id,
        data,
        scores,
        decision,
        registry.champion_version(run.recipe.registered_model_name),
        runs.get_params(run.run_id),
        runs.ui_command(run.recipe.name),
        churn,
    )
    for path in files:
        runs.log_artifact(run.run_id, path, "report")
    table = scores.table(run.recipe.evaluation.reported_metrics())
    summary = card_summary(run.recipe, table, decision, run.run_id)
    # On a team's stack the served version is the promotion authority's, which describes it itself.
    served = decision.served_version if remote_gate() is None else None
    registry.describe(run.recipe.registered_model_name, version, summary, served)
    return text
