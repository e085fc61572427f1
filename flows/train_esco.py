"""The train-esco flow: validate -> prepare -> tune -> train -> evaluate -> register -> promote.

This file is the one place that knows the order of the stages. Each task is one call into
`skillops.stages` and passes only paths, run ids, versions and small pydantic models.

    python flows/train_esco.py [recipe-name-or-path] [--force]
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Any

from prefect import flow
from prefect import task as prefect_task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from skillops import stages, tracking
from skillops.config import Recipe, load_recipe
from skillops.promotion import Decision
from skillops.validation import ValidationReport, require

# Never cache a stage: a retrain must re-read data and re-score the champion every time.
task = partial(prefect_task, cache_policy=NO_CACHE)
# Registry and artifact writes are I/O that may hit a busy store; training is not retried blindly.
io_task = partial(task, retries=2, retry_delay_seconds=[5, 30])
# How long a run waits for another run's promotion (a champion re-score on a big test set) to end.
PROMOTION_WAIT_SECONDS = 1800


@task(name="reconcile-stale-runs")
def reconcile(recipe: Recipe) -> list[str]:
    return stages.reconcile(recipe)


@task(name="fingerprint")
def fingerprint(recipe: Recipe) -> stages.Fingerprints:
    return stages.fingerprint(recipe)


@task(name="check-unchanged")
def unchanged_since(recipe: Recipe, fingerprints: stages.Fingerprints) -> str | None:
    return stages.unchanged_since(recipe, fingerprints)


@io_task(name="record-skip")
def record_skip(recipe: Recipe, fingerprints: stages.Fingerprints, previous_run_id: str) -> str:
    return stages.record_skip(recipe, fingerprints, previous_run_id)


@task(name="open-mlflow-run")
def open_run(recipe: Recipe, fingerprints: stages.Fingerprints) -> str:
    return stages.start(recipe, fingerprints)


@task(name="validate-data")
def validate_data(recipe: Recipe, run_id: str) -> ValidationReport:
    report = stages.check_inputs(recipe, run_id)
    create_markdown_artifact(report.markdown(), key="data-validation", description="Data validation summary")
    return require(report)


# log_prints off: `datasets` disassembles functions with dis (printing to a buffer) when it
# fingerprints them, and Prefect's print capture would log every line of that bytecode.
@task(name="prepare-data", log_prints=False)
def prepare_data(recipe: Recipe, fingerprints: stages.Fingerprints, run_id: str) -> stages.PreparedData:
    return stages.prepare(recipe, fingerprints, run_id)


@task(name="tune")
def tune(recipe: Recipe, data: stages.PreparedData, fingerprints: stages.Fingerprints, run_id: str) -> dict[str, Any]:
    return stages.tune(recipe, data, fingerprints, run_id)


@task(name="train")
def train(
    recipe: Recipe, data: stages.PreparedData, params: dict[str, Any], fingerprints: stages.Fingerprints, run_id: str
) -> Path:
    return stages.train(recipe, data, params, fingerprints, run_id)


@task(name="evaluate")
def evaluate(recipe: Recipe, data: stages.PreparedData, model_dir: Path, run_id: str) -> stages.Scores:
    return stages.score(recipe, data, model_dir, run_id)


@io_task(name="register")
def register(recipe: Recipe, data: stages.PreparedData, model_dir: Path, scores: stages.Scores, run_id: str) -> str:
    return stages.register(recipe, data, model_dir, scores, run_id)


def promotion_slot(model_name: str):
    """A strict Prefect global concurrency limit of 1 per registered model, created on first use:
    runs on any worker that share this Prefect server promote one at a time. (The library adds a
    file lock for promoters on one machine, and re-reads the champion before moving the alias.)"""
    name = f"skillops-promote-{model_name}"
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            # Read first: a create that meets an existing limit is answered 409, but the server
            # logs a database traceback for it, on every run after the first.
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:
                pass  # a run starting at the same moment made it
    return concurrency(name, occupy=1, strict=True, timeout_seconds=PROMOTION_WAIT_SECONDS)


@io_task(name="promote")
def promote(recipe: Recipe, data: stages.PreparedData, version: str, scores: stages.Scores, run_id: str) -> Decision:
    with promotion_slot(recipe.registered_model_name):
        return stages.promote(recipe, data, version, scores, run_id)


@io_task(name="report")
def report(
    recipe: Recipe, data: stages.PreparedData, version: str, scores: stages.Scores, decision: Decision, run_id: str
) -> str:
    return stages.report(recipe, data, version, scores, decision, run_id)


@flow(name="train-esco", log_prints=True)
def train_esco(
    recipe: str = "esco-occupation-skills", overrides: dict[str, Any] | None = None, force: bool = False
) -> dict[str, Any]:
    """Retrain the recipe's model and promote it only if it beats the champion on held-out data.

    `recipe` is a built-in recipe name or a path to a recipe file; `overrides` replaces dotted
    fields, e.g. {"training.epochs": 2}. Both are validated before any compute. When the data,
    recipe and code equal those of the last completed run, the run records a skip and ends,
    unless `force`. A run killed mid-training resumes from its last checkpoint when run again.
    """
    config = load_recipe(recipe).with_overrides(overrides or {})
    reconcile(config)
    fingerprints = fingerprint(config)
    previous = None if force else unchanged_since(config, fingerprints)
    if previous:
        run_id = record_skip(config, fingerprints, previous)
        text = f"## {config.name}: skipped\n\nData, recipe and code equal those of MLflow run `{previous}`: nothing to retrain. Run with `force=True` to retrain anyway.\n"
        create_markdown_artifact(text, key="train-esco-decision", description="Promotion decision")
        print(text)
        return {"run_id": run_id, "skipped": True, "same_as_run": previous}
    run_id = open_run(config, fingerprints)
    create_link_artifact(tracking.run_url(run_id), link_text=f"MLflow run {run_id}", key="mlflow-run")
    try:
        validate_data(config, run_id)
        data = prepare_data(config, fingerprints, run_id)
        best_params = tune(config, data, fingerprints, run_id)
        model_dir = train(config, data, best_params, fingerprints, run_id)
        scores = evaluate(config, data, model_dir, run_id)
        version = register(config, data, model_dir, scores, run_id)
        decision = promote(config, data, version, scores, run_id)
        summary = report(config, data, version, scores, decision, run_id)
    except BaseException as error:
        # MLflow would leave this run FINISHED (or RUNNING); say what failed instead.
        tracking.end_run(run_id, failure=f"{type(error).__name__}: {error}")
        raise
    tracking.end_run(run_id)
    stages.finish(fingerprints)
    create_markdown_artifact(summary, key="train-esco-decision", description="Promotion decision")
    print(summary)
    return {
        "run_id": run_id,
        "skipped": False,
        "version": version,
        "promoted": decision.promote,
        "reason": decision.reason,
    }


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description="Run the train-esco flow once, here.")
    cli.add_argument("recipe", nargs="?", default="esco-occupation-skills", help="built-in recipe name or recipe file")
    cli.add_argument("--force", action="store_true", help="retrain even if data, recipe and code are unchanged")
    arguments = cli.parse_args()
    train_esco(arguments.recipe, force=arguments.force)
