"""One function per pipeline stage, each taking and returning small, serialisable values.

The order of the stages lives in one place only, the Prefect flow (`flows/train_esco.py`); the
CLI calls single stages. Nothing here knows about Prefect.
"""

from __future__ import annotations

import logging
import os
import platform
from importlib import metadata
from pathlib import Path

from pydantic import BaseModel

from skillops import esco, registry, tracking
from skillops.config import Recipe
from skillops.evaluation import evaluate
from skillops.modeling import load_model
from skillops.promotion import Decision
from skillops.reports import comparison_chart, loss_curve_chart, summary
from skillops.training import train_pairs
from skillops.tuning import tune as run_search
from skillops.validation import ValidationReport, require, validate_esco, validate_pairs

logger = logging.getLogger(__name__)

TRACKED_LIBRARIES = ("sentence-transformers", "transformers", "torch", "mlflow", "prefect", "optuna")


class PreparedData(BaseModel):
    directory: Path
    data_fingerprint: str  # the raw input files and the task settings
    eval_fingerprint: str  # the frozen test samples the promotion gate scores on
    counts: dict[str, int]

    @property
    def paths(self) -> esco.PreparedPaths:
        return esco.PreparedPaths(self.directory)


class Scores(BaseModel):
    base: dict[str, float]
    candidate: dict[str, float]
    champion: dict[str, float] | None
    champion_version: str | None

    def table(self) -> dict[str, dict[str, float]]:
        rows = {"base": self.base, "candidate": self.candidate}
        if self.champion is not None:
            rows[f"champion (v{self.champion_version})"] = self.champion
        return rows


def start(recipe: Recipe, run_name: str | None = None) -> str:
    """Open the pipeline's MLflow run with everything needed to reproduce or compare it."""
    versions = {f"version.{lib}": metadata.version(lib) for lib in TRACKED_LIBRARIES}
    params = {
        "recipe": recipe.name,
        "base_model": recipe.base_model,
        **{f"training.{k}": v for k, v in recipe.training.model_dump().items()},
        **{f"evaluation.{k}": v for k, v in recipe.evaluation.model_dump().items()},
        "promotion.min_delta": recipe.promotion.min_delta,
        "search.n_trials": recipe.search.n_trials,
    }
    tags = {"skillops.git_commit": tracking.git_commit(), "skillops.python": platform.python_version(), **versions}
    run_id = tracking.start_run(recipe.name, run_name or recipe.name, params, tags)
    recipe_file = output_dir(run_id) / "recipe.json"
    recipe_file.parent.mkdir(parents=True, exist_ok=True)
    recipe_file.write_text(recipe.model_dump_json(indent=1), "utf-8")
    tracking.log_artifact(run_id, recipe_file)
    return run_id


def output_dir(run_id: str) -> Path:
    """The run's work folder (prepared data, checkpoints, charts): outputs/<run id>, git-ignored."""
    return (Path(os.environ.get("SKILLOPS_OUTPUTS_DIR", "outputs")) / run_id).resolve()


def validate_inputs(recipe: Recipe, run_id: str | None = None) -> ValidationReport:
    """Check the raw ESCO files against their suites; raises before anything is trained."""
    report = validate_esco(recipe.data.path, recipe.data.language)
    if run_id:
        path = output_dir(run_id) / "validation.md"
        path.write_text(report.markdown(), "utf-8")
        tracking.log_artifact(run_id, path, "validation")
    return require(report)


def prepare(recipe: Recipe, run_id: str) -> PreparedData:
    files = list(esco.esco_files(recipe.data.path, recipe.data.language).values())
    fingerprint = esco.fingerprint_files(files, extra=recipe.data.model_dump_json())
    task = esco.build_task(esco.load_esco(recipe.data.path, recipe.data.language), recipe.data)
    directory = output_dir(run_id) / "data"
    paths = esco.write_task(task, directory, {"data_fingerprint": fingerprint})
    require(validate_pairs(task.train_pairs, str(paths.train_pairs)))
    prepared = PreparedData(
        directory=directory,
        data_fingerprint=fingerprint,
        eval_fingerprint=esco.fingerprint_files([paths.samples("test")]),
        counts=task.counts,
    )
    tracking.log_params(run_id, {"data_fingerprint": prepared.data_fingerprint, "eval_fingerprint": prepared.eval_fingerprint})
    tracking.log_metrics(run_id, {f"data_{k}": v for k, v in prepared.counts.items()})
    tracking.log_artifact(run_id, paths.manifest, "data")
    return prepared


def tune(recipe: Recipe, data: PreparedData, run_id: str) -> dict:
    best = run_search(recipe, data.paths, recipe.name, run_id, output_dir(run_id) / "tuning")
    tracking.log_params(run_id, {f"best.{k}": v for k, v in best.items()})
    return best


def train(recipe: Recipe, data: PreparedData, params: dict, run_id: str) -> Path:
    """Final training with the best parameters; returns the saved model folder."""
    config = recipe.training.model_copy(update=params)
    result = train_pairs(recipe.base_model, data.paths.train_pairs, config, output_dir(run_id) / "train")
    tracking.log_loss_history(run_id, result.log_history)
    chart = loss_curve_chart(result.log_history, output_dir(run_id) / "train" / "loss_curve.png")
    tracking.log_artifact(run_id, chart, "charts")
    return result.model_dir


def score(recipe: Recipe, data: PreparedData, candidate_dir: Path, run_id: str) -> Scores:
    """Base, candidate and current champion, all on the same frozen test samples, in this run."""
    test_samples = data.paths.samples("test")
    base = evaluate(load_model(recipe.base_model, recipe.training.max_seq_length), test_samples, recipe.evaluation)
    candidate = evaluate(load_model(str(candidate_dir)), test_samples, recipe.evaluation)
    champion_version = registry.champion_version(recipe.registered_model_name)
    champion = None
    if champion_version is not None:
        model = registry.load(registry.model_uri(recipe.registered_model_name, champion_version))
        champion = evaluate(model, test_samples, recipe.evaluation)
    scores = Scores(base=base, candidate=candidate, champion=champion, champion_version=champion_version)
    for name, values in (("base", base), ("test", candidate), ("champion", champion)):
        if values is not None:
            tracking.log_metrics(run_id, values, prefix=f"{name}_")
    return scores


def register(recipe: Recipe, data: PreparedData, candidate_dir: Path, scores: Scores, run_id: str) -> str:
    tags = {
        "skillops.recipe": recipe.name,
        "skillops.run_id": run_id,
        "skillops.data_fingerprint": data.data_fingerprint,
        "skillops.eval_fingerprint": data.eval_fingerprint,
        "skillops.git_commit": tracking.git_commit(),
        **{f"test_{k}": f"{v:.6f}" for k, v in scores.candidate.items()},
    }
    return registry.register(candidate_dir, run_id, recipe.registered_model_name, tags, recipe.description)


def promote(recipe: Recipe, version: str, scores: Scores, run_id: str) -> Decision:
    decision = registry.promote_if_better(
        recipe.registered_model_name,
        version,
        recipe.evaluation.primary_metric,
        scores.candidate,
        scores.base,
        scores.champion,
        scores.champion_version,
        recipe.promotion,
    )
    tracking.set_tags(run_id, {"skillops.decision": "promoted" if decision.promote else "not promoted",
                               "skillops.decision_reason": decision.reason, "skillops.model_version": version})
    return decision


def report(recipe: Recipe, version: str, scores: Scores, decision: Decision, run_id: str) -> str:
    """The run's summary (markdown) and comparison chart, logged to MLflow; returns the summary."""
    text = summary(
        recipe.registered_model_name, version, scores.table(), decision,
        registry.champion_version(recipe.registered_model_name), tracking.ui_command(),
    )
    directory = output_dir(run_id)
    (directory / "summary.md").write_text(text, "utf-8")
    (directory / "decision.json").write_text(decision.model_dump_json(indent=1), "utf-8")
    comparison_chart(scores.table(), directory / "comparison.png")
    for name in ("summary.md", "decision.json", "comparison.png"):
        tracking.log_artifact(run_id, directory / name, "report")
    return text
