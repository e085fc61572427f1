"""index-churn: after a promotion, the new champion's document embeddings and how far their
neighbourhoods moved from the previous champion's."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from skillops.context import RunContext
from skillops.inputs.preparation import PreparedData
from skillops.judging import index_churn as churn_of
from skillops.judging.evaluation import Scores
from skillops.judging.promotion import Decision
from skillops.serving import variants
from skillops.tracking import registry, runs

EMBEDDINGS = "embeddings.parquet"


def _logged_embeddings(name: str, version: str, folder: Path):
    """The documents' embeddings the run of a served version logged (None if it logged none)."""
    run_id = runs.client().get_model_version(name, version).run_id
    try:
        return pd.read_parquet(runs.download_artifacts(run_id, f"index/{EMBEDDINGS}", folder))
    except Exception:  # an older version, or one registered outside the flow: encoded instead
        return None


def index_churn(
    run: RunContext, data: PreparedData, candidate_dir: Path, scores: Scores, decision: Decision
) -> churn_of.Churn | None:
    """After a promotion: the new champion, as it is served, embeds the recipe's documents into
    `index/embeddings.parquet` of its run (id, text, vector, model version), and the neighbourhoods
    of those documents are compared with the previous champion's (its run's embeddings, else
    encoded now). None when nothing was promoted; no comparison for a first champion."""
    if not decision.promote:
        return None
    recipe = run.recipe
    documents = pd.read_parquet(data.paths.documents)

    def embeddings(model, version: str):
        return churn_of.embed(model, documents, version, recipe.prompts.document, recipe.evaluation.batch_size)

    current = embeddings(variants.load(candidate_dir, scores.served_variant), decision.served_version)
    runs.log_artifact(run.run_id, churn_of.write(current, run.output_dir / "index" / EMBEDDINGS), "index")
    previous_version = decision.reference_version
    if previous_version is None:
        return None
    name = recipe.registered_model_name
    previous = _logged_embeddings(name, previous_version, run.output_dir / "index" / "previous")
    if previous is None or not set(documents["id"]) <= set(previous["id"]):
        previous = embeddings(
            registry.load(registry.model_uri(name, previous_version), as_served=True), previous_version
        )
    churn = churn_of.churn(previous, current)
    runs.log_metrics(run.run_id, churn.metrics())
    return churn
