"""Optuna search over learning rate, batch size and warmup, judged on the validation set only.

Each trial is an MLflow child run of the pipeline's run. The HF trainer's own
`hyperparameter_search` cannot take Optuna callbacks or log child runs, so the loop is written
here; pruning happens at the trainer's evaluation steps through a callback.

The study lives in an Optuna storage, named after the attempt (data, recipe, code): a run killed
during tuning and started again continues it, keeping every finished trial. Trials send
heartbeats, so a trial whose process died is marked FAIL by the next process that uses the study
and run again (Optuna's `RetryHeartbeatStaleTrialCallback`).

With `search.parallel` > 1 more workers join the same study; where they run (processes on this
machine, or units of an orchestrator's pool) is `skillops.training.tuning_workers`' concern.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import shutil
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel

from skillops.config import Recipe, SearchConfig, TunedParams
from skillops.errors import RecipeError, TrainingError
from skillops.inputs.preparation import PreparedPaths
from skillops.judging.evaluation import scorer
from skillops.settings import settings
from skillops.stack import servers
from skillops.tracking.reports import optuna_charts
from skillops.tracking.runs import (
    end_run,
    log_artifact,
    log_loss_history,
    log_metrics,
    metric_name,
    set_tags,
    start_run,
)
from skillops.uris import safe_uri

logger = logging.getLogger(__name__)

# A trial whose heartbeat is older than the grace period is taken for dead (its process was
# killed), marked FAIL, and run again with the same parameters, at most MAX_RETRIES times. The
# grace period also outlasts the database outage the storage waits for (`servers.wait_seconds`):
# no heartbeat is written while the database is away, and a live trial must not be taken for dead.
# The heartbeat is SKILLOPS_TRIAL_HEARTBEAT_SECONDS (10 s; tests wait less).
MIN_GRACE_SECONDS = 30
MAX_RETRIES = 2
# Opening a new storage while another process creates it trips on its tables at most once per
# creation step (tables, version row, alembic stamp); one more try covers a slow second opener.
FIRST_OPEN_TRIES = 4


@contextlib.contextmanager
def _heartbeats_are_experimental():
    """Heartbeats are how a killed worker's trial is found; Optuna still warns they are experimental."""
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def _finished_states():
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED)


def finished_trials(study) -> list:
    """The study's trials that count towards n_trials: complete or pruned, whoever ran them."""
    return study.get_trials(deepcopy=False, states=_finished_states())


def storage_url(search: SearchConfig, attempt_dir: Path | None) -> str | None:
    """search.storage, else SKILLOPS_OPTUNA_STORAGE, else a sqlite file in the attempt's folder
    (one machine; a study that several machines share needs a server, e.g. PostgreSQL). None for a
    worker of the pool (no attempt folder) that was given neither."""
    default = f"sqlite:///{attempt_dir / 'optuna.db'}" if attempt_dir else None
    return search.storage or settings().optuna_storage or default


def grace_seconds() -> int:
    heartbeat = settings().trial_heartbeat_seconds
    return int(max(min(MIN_GRACE_SECONDS, 3 * heartbeat), servers.wait_seconds() + 2 * heartbeat))


def open_storage(url: str):
    """The Optuna storage at `url`, with heartbeats, that waits out a restart of its database; a
    clear error names the setting if it cannot be opened."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        for attempt in range(1, FIRST_OPEN_TRIES + 1):
            try:
                with _heartbeats_are_experimental():
                    return _patient_storage()(
                        url,
                        # A connection that died with a restart of the server is found and replaced before use.
                        engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
                        heartbeat_interval=settings().trial_heartbeat_seconds,
                        grace_period=grace_seconds(),
                        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
                    )
            except Exception as error:
                if attempt == FIRST_OPEN_TRIES or not _collided_with_another_first_open(error):
                    raise
                time.sleep(0.2 * attempt)
    except Exception as error:  # whatever the database driver raises: bad URL, refused, no such database
        raise RecipeError(
            f"search.storage: cannot open the Optuna storage {safe_uri(url)} ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}). Give a database URL that this machine reaches "
            "(sqlite:///path/optuna.db, postgresql://user@host/db with the password in PGPASSFILE), or leave "
            "search.storage and SKILLOPS_OPTUNA_STORAGE unset for a file in the run's attempt folder."
        ) from error


def _collided_with_another_first_open(error: Exception) -> bool:
    """Optuna builds a new storage by check-then-create (tables, version row, alembic stamp), so
    two processes opening it at once (a pool's workers, a run and a watcher) trip on what the other
    has just made. Opened again, the storage is there and is used as it is."""
    import sqlalchemy.exc

    return isinstance(error, sqlalchemy.exc.IntegrityError) or (
        isinstance(error, sqlalchemy.exc.DatabaseError) and "already exists" in str(error)
    )


def upgrade_storage(url: str) -> str:
    """Migrate the Optuna storage at `url` to this Optuna's schema (an upgrade of the team stack).
    A database that never held a study has no schema yet, which Optuna's own `optuna storage
    upgrade` fails on; the first study creates it at this version. Returns what was done."""
    import sqlalchemy
    from optuna.storages import RDBStorage

    engine = sqlalchemy.create_engine(url)
    try:
        if not sqlalchemy.inspect(engine).has_table("version_info"):
            return "no study yet, nothing to migrate"
    finally:
        engine.dispose()
    storage = RDBStorage(url, skip_compatibility_check=True, skip_table_creation=True)
    storage.upgrade()
    return f"at schema {storage.get_current_version()}"


# Storage calls whose commit may have landed although its answer was lost: tried again only when
# the database refused before doing anything (a new trial twice would be a trial nobody runs; a
# parameter set twice is refused by the database).
_ONCE_ONLY = {"create_new_trial", "_create_new_trial", "set_trial_param", "_set_trial_param"}
# The private calls that Optuna's cache in front of the storage makes (optuna 5.0
# `_CachedStorage`): `Study.optimize` fails stale trials through `_get_stale_trial_ids` before
# each trial, which must wait for the database as the public calls do.
_CALLED_BY_THE_CACHE = {
    "_create_new_trial",
    "_set_trial_param",
    "_get_best_trial_id",
    "_get_trials",
    "_get_stale_trial_ids",
}


@functools.cache
def _patient_storage():
    """Optuna's RDBStorage whose every call waits for its database (a restart of PostgreSQL) for
    up to `servers.wait_seconds()`, trying again every few seconds; Optuna itself gives up at once."""
    import sqlalchemy.exc
    from optuna.exceptions import StorageInternalError
    from optuna.storages import RDBStorage

    def patient(method):
        once_only = method.__name__ in _ONCE_ONLY

        @functools.wraps(method)
        def call(self, *args, **kwargs):
            deadline = time.monotonic() + servers.wait_seconds()
            while True:
                try:
                    return method(self, *args, **kwargs)
                except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, StorageInternalError) as error:
                    unknown_outcome = isinstance(error, StorageInternalError)  # raised by a failed commit
                    if (once_only and unknown_outcome) or time.monotonic() > deadline:
                        raise
                    logger.warning("The Optuna database does not answer (%s); trying again", type(error).__name__)
                    time.sleep(3)

        return call

    methods = {
        name: patient(getattr(RDBStorage, name))
        for name, value in vars(RDBStorage).items()
        if callable(value)
        and (name in _CALLED_BY_THE_CACHE or not name.startswith("_"))
        and name not in ("upgrade", "remove_session")
    }
    missing = _CALLED_BY_THE_CACHE - set(methods)
    if missing:  # a later Optuna renamed them: its cache would call them without waiting
        raise RuntimeError(
            f"optuna's RDBStorage has no {sorted(missing)}: update skillops.training.tuning._CALLED_BY_THE_CACHE"
        )
    return type("PatientRDBStorage", (RDBStorage,), {"__module__": __name__, **methods})


def _noise_aware_median(n_startup_trials: int):
    """Optuna's median rule with the validation set's noise weighed in: a trial is stopped only
    when its score trails the median of earlier trials at the same validation point by more than
    its own standard error over the validation queries. On a small validation set (14 queries for
    the bundled sample, where MAP moves by about 0.05 with the queries drawn) the plain median
    rule stops trials on chance, and the search is then decided by noise."""
    import numpy as np
    import optuna

    class NoiseAwareMedianPruner(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            point = trial.last_step
            if point is None:
                return False
            finished = finished_trials(study)
            earlier = [t.intermediate_values[point] for t in finished if point in t.intermediate_values]
            if len(finished) < n_startup_trials or not earlier:
                return False
            margin = trial.user_attrs.get(f"validation_stderr_{point}", 0.0)
            return trial.intermediate_values[point] + margin < float(np.median(earlier))

    return NoiseAwareMedianPruner()


def make_pruner(search: SearchConfig):
    """The pruner `search.pruner` names. Trials report at validation point 1..evals_per_trial (not
    at the optimizer step), so trials of different batch sizes are compared at the same share of
    their budget; that is also the resource successive halving and Hyperband count."""
    import optuna

    if search.pruner == "noise_aware_median":
        return _noise_aware_median(n_startup_trials=1)
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    if search.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=search.evals_per_trial, reduction_factor=3)
    return optuna.pruners.NopPruner()


def _pruning_callback(trial, evaluator, metric: str, run_id: str):
    """Reports each validation score to Optuna and MLflow, and stops a trial Optuna gives up on."""
    import optuna
    from transformers import TrainerCallback

    class PruneOnValidation(TrainerCallback):
        def __init__(self) -> None:
            self.last_score: float | None = None
            self.last_step = -1
            self.reported: set[int] = set()

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            scores = {metric_name(k.removeprefix("eval_")): v for k, v in (metrics or {}).items()}
            if metric not in scores:
                return
            self.last_score, self.last_step = float(scores[metric]), state.global_step
            stderr = scores.get(f"{metric}_stderr", 0.0)
            log_metrics(
                run_id,
                {metric: self.last_score, f"{metric}_stderr": stderr},
                prefix="validation_",
                step=state.global_step,
            )
            point = max(1, round(state.global_step / args.eval_steps))  # validation point 1, 2, ...
            if point in self.reported:  # Optuna keeps a point's first value and warns at a second
                return
            trial.set_user_attr(f"validation_stderr_{point}", stderr)
            trial.report(self.last_score, point)
            self.reported.add(point)
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"validation {metric} {self.last_score:.4f} (standard error {stderr:.4f}) at step {state.global_step}"
                )

        def on_train_end(self, args, state, control, model=None, **kwargs):
            if state.global_step != self.last_step:  # score the final weights too
                scores = evaluator(model)
                self.last_score, self.last_step = float(scores[metric]), state.global_step
                log_metrics(run_id, {metric: self.last_score}, prefix="validation_", step=state.global_step)

    return PruneOnValidation()


class TrialWorker(BaseModel):
    """What a process that runs trials of a study needs; one is the pipeline's own process, the
    others (`search.parallel` > 1) are started with it as JSON and join the same study."""

    recipe: Recipe
    data_dir: Path
    experiment: str
    parent_run_id: str
    output_dir: Path
    study_name: str
    # Where the default storage is; each process resolves the URL itself, so a password given in
    # SKILLOPS_OPTUNA_STORAGE is never written into a job file. None: a worker of the pool.
    attempt_dir: Path | None
    init_model: str | None = None  # models:/<name>/<version> when recipe.base_model is a copy of it
    name: str = ""  # who runs the trials (a trial's user attribute `worker`); default host and pid

    def study(self):
        import optuna

        search = self.recipe.search
        return optuna.create_study(
            storage=open_storage(storage_url(self.recipe.search, self.attempt_dir)),
            study_name=self.study_name,
            load_if_exists=True,
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=search.seed),
            pruner=make_pruner(search),
        )

    def objective(self):
        import optuna

        from skillops.training.trainer import TrainingSpec, train_model

        recipe, search, data = self.recipe, self.recipe.search, PreparedPaths(self.data_dir)
        metric = recipe.evaluation.primary_metric
        evaluator = scorer(data.eval_set("validation"), recipe.evaluation, recipe.prompts, with_stderr=True)

        def objective(trial: optuna.Trial) -> float:
            params = search.suggest(trial)
            # One process per trial: the pruner reads its validation scores in this process (trials
            # run side by side with search.parallel instead).
            config = recipe.training.tuned(params).model_copy(
                update={"epochs": search.epochs, "evals_during_training": search.evals_per_trial, "processes": 1}
            )
            worker = self.name or f"{socket.gethostname()} pid {os.getpid()}"
            run_id = start_run(
                self.experiment,
                f"trial-{trial.number}",
                {**params.model_dump(), "epochs": search.epochs},
                tags={"skillops.tuning_worker": worker},
                parent_run_id=self.parent_run_id,
            )
            trial.set_user_attr("mlflow_run_id", run_id)
            trial.set_user_attr("worker", worker)
            trial.set_user_attr("pid", os.getpid())
            callback = _pruning_callback(trial, evaluator, metric, run_id)
            trial_dir = self.output_dir / f"trial-{trial.number}"
            try:
                spec = TrainingSpec.for_recipe(
                    recipe,
                    data.train,
                    trial_dir,
                    config,
                    label=f"tuning trial {trial.number + 1} (study {self.study_name}, {search.n_trials} to finish)",
                )
                result = train_model(spec, evaluator=evaluator, callbacks=[callback])
                log_loss_history(run_id, result.log_history)
            except optuna.TrialPruned as pruned:
                set_tags(run_id, {"skillops.trial_state": "pruned"})
                end_run(run_id)
                logger.info("Trial %d pruned: %s", trial.number, pruned)
                raise
            except Exception as error:
                end_run(run_id, failure=repr(error))
                raise
            finally:
                shutil.rmtree(trial_dir, ignore_errors=True)  # trial weights are not kept, only scores
            score = callback.last_score
            if score is None or not math.isfinite(score):
                # Optuna would record +-inf as COMPLETE; a trial without a finite score failed.
                end_run(run_id, failure=f"validation {metric} is {score}")
                return float("nan")
            set_tags(run_id, {"skillops.trial_state": "complete"})
            end_run(run_id)
            logger.info("Trial %d: validation %s %.4f with %s", trial.number, metric, score, params)
            return score

        return objective

    def run_trials(self, study, objective) -> None:
        """Trials until the study holds n_trials finished ones, whoever ran them. Failed trials
        (a NaN score, a worker killed mid-trial) do not count, but one worker starts at most so many."""
        import torch
        from optuna.study import MaxTrialsCallback

        n_trials = self.recipe.search.n_trials
        if len(finished_trials(study)) >= n_trials:
            return
        study.optimize(
            objective,
            n_trials=n_trials * (1 + MAX_RETRIES),
            callbacks=[MaxTrialsCallback(n_trials, states=_finished_states())],
            catch=(torch.OutOfMemoryError,),
        )


def _finish_stale_trials(study, objective) -> None:
    """Trials still RUNNING belong to a live worker or to a dead one: wait until their heartbeats
    tell, fail the dead ones, and run the retries that failing them queued."""
    import torch
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    while True:
        with _heartbeats_are_experimental():
            fail_stale_trials(study)
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if waiting:
            study.optimize(objective, n_trials=len(waiting), catch=(torch.OutOfMemoryError,))
        elif not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            return
        else:
            time.sleep(settings().trial_heartbeat_seconds)


class Workers(Protocol):
    """The extra trial workers of one search, wherever they run (`skillops.training.tuning_workers`)."""

    def wait(self) -> None:
        """The pipeline's process is done with trials: let the workers end theirs."""

    def stop(self) -> None:
        """Stop every worker that is still running or has not started yet."""


# Starts the search's extra workers (search.parallel - 1) on the study of the pipeline's own worker.
StartWorkers = Callable[[TrialWorker], Workers]


def tune(
    worker: TrialWorker, first_trial: TunedParams | None = None, start_workers: StartWorkers | None = None
) -> TunedParams | None:
    """Run the search until the worker's study has `search.n_trials` finished (complete or
    pruned) trials; returns the best trial's parameters (None when the search is switched off).
    `first_trial`: parameters a new study tries first (the champion's: the search then starts
    from what won last time). `start_workers` starts the other `search.parallel - 1` workers."""
    recipe, search, parent_run_id = worker.recipe, worker.recipe.search, worker.parent_run_id
    if search.n_trials == 0:
        return None
    import torch
    from optuna.trial import TrialState

    study = worker.study()
    earlier = len(finished_trials(study))
    set_tags(
        parent_run_id,
        {
            "skillops.optuna_study": worker.study_name,
            "skillops.optuna_storage": safe_uri(storage_url(search, worker.attempt_dir)),
            "skillops.training.tuning_workers": search.parallel,
        },
    )
    if first_trial and not study.get_trials(deepcopy=False):
        if first_trial.within(search):
            study.enqueue_trial(first_trial.model_dump())
            set_tags(parent_run_id, {"skillops.first_trial": first_trial.model_dump_json()})
        else:
            logger.info("The champion's parameters %s are outside the search space: not tried first", first_trial)
    if earlier:
        note = f"continued study {worker.study_name}: {earlier} of {search.n_trials} trials were already finished"
        set_tags(parent_run_id, {"skillops.tuning": note})
        logger.info("Tuning %s", note)
    objective = worker.objective()
    threads = torch.get_num_threads()
    workers = start_workers(worker) if start_workers and search.parallel > 1 else None
    try:
        worker.run_trials(study, objective)
        if workers:
            workers.wait()
        _finish_stale_trials(study, objective)
    finally:
        if workers:
            workers.stop()
        torch.set_num_threads(threads)  # local workers took a share of the cores while they ran
    completed = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not completed:
        raise TrainingError(
            f"No tuning trial completed (states: {[t.state.name for t in study.trials]}); see the "
            "trial runs in MLflow. Widen search.learning_rate or set search.n_trials: 0 to skip tuning."
        )
    set_tags(parent_run_id, {"skillops.tuning_best": _best_against_noise(completed, recipe.evaluation.primary_metric)})
    for chart in optuna_charts(study, worker.output_dir):
        log_artifact(parent_run_id, chart, "tuning")
    return TunedParams(**study.best_params)


def _best_against_noise(completed: list, metric: str) -> str:
    """The best trial, and whether the validation set can tell it from the next best (one standard
    error of its last validation score): a reader should know when the choice was a coin toss."""
    ranked = sorted(completed, key=lambda t: t.value, reverse=True)
    best = ranked[0]
    stderr = best.user_attrs.get(f"validation_stderr_{max(best.intermediate_values, default=0)}")
    text = f"trial {best.number}: validation {metric} {best.value:.4f}"
    if stderr is not None:
        text += f" (standard error {stderr:.4f})"
    if len(ranked) > 1:
        gap = best.value - ranked[1].value
        text += f"; next best trial {ranked[1].number}: {ranked[1].value:.4f}"
        if stderr is not None and gap < stderr:
            text += ", within one standard error: the validation set cannot tell them apart"
    logger.info("Best %s", text)
    return text
