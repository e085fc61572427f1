"""The train-esco flow: validate -> prepare -> tune -> train -> evaluate -> register -> promote.

This file is the one place that knows the order of the stages. Each task is one call into
`skillops.stages` and passes only paths, run ids, versions and small pydantic models.

    python flows/train_esco.py [recipe-name-or-path]
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import Any

from prefect import flow
from prefect import task as prefect_task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from skillops import stages, tracking
from skillops.config import Recipe, load_recipe
from skillops.promotion import Decision
from skillops.validation import ValidationReport, require

# Never cache a stage: a retrain must re-read data and re-score the champion every time.
task = partial(prefect_task, cache_policy=NO_CACHE)
# Registry and artifact writes are I/O that may hit a busy store; training is not retried blindly.
io_task = partial(task, retries=2, retry_delay_seconds=[5, 30])


@task(name="open-mlflow-run")
def open_run(recipe: Recipe) -> str:
    return stages.start(recipe)


@task(name="validate-data")
def validate_data(recipe: Recipe, run_id: str) -> ValidationReport:
    report = stages.check_inputs(recipe, run_id)
    create_markdown_artifact(report.markdown(), key="data-validation", description="Data validation summary")
    return require(report)


# log_prints off: `datasets` disassembles functions with dis (printing to a buffer) when it
# fingerprints them, and Prefect's print capture would log every line of that bytecode.
@task(name="prepare-data", log_prints=False)
def prepare_data(recipe: Recipe, run_id: str) -> stages.PreparedData:
    return stages.prepare(recipe, run_id)


@task(name="tune")
def tune(recipe: Recipe, data: stages.PreparedData, run_id: str) -> dict[str, Any]:
    return stages.tune(recipe, data, run_id)


@task(name="train")
def train(recipe: Recipe, data: stages.PreparedData, params: dict[str, Any], run_id: str) -> Path:
    return stages.train(recipe, data, params, run_id)


@task(name="evaluate")
def evaluate(recipe: Recipe, data: stages.PreparedData, model_dir: Path, run_id: str) -> stages.Scores:
    return stages.score(recipe, data, model_dir, run_id)


@io_task(name="register")
def register(recipe: Recipe, data: stages.PreparedData, model_dir: Path, scores: stages.Scores, run_id: str) -> str:
    return stages.register(recipe, data, model_dir, scores, run_id)


@io_task(name="promote")
def promote(recipe: Recipe, version: str, scores: stages.Scores, run_id: str) -> Decision:
    return stages.promote(recipe, version, scores, run_id)


@io_task(name="report")
def report(recipe: Recipe, version: str, scores: stages.Scores, decision: Decision, run_id: str) -> str:
    return stages.report(recipe, version, scores, decision, run_id)


@flow(name="train-esco", log_prints=True)
def train_esco(recipe: str = "esco-occupation-skills", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Retrain the recipe's model and promote it only if it beats the champion on held-out data.

    `recipe` is a built-in recipe name or a path to a recipe YAML file; `overrides` replaces
    dotted fields, e.g. {"training.epochs": 2}. Both are validated before any compute.
    """
    config = load_recipe(recipe).with_overrides(overrides or {})
    run_id = open_run(config)
    try:
        validate_data(config, run_id)
        data = prepare_data(config, run_id)
        best_params = tune(config, data, run_id)
        model_dir = train(config, data, best_params, run_id)
        scores = evaluate(config, data, model_dir, run_id)
        version = register(config, data, model_dir, scores, run_id)
        decision = promote(config, version, scores, run_id)
        summary = report(config, version, scores, decision, run_id)
    except BaseException as error:
        # MLflow would leave this run FINISHED (or RUNNING); say what failed instead.
        tracking.end_run(run_id, failure=f"{type(error).__name__}: {error}")
        raise
    tracking.end_run(run_id)
    create_markdown_artifact(summary, key="train-esco-decision", description="Promotion decision")
    print(summary)
    return {"run_id": run_id, "version": version, "promoted": decision.promote, "reason": decision.reason}


if __name__ == "__main__":
    train_esco(*sys.argv[1:2])
