"""What several stages share: the run's links and reports, the sets the gate judges on and how a
model is scored on them, the candidate loaded once, the weights training starts from, and the
team's promotion authority when there is one."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from skillops import gate
from skillops.config import Recipe
from skillops.context import RunContext
from skillops.inputs import esco, preparation
from skillops.inputs.preparation import PreparedData
from skillops.inputs.validation import DataDocs, ValidationReport
from skillops.judging import score_cache
from skillops.judging.evaluation import QueryScores, score_sets
from skillops.tracking import registry, runs
from skillops.training.modeling import load_model

logger = logging.getLogger(__name__)


ESCO_VERSION_TAG = "skillops.esco_version"


def data_release(recipe: Recipe) -> dict[str, str]:
    """Which taxonomy release the model learns (ESCO data only), as a tag of the run and version."""
    return {ESCO_VERSION_TAG: esco.release(recipe.data)} if recipe.data.format == "esco" else {}


def run_link(run: RunContext, artifact: str | None = None) -> str:
    """The run's page in the MLflow UI, or one of its artifacts there."""
    return runs.run_url(run.run_id, artifact)


def data_docs_path(name: str) -> str:
    """Where a validation pass's Great Expectations Data Docs are in the run's artifacts."""
    return f"validation/data_docs/{name}"


def log_report(report: ValidationReport, run: RunContext, name: str, docs: DataDocs) -> None:
    """The plain report (markdown for terminals, HTML) and GX's own Data Docs site, to the run."""
    directory = run.output_dir / "validation"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.md").write_text(report.markdown(), "utf-8")
    (directory / f"{name}.html").write_text(report.html(), "utf-8")
    for suffix in ("md", "html"):
        runs.log_artifact(run.run_id, directory / f"{name}.{suffix}", "validation")
    runs.log_artifacts(run.run_id, docs.build(), data_docs_path(name))


def starting_model(run: RunContext) -> tuple[str, str | None]:
    """The weights tuning and training start from, and the registered model they are when they
    are one: the base model, or with `training.init_from: champion` the current champion, fetched
    once per attempt into its folder (a resumed attempt keeps the champion it started from)."""
    recipe = run.recipe
    champion = registry.champion_version(recipe.registered_model_name)
    if recipe.training.init_from == "base" or champion is None:
        return recipe.base_model, None
    fetched = run.attempt_dir / "init-from-champion"
    if not (fetched / "version.txt").is_file():  # written last: a fetch cut short is fetched again
        registry.fetch(registry.model_uri(recipe.registered_model_name, champion), fetched)
        (fetched / "version.txt").write_text(champion, "utf-8")
    version = (fetched / "version.txt").read_text("utf-8")
    runs.set_tags(run.run_id, {"skillops.init_from": f"champion version {version}"})
    logger.info("Training starts from the champion, version %s of %s", version, recipe.registered_model_name)
    return str(fetched), registry.model_uri(recipe.registered_model_name, version)


def gate_sets(recipe: Recipe) -> list[str]:
    """The eval sets the gate judges on: the test split, then each golden set."""
    return ["test", *(preparation.golden_part(golden.name) for golden in recipe.evaluation.golden)]


def score_on_sets(run: RunContext, data: PreparedData, model, eval_sets: list[str]) -> dict[str, QueryScores]:
    """One model on the run's gate sets, each text encoded once across them (they share their
    documents: for the ESCO recipe, the whole vocabulary)."""
    recipe = run.recipe
    paths = {eval_set: data.paths.eval_set(eval_set) for eval_set in eval_sets}
    return score_sets(model, paths, recipe.evaluation, recipe.prompts)


def version_scores(run: RunContext, data: PreparedData, version: str) -> tuple[dict[str, QueryScores], str]:
    """A registered version's per-query scores on this run's gate sets (cached per snapshot)."""
    return score_cache.version_scores(
        run.recipe.registered_model_name,
        version,
        data.eval_fingerprint,
        gate_sets(run.recipe),
        lambda model, eval_sets: score_on_sets(run, data, model, eval_sets),
    )


@functools.lru_cache(maxsize=1)
def candidate_model(model_dir: Path):
    """The trained model, loaded once for scoring it and exporting its variants; dropped once
    registered."""
    return load_model(str(model_dir))


def remote_gate():
    """The team's promotion authority when this process works with one (None: a store of its own)."""
    url = gate.remote_url()
    if url is None:
        return None
    from skillops.gate.client import RemoteGate

    return RemoteGate(url)
