"""The train-esco flow: validate -> prepare -> tune -> train -> evaluate -> register -> promote.

This file is the one place that knows the order of the stages. Each task is one call into
`skillops.stages` and passes only paths, run ids, versions and small pydantic models; what only
Prefect can answer or provide (its server, flow-run states, deployment runs, the promotion slot)
is in `orchestration.py`. The tune-trials flow is a trial worker of a train-esco run's study
(`search.workers: pool`): the run starts it as deployment runs that any worker of the pool may take.

    python flows/train_esco.py [recipe-name-or-path] [--force] [--set training.epochs=1 ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any

# A worker runs this file from a clone of the team's repository at the deployed commit: the library
# it imports (here and in the processes it starts) is that clone's src/, not whichever skillops the
# worker's environment installed, so the commit a run records is the code that ran. (Where the
# installed one is this checkout's own, as in `make train` and the tests, nothing changes.)
_SRC = Path(__file__).resolve().parents[1] / "src"
_INSTALLED = importlib.util.find_spec("skillops")
if _INSTALLED is None or Path(_INSTALLED.origin).resolve().parents[1] != _SRC:
    sys.path.insert(0, str(_SRC))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_SRC), os.environ.get("PYTHONPATH")]))

from skillops.stack import servers  # light: what the clients below read when they are imported

# Prefect reads its settings when it is imported: skillops' defaults for them (logging, the
# temporary server's wait, heartbeats, no analytics) and the clients' retries, where not set.
os.environ.update({**servers.flow_defaults(), **os.environ})

from prefect import flow
from prefect import task as prefect_task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as prefect_flow_run

from orchestration import (
    PoolTrialWorkers,
    flow_run_states,
    promotion_slot,
    promotion_slot_name,
    require_heartbeat_watch,
    require_readable_temporary_database,
    require_trial_pool,
    this_flow_run,
)
from skillops import stages
from skillops.config import Recipe, TunedParams, load_recipe, parse_overrides
from skillops.context import Fingerprints, RunContext
from skillops.errors import SkillopsError
from skillops.inputs.preparation import PreparedData
from skillops.inputs.validation import ValidationReport, require
from skillops.judging.evaluation import Scores
from skillops.judging.index_churn import Churn
from skillops.judging.promotion import Decision
from skillops.tracking.reports import score_rows
from skillops.training.tuning_workers import StudyTicket

# At INFO: the stage progress lines (training at a quarter, half, ...) are what a log reader wants.
logging.getLogger("skillops").setLevel(logging.INFO)

# Never cache a stage: a retrain must re-read data and re-score the champion every time.
task = partial(prefect_task, cache_policy=NO_CACHE)
# Registry and artifact writes are I/O that may hit a busy store; training is not retried blindly.
io_task = partial(task, retries=2, retry_delay_seconds=[5, 30])


@task(name="reconcile", task_run_name="reconcile {recipe.name}")
def reconcile(recipe: Recipe) -> list[str]:
    return stages.reconcile(recipe, this_flow_run(), flow_run_states)


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
def start(recipe: Recipe, fingerprints: Fingerprints, source: str, overrides: dict[str, Any]) -> RunContext:
    return stages.start(recipe, fingerprints, this_flow_run(), source, overrides)


@task(name="validate-data", task_run_name="validate-data {run.recipe.name}")
def validate_data(run: RunContext) -> ValidationReport:
    report = stages.validate_data(run)
    docs = stages.data_docs_link(run, "inputs")
    text = f"{report.markdown()}\nGreat Expectations Data Docs of this pass: [{docs}]({docs})\n"
    create_markdown_artifact(text, key="data-validation", description="Data validation summary")
    return require(report)


# log_prints off: `datasets` disassembles functions with dis (printing to a buffer) when it
# fingerprints them, and Prefect's print capture would log every line of that bytecode.
@task(name="prepare-data", task_run_name="prepare-data {run.recipe.name}", log_prints=False)
def prepare_data(run: RunContext) -> PreparedData:
    return stages.prepare_data(run)


@task(name="tune", task_run_name="tune {run.recipe.name}")
def tune(run: RunContext, data: PreparedData) -> TunedParams | None:
    return stages.tune(run, data, place_workers=PoolTrialWorkers)


@task(name="train", task_run_name="train {run.recipe.name}")
def train(run: RunContext, data: PreparedData, params: TunedParams | None) -> Path:
    return stages.train(run, data, params)


@task(name="evaluate-models", task_run_name="evaluate-models {run.recipe.name}")
def evaluate_models(run: RunContext, data: PreparedData, model_dir: Path) -> Scores:
    return stages.evaluate_models(run, data, model_dir)


@io_task(name="register", task_run_name="register {run.recipe.name}")
def register(run: RunContext, data: PreparedData, model_dir: Path, scores: Scores) -> str:
    return stages.register(run, data, model_dir, scores)


@io_task(name="promote", task_run_name="promote {run.recipe.name} v{version}")
def promote(run: RunContext, data: PreparedData, version: str, scores: Scores) -> Decision:
    name = run.recipe.registered_model_name
    with promotion_slot(name):
        return stages.promote(run, data, version, scores, shared_lock=promotion_slot_name(name))


@task(name="index-churn", task_run_name="index-churn {run.recipe.name} v{version}")
def index_churn(
    run: RunContext, data: PreparedData, model_dir: Path, version: str, scores: Scores, decision: Decision
) -> Churn | None:
    return stages.index_churn(run, data, model_dir, scores, decision)


@io_task(name="report", task_run_name="report {run.recipe.name} v{version}")
def report(
    run: RunContext, data: PreparedData, version: str, scores: Scores, decision: Decision, churn: Churn | None
) -> str:
    return stages.report(run, data, version, scores, decision, churn)


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
    run = None
    try:
        stages.require_promotion_lock(config, promotion_slot_name(config.registered_model_name))
        require_trial_pool(config)
        require_heartbeat_watch()
        reconcile(config)
        fingerprints = fingerprint(config)
        previous = None if force else unchanged_since(config, fingerprints)
        if previous:
            run_id = record_skip(config, fingerprints, previous)
            text = f"## {config.name}: skipped\n\nData, recipe and code equal those of MLflow run `{previous}`: nothing to retrain. Run with `force=True` to retrain anyway.\n"
            create_markdown_artifact(text, key="train-esco-decision", description="Promotion decision")
            print(text)
            return {"run_id": run_id, "skipped": True, "same_as_run": previous}
        run = start(config, fingerprints, recipe, overrides or {})
        create_link_artifact(stages.run_link(run), link_text=f"MLflow run {run.run_id}", key="mlflow-run")
        validate_data(run)
        data = prepare_data(run)
        best_params = tune(run, data)
        model_dir = train(run, data, best_params)
        scores = evaluate_models(run, data, model_dir)
        version = register(run, data, model_dir, scores)
        decision = promote(run, data, version, scores)
        churn = index_churn(run, data, model_dir, version, scores, decision)
        summary = report(run, data, version, scores, decision, churn)
    except BaseException as error:
        # The MLflow run closed FAILED with the reason; a server that did not answer is named.
        explained = stages.fail(run, error, config) if run else stages.explain(error, config)
        if explained is error:
            raise
        raise explained from error
    stages.finish(run)
    create_markdown_artifact(summary, key="train-esco-decision", description="Promotion decision")
    create_table_artifact(
        score_rows(scores, config.evaluation.reported_metrics()),
        key="train-esco-scores",
        description=f"Base, candidate and champion of {config.registered_model_name} on the test and golden sets",
    )
    print(summary)
    return {
        "run_id": run.run_id,
        "skipped": False,
        "version": version,  # of <model>-candidates
        "promoted": decision.promote,
        "served_version": decision.served_version,  # of <model>, when promoted
        "reason": decision.reason,
    }


@flow(name="tune-trials", flow_run_name="tune-trials {ticket.study_name}")
def tune_trials(ticket: StudyTicket) -> int:
    """Run trials of a train-esco run's Optuna study until it has its n_trials finished; returns
    how many this flow run finished. Started by train-esco with `search.workers: pool`."""
    return stages.join_study(ticket, name=f"flow run {prefect_flow_run.id}")


def main(argv: list[str] | None = None) -> int:
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
    arguments = cli.parse_args(argv)
    try:
        # The recipe, its overrides and Prefect's database are checked before Prefect starts its
        # temporary server.
        overrides = parse_overrides(arguments.overrides)
        load_recipe(arguments.recipe).with_overrides(overrides)
        require_readable_temporary_database()
        train_esco(arguments.recipe, overrides=overrides, force=arguments.force)
    except SkillopsError as error:
        print(f"{Path(__file__).name}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
