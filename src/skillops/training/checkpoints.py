"""What an attempt needs to resume, kept in the run's artifact store as well as on the worker, so
that a run started again on any machine continues where the last one stopped.

An attempt (one data, recipe and code: `Fingerprints.attempt`) writes into its folder on the
worker: the tuning result (`best_params.json`), each finished training round (`done.json`, the
model, its log) and the trainer's checkpoints. `Mirror` copies them under `attempt/` of the
pipeline's MLflow run while training goes on: a background thread uploads each checkpoint the
trainer finished, from the copy of it the trainer hard-linked into staged/ when it saved it (the
trainer may delete its own older checkpoints at any moment; the staged copies are the mirror's),
writes its marker last, and deletes the one before, so the store holds the newest complete
checkpoint. `restore`
brings an earlier run's `attempt/` of the same attempt into a new worker's empty folder, from any
machine that shares the store.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

from skillops.settings import settings
from skillops.tracking import runs
from skillops.training.trainer import CHECKPOINT_COMPLETE as COMPLETE
from skillops.training.trainer import STAGED, staged_folders

logger = logging.getLogger(__name__)

ARTIFACT_PATH = "attempt"  # in the pipeline's MLflow run
ATTEMPT_TAG = "skillops.attempt"  # on every pipeline run: the attempt it belongs to


class Mirror:
    """Uploads, in a thread of its own, what the attempt's folder gains while the block runs:
    complete checkpoints of `train/` as they appear, and files handed to `keep` at once."""

    def __init__(self, run_id: str, attempt_dir: Path) -> None:
        self.run_id, self.attempt_dir = run_id, attempt_dir
        self.uploaded: dict[str, str] = {}  # checkpoint folder (relative) -> artifact path
        self.seconds: list[float] = []  # how long each checkpoint upload took
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="checkpoint-mirror", daemon=True)

    def __enter__(self) -> Mirror:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        # Training is over (finished or failed): what it saved last matters more than waiting.
        self._stop.set()
        self._thread.join(timeout=60)
        for staged in staged_folders(self.attempt_dir / "train"):
            shutil.rmtree(staged, ignore_errors=True)

    def keep(self, path: Path) -> None:
        """Upload a file or folder of the attempt now (a finished round, the tuning result); the
        staged checkpoints in it are the mirror thread's, which may be deleting them."""
        relative = path.relative_to(self.attempt_dir)
        where = f"{ARTIFACT_PATH}/{relative.parent}".rstrip("/.")
        if not path.is_dir():
            runs.log_artifact(self.run_id, path, where)
            return
        for item in path.iterdir():
            if item.name == STAGED:
                continue
            if item.is_dir():
                runs.log_artifacts(self.run_id, item, f"{where}/{path.name}/{item.name}")
            else:
                runs.log_artifact(self.run_id, item, f"{where}/{path.name}")

    def _watch(self) -> None:
        while not self._stop.wait(settings().checkpoint_poll_seconds):
            try:
                self._upload_new()
            except Exception as error:  # a server away: tried again at the next poll
                logger.warning("Checkpoint upload failed (%s); trying again", error)

    def _upload_new(self) -> None:
        """The newest staged checkpoint of each training folder, uploaded under the path the
        trainer gave it (train/.../checkpoints/checkpoint-N); staged copies it supersedes are
        dropped unsent. The staged folders are the mirror's own: the trainer never deletes them."""
        newest: dict[Path, Path] = {}
        for staged in (
            checkpoint
            for folder in staged_folders(self.attempt_dir / "train")
            for checkpoint in folder.glob("checkpoint-*")
        ):
            if staged.name.rsplit("-", 1)[1].isdigit() and (staged / COMPLETE).is_file():  # not one being staged
                current = newest.get(staged.parent)
                step = int(staged.name.rsplit("-", 1)[1])
                if current is None or step > int(current.name.rsplit("-", 1)[1]):
                    newest[staged.parent] = staged
        for folder, staged in newest.items():
            for superseded in folder.glob("checkpoint-*"):
                if superseded != staged and superseded.suffix != ".partial":
                    shutil.rmtree(superseded, ignore_errors=True)
            if self._stop.is_set():
                return
            relative = str((folder.parent / "checkpoints" / staged.name).relative_to(self.attempt_dir))
            started = time.monotonic()
            target = f"{ARTIFACT_PATH}/{relative}"
            marker = self.attempt_dir / ".upload" / COMPLETE
            marker.parent.mkdir(exist_ok=True)
            (staged / COMPLETE).replace(marker)
            runs.log_artifacts(self.run_id, staged, target)
            runs.log_artifact(self.run_id, marker, target)  # last: readers trust only complete uploads
            shutil.rmtree(staged, ignore_errors=True)
            self.seconds.append(time.monotonic() - started)
            logger.info("Checkpoint %s kept in the run's artifact store (%.1f s)", relative, self.seconds[-1])
            for older, path in list(self.uploaded.items()):
                if Path(older).parent == Path(relative).parent:  # the same round's checkpoints
                    _delete(self.run_id, path)
                    del self.uploaded[older]
            self.uploaded[relative] = target


def _delete(run_id: str, path: str) -> None:
    """Remove an older checkpoint from the store, where the store can (a local folder, the proxy)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        get_artifact_repository(runs.client().get_run(run_id).info.artifact_uri).delete_artifacts(path)
    except Exception as error:  # S3 without delete rights, an old server: the store keeps both
        logger.info("Older checkpoint %s stays in the store (%s)", path, error)


def restore(run_id: str, experiment: str, attempt: str, attempt_dir: Path) -> str | None:
    """When this machine has nothing of the attempt, bring here the `attempt/` of its newest earlier
    run that did not finish (killed, crashed, failed; its checkpoints only where complete); returns
    that run, or None. A finished attempt is over: a forced retrain of it starts afresh."""
    if attempt_dir.exists() and any(attempt_dir.iterdir()):
        return None  # this machine ran the attempt before: its own files are newer or the same
    client = runs.client()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    earlier = client.search_runs(
        [found.experiment_id],
        f"tags.`{ATTEMPT_TAG}` = '{attempt}' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    for run in earlier:
        if run.info.run_id == run_id or not client.list_artifacts(run.info.run_id, ARTIFACT_PATH):
            continue
        attempt_dir.mkdir(parents=True, exist_ok=True)
        downloaded = runs.download_artifacts(run.info.run_id, ARTIFACT_PATH, attempt_dir.parent / ".restore")
        for item in downloaded.iterdir():
            shutil.move(str(item), attempt_dir / item.name)
        shutil.rmtree(attempt_dir.parent / ".restore", ignore_errors=True)
        # A checkpoint whose marker never arrived was cut short: the trainer must not resume from it.
        for checkpoint in attempt_dir.glob("train/**/checkpoints/checkpoint-*"):
            if not (checkpoint / COMPLETE).is_file():
                shutil.rmtree(checkpoint)
        logger.info(
            "Restored attempt %s from run %s (another machine's, or an earlier start)", attempt, run.info.run_id
        )
        return run.info.run_id
    return None
