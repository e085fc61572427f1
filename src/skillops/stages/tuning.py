"""tune: the Optuna search over the recipe's space, continued by a resumed attempt, and a pool
worker's share of another run's study."""

from __future__ import annotations

import logging
import shutil

from skillops.config import Recipe, TunedParams
from skillops.context import RunContext
from skillops.inputs.preparation import PreparedData
from skillops.paths import outputs_root
from skillops.stages.shared import starting_model
from skillops.tracking import registry, runs
from skillops.training import checkpoints, tuning_workers
from skillops.training.trainer import check_processes
from skillops.training.tuning import TrialWorker
from skillops.training.tuning import tune as run_search
from skillops.training.tuning_workers import PlaceWorkers

logger = logging.getLogger(__name__)


def tune(run: RunContext, data: PreparedData, place_workers: PlaceWorkers | None = None) -> TunedParams | None:
    """The best trial's parameters (None when the search is off). The study is the attempt's: a run that crashed during tuning
    continues it (finished trials kept), one that crashed after tuning reuses its result.
    `place_workers` starts trial workers in the orchestrator's pool (`search.workers: pool`)."""
    check_processes(run.recipe.training)  # the final training's processes, before any trial trains
    tuning_workers.check_parallel(run.recipe.search, run.attempt_dir)
    restored = checkpoints.restore(run.run_id, run.recipe.name, run.fingerprints.attempt, run.attempt_dir)
    if restored:
        runs.set_tags(run.run_id, {"skillops.restored_from": f"run {restored} (the attempt's files in the store)"})
    saved = run.attempt_dir / "best_params.json"
    if saved.is_file():
        best = TunedParams.model_validate_json(saved.read_text("utf-8"))
        runs.set_tags(
            run.run_id, {"skillops.tuning": f"reused from the interrupted attempt {run.fingerprints.attempt}"}
        )
        logger.info("Reusing the tuning result of the interrupted attempt: %s", best)
    else:
        start, init_model = starting_model(run)
        worker = TrialWorker(
            recipe=run.recipe.model_copy(update={"base_model": start}),
            data_dir=data.directory,
            experiment=run.recipe.name,
            parent_run_id=run.run_id,
            output_dir=run.output_dir / "tuning",
            study_name=f"{run.recipe.name}-{run.fingerprints.attempt}",
            attempt_dir=run.attempt_dir,
            init_model=init_model,
        )
        best = run_search(
            worker,
            first_trial=_champion_params(run.recipe),
            start_workers=tuning_workers.starter(run.recipe.search, place_workers),
        )
        if best is None:  # the search is off: the recipe's settings as they are
            return None
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(best.model_dump_json(), "utf-8")
        runs.log_artifact(run.run_id, saved, checkpoints.ARTIFACT_PATH)  # a restart elsewhere reuses it
    runs.log_params(run.run_id, {f"best.{k}": v for k, v in best.model_dump().items()})
    return best


def _champion_params(recipe: Recipe) -> TunedParams | None:
    """What the current champion was trained with: the search tries it first."""
    champion = registry.champion_version(recipe.registered_model_name)
    return registry.trained_with(recipe.registered_model_name, champion) if champion else None


def join_study(ticket: tuning_workers.StudyTicket, name: str) -> int:
    """Run trials of a pipeline's study here, as a worker of the pool, in a work folder of its own
    that is removed afterwards; returns how many trials this worker finished."""
    workdir = outputs_root() / "trial-workers" / name.replace(" ", "-")
    try:
        return tuning_workers.join_study(ticket, workdir, name)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
