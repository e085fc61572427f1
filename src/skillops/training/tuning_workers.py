"""Where the trials of a search run besides the pipeline's own process (`search.parallel` > 1).

`search.workers: local` starts processes on this machine (`python -m skillops.training.tuning_workers
<job.json>`), one GPU each or an equal share of the CPU cores. `search.workers: pool` asks the
orchestrator to place units on its workers, on any machine: each gets a `StudyTicket`, which
names nothing of this machine (the prepared data come from the pipeline's MLflow run) and carries
no password, and joins the study through `join_study`. The study itself, its trials and its
pruner are `skillops.training.tuning`'s.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from skillops.config import Recipe, SearchConfig
from skillops.errors import RecipeError
from skillops.tracking.runs import download_artifacts, log_artifacts
from skillops.training.modeling import require_devices
from skillops.training.tuning import StartWorkers, TrialWorker, Workers, finished_trials, storage_url
from skillops.uris import safe_uri

logger = logging.getLogger(__name__)

# Where in the pipeline's MLflow run the prepared data wait for trial workers of the pool.
DATA_ARTIFACT = "tuning/data"


class StudyTicket(BaseModel):
    """What a trial worker of the pool, on any machine, needs to join a study: nothing in it is a
    path of the pipeline's machine, and it carries no password (it is a flow run parameter)."""

    recipe: Recipe
    experiment: str
    parent_run_id: str
    study_name: str
    storage: str  # the study's storage URL without password: the worker's own must be the same
    init_model: str | None = None  # models:/<name>/<version> when trials start from the champion


# Places `count` units of the orchestrator's pool that each join the ticket's study (the flow
# gives it: runs of a Prefect deployment).
PlaceWorkers = Callable[[StudyTicket, int], Workers]


def check_parallel(search: SearchConfig, attempt_dir: Path | None = None) -> None:
    """Settings the search cannot run, before any training: more local workers than GPUs (or
    cores), or workers of the pool that could not reach the study."""
    if search.parallel == 1 or search.n_trials == 0:
        return
    if search.workers == "local":
        require_devices(search.parallel, "search.parallel", "tuning worker")
        return
    url = storage_url(search, attempt_dir) or ""
    if url.startswith("sqlite"):
        raise RecipeError(
            f"search.workers = pool, but the study is in {safe_uri(url)}, a file on this machine, and workers of "
            "the pool may run on others: set search.storage (or SKILLOPS_OPTUNA_STORAGE on every machine) to a "
            "database server they all reach, e.g. postgresql://skillops_optuna@<host>:5433/optuna?sslmode=verify-full, or use "
            "search.workers: local."
        )


def starter(search: SearchConfig, place_workers: PlaceWorkers | None) -> StartWorkers | None:
    """How a search with these settings starts its extra workers (None: it has none)."""
    if search.parallel == 1:
        return None
    if search.workers == "local":
        return LocalWorkers
    if place_workers is None:
        raise RecipeError(
            "search.workers = pool needs an orchestrator that places the workers: run the train-esco flow on "
            "a Prefect server with the tune-trials deployment (`make stack-up`), or use search.workers: local."
        )

    def start_in_pool(worker: TrialWorker) -> Workers:
        log_artifacts(worker.parent_run_id, worker.data_dir, DATA_ARTIFACT)  # what the workers of the pool train on
        ticket = StudyTicket(
            recipe=worker.recipe,
            experiment=worker.experiment,
            parent_run_id=worker.parent_run_id,
            study_name=worker.study_name,
            storage=safe_uri(storage_url(worker.recipe.search, worker.attempt_dir)),
            init_model=worker.init_model,
        )
        return place_workers(ticket, worker.recipe.search.parallel - 1)

    return start_in_pool


class LocalWorkers:
    """parallel - 1 processes that join the study (the pipeline's process is the first worker):
    one GPU each, or an equal share of the CPU cores (this process keeps its share meanwhile)."""

    def __init__(self, worker: TrialWorker) -> None:
        import torch

        parallel = worker.recipe.search.parallel
        job = worker.output_dir / "trial-worker.json"
        job.parent.mkdir(parents=True, exist_ok=True)
        job.write_text(worker.model_dump_json(), "utf-8")
        threads = str(max(1, (os.cpu_count() or 1) // parallel))
        # The GPUs this process may use, in its numbering: helper n takes the n-th (this process the first).
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(torch.cuda.device_count()))))
        self.processes = []
        for number in range(1, parallel):
            env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
            if torch.cuda.is_available():
                env["CUDA_VISIBLE_DEVICES"] = visible.split(",")[number]
            command = [sys.executable, "-m", "skillops.training.tuning_workers", str(job)]
            self.processes.append(subprocess.Popen(command, env=env))
        torch.set_num_threads(max(1, torch.get_num_threads() // parallel))  # `tune` gives them back

    def wait(self) -> None:
        for process in self.processes:
            if process.wait() != 0:  # its trial, if any, is failed by its heartbeat and run again
                logger.warning("Tuning worker %d ended with exit code %d", process.pid, process.returncode)

    def stop(self) -> None:
        for process in self.processes:
            process.kill()


def join_study(ticket: StudyTicket, workdir: Path, name: str) -> int:
    """Run trials of the ticket's study here, as a worker of the pool, until the study has
    n_trials finished; returns how many trials this worker finished. The prepared data are the
    pipeline's (from its MLflow run); the storage is the one this machine is configured with."""
    from skillops.tracking import registry

    recipe = ticket.recipe
    url = storage_url(recipe.search, None)
    if url is None or safe_uri(url) != ticket.storage:
        raise RecipeError(
            f"The study {ticket.study_name} is in {ticket.storage}, but this worker's storage is "
            f"{safe_uri(url) if url else 'not set'}: set SKILLOPS_OPTUNA_STORAGE (and PGPASSFILE for its password) "
            "in this worker's environment to the team's Optuna database."
        )
    data_dir = download_artifacts(ticket.parent_run_id, DATA_ARTIFACT, workdir)
    if ticket.init_model:  # the champion, as the pipeline's trials start from it
        start = registry.fetch(ticket.init_model, workdir / "init-from-champion")
        recipe = recipe.model_copy(update={"base_model": str(start)})
    worker = TrialWorker(
        recipe=recipe,
        data_dir=data_dir,
        experiment=ticket.experiment,
        parent_run_id=ticket.parent_run_id,
        output_dir=workdir / "tuning",
        study_name=ticket.study_name,
        attempt_dir=None,
        init_model=ticket.init_model,
        name=name,
    )
    study = worker.study()
    worker.run_trials(study, worker.objective())
    mine = [t for t in finished_trials(study) if t.user_attrs.get("worker") == name]
    logger.info("%s finished %d trials of study %s", name, len(mine), ticket.study_name)
    return len(mine)


if __name__ == "__main__":  # a local helper worker: python -m skillops.training.tuning_workers <job.json>
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s [tuning worker] %(message)s")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    helper = TrialWorker.model_validate_json(Path(sys.argv[1]).read_text("utf-8"))
    helper.run_trials(helper.study(), helper.objective())
