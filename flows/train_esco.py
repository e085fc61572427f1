"""The train-esco flow: validate -> prepare -> tune -> train -> evaluate -> register -> promote.

This file is the one place that knows the order of the stages. Each task is one call into
`skillops.stages` and passes only paths, run ids, versions and small pydantic models. The
tune-trials flow is a trial worker of a train-esco run's study (`search.workers: pool`): the run
starts it as deployment runs that any worker of the pool may take.

    python flows/train_esco.py [recipe-name-or-path] [--force] [--set training.epochs=1 ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID

# skillops' own log lines (stage progress, warnings) go to the flow run's log next to Prefect's;
# Prefect reads this when it sets up logging, so it is set before Prefect is imported.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "skillops")
# Without PREFECT_API_URL the run starts Prefect's temporary server, which on a fresh HOME first
# creates its database: 20 s (Prefect's default wait) was not enough on a busy machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow
from prefect import task as prefect_task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.runtime import flow_run as prefect_flow_run
from prefect.settings import get_current_settings
from prefect.states import Cancelled

from skillops import registry, stages, tracking
from skillops.config import Recipe, load_recipe, parse_overrides
from skillops.context import Fingerprints, RunContext
from skillops.errors import RecipeError
from skillops.evaluation import Scores
from skillops.paths import outputs_root
from skillops.preparation import PreparedData
from skillops.promotion import Decision
from skillops.reports import score_rows
from skillops.tuning import StudyTicket, join_study
from skillops.uris import safe_uri
from skillops.validation import ValidationReport, require

# At INFO: the stage progress lines (training at a quarter, half, ...) are what a log reader wants.
logging.getLogger("skillops").setLevel(logging.INFO)

# Never cache a stage: a retrain must re-read data and re-score the champion every time.
task = partial(prefect_task, cache_policy=NO_CACHE)
# Registry and artifact writes are I/O that may hit a busy store; training is not retried blindly.
io_task = partial(task, retries=2, retry_delay_seconds=[5, 30])
# How long a run waits for another run's promotion (a champion re-score on a big test set) to end.
PROMOTION_WAIT_SECONDS = 1800
# The deployment (in prefect.yaml and prefect.team.yaml) whose runs are trial workers of the pool.
TRIALS_DEPLOYMENT = "tune-trials/pool"


@task(name="reconcile", task_run_name="reconcile {recipe.name}")
def reconcile(recipe: Recipe) -> list[str]:
    return stages.reconcile(recipe, shared_prefect_api(), flow_run_states)


def shared_prefect_api() -> str | None:
    """The Prefect server this run reports to, when it is one that outlives the run (not the
    temporary server of a plain `python flows/train_esco.py`)."""
    api = get_current_settings().api.url
    return safe_uri(api) if api else None


def flow_run_states(flow_run_ids: list[str]) -> dict[str, str]:
    """Flow run id -> its state type (CRASHED, FAILED, RUNNING, ...) on this Prefect server."""
    states = {}
    with get_client(sync_client=True) as client:
        for flow_run_id in flow_run_ids:
            try:
                state = client.read_flow_run(UUID(flow_run_id)).state
            except ObjectNotFound:
                continue
            if state is not None:
                states[flow_run_id] = state.type.value
    return states


@task(name="fingerprint", task_run_name="fingerprint {recipe.name}")
def fingerprint(recipe: Recipe) -> Fingerprints:
    return stages.fingerprint(recipe)


@task(name="unchanged-since", task_run_name="unchanged-since {recipe.name}")
def unchanged_since(recipe: Recipe, fingerprints: Fingerprints) -> str | None:
    return stages.unchanged_since(recipe, fingerprints)


@io_task(name="record-skip", task_run_name="record-skip {recipe.name}")
def record_skip(recipe: Recipe, fingerprints: Fingerprints, previous_run_id: str) -> str:
    return stages.record_skip(recipe, fingerprints, previous_run_id)


@task(name="start", task_run_name="start {recipe.name}")
def start(recipe: Recipe, fingerprints: Fingerprints) -> RunContext:
    api = shared_prefect_api()
    orchestration = {tracking.FLOW_RUN_TAG: str(prefect_flow_run.id), tracking.PREFECT_API_TAG: api} if api else {}
    return stages.start(recipe, fingerprints, orchestration)


@task(name="validate-data", task_run_name="validate-data {run.recipe.name}")
def validate_data(run: RunContext) -> ValidationReport:
    report = stages.validate_data(run)
    docs = tracking.run_url(run.run_id, f"{stages.data_docs_path('inputs')}/index.html")
    text = f"{report.markdown()}\nGreat Expectations Data Docs of this pass: [{docs}]({docs})\n"
    create_markdown_artifact(text, key="data-validation", description="Data validation summary")
    return require(report)


# log_prints off: `datasets` disassembles functions with dis (printing to a buffer) when it
# fingerprints them, and Prefect's print capture would log every line of that bytecode.
@task(name="prepare-data", task_run_name="prepare-data {run.recipe.name}", log_prints=False)
def prepare_data(run: RunContext) -> PreparedData:
    return stages.prepare_data(run)


class PoolTrialWorkers:
    """Trial workers as runs of the tune-trials deployment: any worker of the pool may take one,
    on any machine. Their trials report to the study, so the run does not wait on the flow runs
    themselves; those no worker took by the time the study is done are cancelled."""

    def __init__(self, ticket: StudyTicket, count: int) -> None:
        parameters = {"ticket": ticket.model_dump(mode="json")}
        self.flow_run_ids = [
            run_deployment(
                TRIALS_DEPLOYMENT,
                parameters=parameters,
                timeout=0,  # started, not awaited: this run tunes alongside them
                flow_run_name=f"tune-trials {ticket.study_name} {number}/{count}",
            ).id
            for number in range(1, count + 1)
        ]

    def wait(self) -> None:
        """Nothing to wait for here: the search waits for the study's running trials by heartbeat."""

    def stop(self) -> None:
        untaken = 0
        with get_client(sync_client=True) as client:
            for flow_run_id in self.flow_run_ids:
                state = client.read_flow_run(flow_run_id).state
                if state is not None and state.is_scheduled():
                    client.set_flow_run_state(flow_run_id, Cancelled(message="the study has its trials"), force=True)
                    untaken += 1
        if untaken:
            print(f"{untaken} of {len(self.flow_run_ids)} tune-trials runs were not taken by any worker: cancelled")


def require_trial_pool(recipe: Recipe) -> None:
    """With `search.workers: pool`, a shared Prefect server and the tune-trials deployment, before any compute."""
    search = recipe.search
    if search.parallel == 1 or search.workers != "pool":
        return
    if shared_prefect_api() is None:
        raise RecipeError(
            "search.workers = pool, but this run has no Prefect server that workers share: set PREFECT_API_URL "
            "(`make stack-up` prints it) or use search.workers: local."
        )
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(client.read_deployment_by_name(TRIALS_DEPLOYMENT).work_pool_name)
        except ObjectNotFound:
            raise RecipeError(
                f"search.workers = pool, but the Prefect server has no deployment {TRIALS_DEPLOYMENT}: deploy "
                "prefect.yaml (or prefect.team.yaml) again, e.g. `make stack-up`."
            ) from None
    if pool.concurrency_limit is not None and pool.concurrency_limit < search.parallel:
        raise RecipeError(
            f"search.parallel = {search.parallel} with search.workers = pool, but the work pool {pool.name} runs at "
            f"most {pool.concurrency_limit} flow run(s) at a time, this run included: give search.parallel at most "
            f"{pool.concurrency_limit}, raise the pool's limit (`prefect work-pool set-concurrency-limit`), or use "
            "search.workers: local."
        )


@task(name="tune", task_run_name="tune {run.recipe.name}")
def tune(run: RunContext, data: PreparedData) -> dict[str, Any]:
    return stages.tune(run, data, place_workers=PoolTrialWorkers)


@task(name="train", task_run_name="train {run.recipe.name}")
def train(run: RunContext, data: PreparedData, params: dict[str, Any]) -> Path:
    return stages.train(run, data, params)


@task(name="evaluate-models", task_run_name="evaluate-models {run.recipe.name}")
def evaluate_models(run: RunContext, data: PreparedData, model_dir: Path) -> Scores:
    return stages.evaluate_models(run, data, model_dir)


@io_task(name="register", task_run_name="register {run.recipe.name}")
def register(run: RunContext, data: PreparedData, model_dir: Path, scores: Scores) -> str:
    return stages.register(run, data, model_dir, scores)


def promotion_slot_name(model_name: str) -> str | None:
    """The lock every machine takes before moving this model's champion: a global concurrency
    limit of the shared Prefect server (None without one: the temporary server is this run's own)."""
    api = shared_prefect_api()
    return f"global concurrency limit skillops-promote-{model_name} on {api}" if api else None


def promotion_slot(model_name: str):
    """A strict Prefect global concurrency limit of 1 per registered model, created on first use:
    runs on any worker that share this Prefect server promote one at a time. (The library re-reads
    the champion before moving the alias.)"""
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


@io_task(name="promote", task_run_name="promote {run.recipe.name} v{version}")
def promote(run: RunContext, data: PreparedData, version: str, scores: Scores) -> Decision:
    name = run.recipe.registered_model_name
    with promotion_slot(name):
        return stages.promote(run, data, version, scores, shared_lock=promotion_slot_name(name))


@io_task(name="report", task_run_name="report {run.recipe.name} v{version}")
def report(run: RunContext, data: PreparedData, version: str, scores: Scores, decision: Decision) -> str:
    return stages.report(run, data, version, scores, decision)


@flow(name="train-esco", flow_run_name="train-esco {recipe}", log_prints=True)
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
    # Before any compute: a run that could not promote safely says so now, not after training.
    registry.require_shared_lock(promotion_slot_name(config.registered_model_name))
    require_trial_pool(config)
    reconcile(config)
    fingerprints = fingerprint(config)
    previous = None if force else unchanged_since(config, fingerprints)
    if previous:
        run_id = record_skip(config, fingerprints, previous)
        text = f"## {config.name}: skipped\n\nData, recipe and code equal those of MLflow run `{previous}`: nothing to retrain. Run with `force=True` to retrain anyway.\n"
        create_markdown_artifact(text, key="train-esco-decision", description="Promotion decision")
        print(text)
        return {"run_id": run_id, "skipped": True, "same_as_run": previous}
    run = start(config, fingerprints)
    create_link_artifact(tracking.run_url(run.run_id), link_text=f"MLflow run {run.run_id}", key="mlflow-run")
    try:
        validate_data(run)
        data = prepare_data(run)
        best_params = tune(run, data)
        model_dir = train(run, data, best_params)
        scores = evaluate_models(run, data, model_dir)
        version = register(run, data, model_dir, scores)
        decision = promote(run, data, version, scores)
        summary = report(run, data, version, scores, decision)
    except BaseException as error:
        # MLflow would leave this run FINISHED (or RUNNING); say what failed instead.
        tracking.end_run(run.run_id, failure=f"{type(error).__name__}: {error}")
        raise
    tracking.end_run(run.run_id)
    stages.finish(run)
    create_markdown_artifact(summary, key="train-esco-decision", description="Promotion decision")
    create_table_artifact(
        score_rows(scores, config.evaluation.headline_metrics()),
        key="train-esco-scores",
        description=f"Base, candidate and champion of {config.registered_model_name} on the test and golden sets",
    )
    print(summary)
    return {
        "run_id": run.run_id,
        "skipped": False,
        "version": version,
        "promoted": decision.promote,
        "reason": decision.reason,
    }


@flow(name="tune-trials", flow_run_name="tune-trials {ticket.study_name}")
def tune_trials(ticket: StudyTicket) -> int:
    """Run trials of a train-esco run's Optuna study until it has its n_trials finished; returns
    how many this flow run finished. Started by train-esco with `search.workers: pool`."""
    workdir = outputs_root() / "trial-workers" / str(prefect_flow_run.id)
    try:
        return join_study(ticket, workdir, name=f"flow run {prefect_flow_run.id}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description="Run the train-esco flow once, here.")
    cli.add_argument("recipe", nargs="?", default="esco-occupation-skills", help="built-in recipe name or recipe file")
    cli.add_argument("--force", action="store_true", help="retrain even if data, recipe and code are unchanged")
    cli.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a recipe field, e.g. --set training.epochs=1 (repeatable; values are read as YAML)",
    )
    arguments = cli.parse_args()
    try:
        overrides = parse_overrides(arguments.overrides)
    except RecipeError as error:
        cli.error(str(error))
    train_esco(arguments.recipe, overrides=overrides, force=arguments.force)
