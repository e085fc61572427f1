"""Per-query scores that are worth keeping, in one place: a model's weights never change, so
neither do its scores on the same frozen eval snapshot.

- A registered version's scores are artifacts of the run that registered it (`score-cache/`),
  where a run on any machine finds them; `mlruns/score-cache/` is a local read-through copy.
- The base model's scores are kept on this machine (`mlruns/base-scores/`), by the content of its
  files and the eval snapshot: a scheduled retrain on unchanged eval sets does not encode them again.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from requests import HTTPError

from skillops.inputs.preparation import fingerprint_files
from skillops.judging.evaluation import QueryScores
from skillops.tracking import registry
from skillops.tracking.runs import client, store_dir
from skillops.training.modeling import resolve_model

logger = logging.getLogger(__name__)

SCORE_CACHE = "score-cache"  # in the run that registered a version, and the local folder that mirrors it


def _score_cache_file(run_id: str, eval_fingerprint: str, eval_set: str) -> Path:
    """The local copy of the per-query scores, on one frozen eval set, of the model a run
    registered: its weights never change, so neither do its scores on the same snapshot. (By run,
    so a candidate and its served copy share one entry.)"""
    stem = eval_fingerprint if eval_set == "test" else f"{eval_fingerprint}.{eval_set}"
    return store_dir() / SCORE_CACHE / run_id / f"{stem}.json"


def save_scores(run_id: str, eval_fingerprint: str, scores: dict[str, QueryScores]) -> None:
    """`scores`: eval set ("test", "golden-<name>") -> per-query scores of the model `run_id`
    registered. Kept locally as a read-through copy, and as artifacts of that run, where a run on
    any machine finds them."""
    for eval_set, values in scores.items():
        path = _score_cache_file(run_id, eval_fingerprint, eval_set)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_whole(path, values)
    for eval_set in scores:
        client().log_artifact(run_id, str(_score_cache_file(run_id, eval_fingerprint, eval_set)), SCORE_CACHE)


def _fetch_shared_copy(path: Path, run_id: str) -> bool:
    """Download the scores at `path` from the version's run; False when it never saved them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as download:
        try:
            downloaded = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=f"{SCORE_CACHE}/{path.name}", dst_path=download
            )
        except (MlflowException, OSError):
            return False  # never scored on this snapshot
        Path(downloaded).replace(path)
    return True


def version_scores(
    name: str,
    version: str,
    eval_fingerprint: str,
    eval_sets: list[str],
    score: Callable[[Any, list[str]], dict[str, QueryScores]],
) -> tuple[dict[str, QueryScores], str]:
    """A registered version's per-query scores on the eval sets of one snapshot, and where they
    came from: the cache (local, else the shared store) for the sets that version was already
    scored on, `score(model, sets)` (the model loaded once) for the others."""
    registered = client().get_model_version(name, version)
    files = {eval_set: _score_cache_file(registered.run_id, eval_fingerprint, eval_set) for eval_set in eval_sets}
    absent = [eval_set for eval_set, path in files.items() if not path.is_file()]
    shared = [eval_set for eval_set in absent if _fetch_shared_copy(files[eval_set], registered.run_id)]
    missing = [eval_set for eval_set in absent if eval_set not in shared]
    scores = {s: QueryScores.model_validate_json(files[s].read_text("utf-8")) for s in eval_sets if s not in missing}
    if not missing:
        where = " (from the shared store)" if shared else ""
        return scores, f"cached scores of version {version} on eval snapshot {eval_fingerprint}{where}"
    scored_on = registered.tags.get("skillops.eval_fingerprint", "unknown")
    fresh = score(registry.load(registry.model_uri(name, version), as_served=True), missing)
    try:
        save_scores(registered.run_id, eval_fingerprint, fresh)
    except (MlflowException, HTTPError) as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if getattr(error, "error_code", None) != "PERMISSION_DENIED" and status != 403:
            raise
        # On a team's stack a served version's run is the promotion authority's, which no worker
        # writes: this machine keeps its copy (written above), the authority its own scores.
        logger.info("Scores of version %s kept on this machine only (its run is not this account's)", version)
    return (
        scores | fresh,
        f"version {version} re-scored on eval snapshot {eval_fingerprint} ({', '.join(missing)}; "
        f"it was registered with scores on {scored_on})",
    )


BASE_SCORES = "base-scores"


def base_scores(
    base_model: str,
    max_seq_length: int,
    eval_fingerprint: str,
    eval_sets: list[str],
    score: Callable[[list[str]], dict[str, QueryScores]],
) -> tuple[dict[str, QueryScores], str | None]:
    """The base model's per-query scores on the eval sets of one snapshot, and a note when they
    came from this machine's cache (None when `score(sets)` encoded them just now). A local base
    model whose files change gets new scores."""
    folder = Path(resolve_model(base_model))
    weights = fingerprint_files([path for path in folder.rglob("*") if path.is_file()], extra=str(max_seq_length))
    cache = store_dir() / BASE_SCORES / f"{weights}-{eval_fingerprint}"
    files = {eval_set: cache / f"{eval_set}.json" for eval_set in eval_sets}
    if all(path.is_file() for path in files.values()):
        note = f"cached scores of the base model (files {weights}) on eval snapshot {eval_fingerprint}"
        return {
            eval_set: QueryScores.model_validate_json(path.read_text("utf-8")) for eval_set, path in files.items()
        }, note
    scores = score(eval_sets)
    cache.mkdir(parents=True, exist_ok=True)
    for eval_set, values in scores.items():
        _write_whole(files[eval_set], values)
    return scores, None


def _write_whole(path: Path, values: QueryScores) -> None:
    """Whole files only, for a reader at the same time (concurrent runs may write the same entry)."""
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(values.model_dump_json(), "utf-8")
    partial.replace(path)
