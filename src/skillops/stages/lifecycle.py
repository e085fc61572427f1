"""The pipeline run's own life: runs a dead process left open are closed, an unchanged input is
skipped, the MLflow run is opened with everything needed to reproduce it, and closed FINISHED or
FAILED with the reason (a server that did not answer named)."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from skillops.config import Recipe
from skillops.context import Fingerprints, FlowRun, RunContext
from skillops.errors import RecipeError
from skillops.stack import servers
from skillops.stages.shared import data_release, remote_gate
from skillops.tracking import registry, runs
from skillops.training import checkpoints, modeling, tuning

logger = logging.getLogger(__name__)

TRACKED_LIBRARIES = ("sentence-transformers", "transformers", "torch", "mlflow", "prefect", "optuna")


def reconcile(
    recipe: Recipe,
    flow_run: FlowRun | None = None,
    flow_run_states: Callable[[list[str]], dict[str, str]] | None = None,
) -> list[str]:
    """Runs of this recipe left RUNNING by a run that died are marked FAILED, with the reason
    (`runs.fail_stale_runs`: by their Prefect flow run's state, else by their process; a run
    of `flow_run` itself is an earlier attempt of this retried flow run)."""
    stale = runs.fail_stale_runs(
        recipe.name, flow_run.api if flow_run else None, flow_run_states, flow_run.id if flow_run else None
    )
    if stale:
        logger.warning("Marked %d run(s) left RUNNING by a dead process as FAILED: %s", len(stale), stale)
    return stale


def unchanged_since(recipe: Recipe, fingerprints: Fingerprints) -> str | None:
    """The last completed pipeline run, if it had the same data, recipe and code (else None)."""
    if fingerprints.data is None:
        return None  # a hub dataset: skillops cannot see whether it changed
    return runs.last_run_with(recipe.name, fingerprints.tags())


def record_skip(recipe: Recipe, fingerprints: Fingerprints, previous_run_id: str) -> str:
    return runs.record_skip(recipe.name, fingerprints.tags(), previous_run_id)


def start(
    recipe: Recipe,
    fingerprints: Fingerprints,
    flow_run: FlowRun | None = None,
    recipe_source: str | None = None,
    overrides: dict | None = None,
) -> RunContext:
    """Open the pipeline's MLflow run with everything needed to reproduce or compare it: the
    recipe as named (`recipe_source`) and the overrides it ran with, and the flow run it belongs
    to when there is one on a shared server (the UI's Source column names it)."""
    versions = {f"version.{lib}": metadata.version(lib) for lib in TRACKED_LIBRARIES}
    # A precision this machine cannot train in is refused here, before the run or any data.
    precision = modeling.precision_name(modeling.mixed_precision(recipe.training.precision))
    params = {
        "recipe": recipe.name,
        "base_model": recipe.base_model,
        "data.format": recipe.data.format,
        "data.path": recipe.data.path,
        "data.shape": recipe.data.training_shape,
        **(
            {f"data.mine_negatives.{k}": v for k, v in recipe.data.mine_negatives.model_dump().items()}
            if recipe.data.mine_negatives
            else {"data.mine_negatives": None}
        ),
        **{f"loss.{k}": v for k, v in recipe.loss.model_dump().items()},
        **{f"prompts.{k}": repr(v) for k, v in recipe.prompts.model_dump().items()},
        **{f"training.{k}": v for k, v in recipe.training.model_dump().items()},
        **{f"evaluation.{k}": v for k, v in recipe.evaluation.model_dump().items()},
        **{f"promotion.{k}": v for k, v in recipe.promotion.model_dump().items()},
        "search.n_trials": recipe.search.n_trials,
    }
    tags = {
        **fingerprints.tags(),
        "skillops.kind": "pipeline",
        "skillops.python": platform.python_version(),
        "skillops.precision": f"{precision} on {modeling.device()}",
        **versions,
        "skillops.overrides": json.dumps(overrides or {}),
        checkpoints.ATTEMPT_TAG: fingerprints.attempt,
        **data_release(recipe),
        "mlflow.source.name": (flow_run.deployment or flow_run.name) if flow_run else "flows/train_esco.py",
        "mlflow.source.type": "JOB" if flow_run else "LOCAL",
        "mlflow.source.git.commit": fingerprints.code.split("+")[0],
        # Where the library that ran was imported from (a worker's: its clone at that commit).
        "skillops.library": str(Path(__file__).resolve().parents[1]),
        **({runs.FLOW_RUN_TAG: flow_run.id, runs.PREFECT_API_TAG: flow_run.api} if flow_run else {}),
    }
    remote = remote_gate()
    if remote is not None:  # on a team's stack, the authority makes the experiment this account may write
        remote.open_experiment(recipe.name)
    run = RunContext(
        recipe=recipe,
        fingerprints=fingerprints,
        run_id=runs.start_run(recipe.name, recipe.name, params, tags),
        recipe_source=recipe_source,
    )
    runs.keep_alive(run.run_id)  # a retry of this flow run can tell it from a dead one
    recipe_file = run.output_dir / "recipe.json"
    recipe_file.parent.mkdir(parents=True, exist_ok=True)
    recipe_file.write_text(recipe.model_dump_json(indent=1), "utf-8")
    try:  # the run's first file: an artifact store that takes none stops the run here, before any work
        runs.log_artifact(run.run_id, recipe_file)
    except Exception as error:
        if explain(error, recipe) is not error:  # the tracking server is away: say that instead
            raise
        location = runs.client().get_run(run.run_id).info.artifact_uri
        problem = RecipeError(
            f"The run's artifact store {location} did not take a file ({type(error).__name__}: {error}), so "
            "its checkpoints, model and reports could not be kept; nothing was trained. Fix: set "
            "SKILLOPS_ARTIFACT_ROOT to a location this machine can write and every machine reads (a shared "
            "folder, s3://...), or leave it unset for the store's own (mlflow-artifacts:/ with a tracking server)."
        )
        fail(run, problem, recipe)
        raise problem from None
    return run


def require_promotion_lock(recipe: Recipe, shared_lock: str | None) -> None:
    """Before any compute: a run that could not promote safely says so now, not after training
    (`shared_lock` names the lock every machine takes, when the orchestrator has one)."""
    registry.require_shared_lock(shared_lock)


def explain(error: BaseException, recipe: Recipe) -> BaseException:
    """The error to show: a `ServerError` naming the server and the setting when a server the run
    needs did not answer in time, else `error` itself."""
    addresses = {
        "MLflow tracking server": runs.tracking_uri(),
        "Optuna database": tuning.storage_url(recipe.search, None) or "",
        "Prefect server": os.environ.get("PREFECT_API_URL", ""),
    }
    return servers.explain(error, addresses) or error


def fail(run: RunContext, error: BaseException, recipe: Recipe) -> BaseException:
    """Close the run FAILED with what went wrong (MLflow would leave it FINISHED, or RUNNING), and
    return the error to show (`explain`). With the tracking server away the run stays RUNNING,
    and the next start closes it."""
    explained = explain(error, recipe)
    try:
        runs.end_run(run.run_id, failure=f"{type(explained).__name__}: {explained}")
    except Exception as closing:
        logger.warning("Could not close run %s (%s); the next start marks it FAILED", run.run_id, closing)
    return explained


def finish(run: RunContext) -> None:
    """Close the run FINISHED; the attempt succeeded, so its checkpoints are no longer needed (the
    model is in the registry)."""
    runs.end_run(run.run_id)
    shutil.rmtree(run.attempt_dir, ignore_errors=True)
