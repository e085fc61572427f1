"""MLflow model registry: register candidates, find the champion, move its alias under a lock.

The lock: MLflow aliases are last-writer-wins, with no compare-and-set, so promoters must take
turns. On one machine (a sqlite store) a file lock next to the store does it. With a tracking
server, promoters on other machines never see that file: the caller must hold a lock that every
machine takes (the flow holds its Prefect server's global concurrency limit) and say so, or the
promotion is refused. A lease written into MLflow tags was the other design, and was rejected:
with last-writer-wins tags it holds only if every write lands within a known time, which a busy
tracking server does not promise.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from skillops.errors import ModelNotFoundError, PromotionError, RollbackError
from skillops.promotion import Decision
from skillops.tracking import client, store_dir, tracking_uri, uses_server
from skillops.uris import safe_uri

logger = logging.getLogger(__name__)

CHAMPION = "champion"
MOVE_TAG_PREFIX = "skillops.champion_move."  # one tag per alias move, on both versions
MAX_RECHECKS = 5  # judgements of one candidate while the champion keeps moving, before giving up

# Written explicitly: MLflow's inference of requirements imports and inspects the model (slow)
# and cannot reach PyPI offline anyway.
SERVING_REQUIREMENTS = ["sentence-transformers>=6.2,<7", "torch", "transformers>=5,<6"]


def register(model, run_id: str, name: str, tags: dict[str, Any], description: str = "") -> str:
    """Log the model (a loaded SentenceTransformer, or its folder) to `run_id` and register it;
    returns the new version number."""
    if isinstance(model, str | Path):
        from skillops.modeling import load_model

        model = load_model(str(model))
    with mlflow.start_run(run_id=run_id):
        info = mlflow.sentence_transformers.log_model(
            model,
            name="model",
            registered_model_name=name,
            pip_requirements=SERVING_REQUIREMENTS,
            signature=serving_signature(),
        )
    mlflow_client = client()
    version = str(info.registered_model_version)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, key, str(value))
    if description:
        mlflow_client.update_model_version(name, version, description=description)
    return version


def fetch(uri: str, folder: Path) -> Path:
    """A registered model saved as a plain model folder (for training to start from)."""
    load(uri).save(str(folder))
    return folder


def describe(name: str, version: str, description: str) -> None:
    """The version's description in the MLflow UI (markdown)."""
    client().update_model_version(name, version, description=description)


def serving_signature():
    """Texts in, embeddings out, and `prompt_name` as a request parameter: MLflow's pyfunc passes
    params to `encode`, so `{"inputs": [...], "params": {"prompt_name": "query"}}` applies the
    model's saved query prompt at serve time. (The flavor's default signature has no params, and
    MLflow drops params a signature does not declare.)"""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([ColSpec("string")]),
        outputs=Schema([TensorSpec(np.dtype("float32"), [-1, -1])]),
        params=ParamSchema([ParamSpec("prompt_name", "string", None)]),
    )


def champion_version(name: str) -> str | None:
    try:
        return str(client().get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None  # no registered model of that name, or no champion yet


def model_uri(name: str, version: str) -> str:
    return f"models:/{name}/{version}"


def load(uri: str):
    """A registered model as a SentenceTransformer, from a URI like models:/<name>@champion."""
    client()  # resolve models:/ against the skillops store, not MLflow's default
    try:
        return mlflow.sentence_transformers.load_model(uri)
    except MlflowException as error:
        raise ModelNotFoundError(
            f"{uri}: not in the registry of {safe_uri(tracking_uri())} ({error.message.splitlines()[0]}). "
            "Run `skillops models` to list the versions and aliases there, or set MLFLOW_TRACKING_URI to the store "
            "that holds it."
        ) from None


def require_shared_lock(held: str | None) -> None:
    """Refuse to promote into a tracking server's registry without a lock every machine takes
    (`held` names it); a store on this machine needs none. Called before training, and again
    before the alias moves."""
    if uses_server() and not held:
        raise PromotionError(
            f"The MLflow store is the tracking server {safe_uri(tracking_uri())}, which other machines share, but "
            "this run has no Prefect server that they share too (it started Prefect's temporary one), so nothing "
            "keeps two machines from moving the champion at once. Set PREFECT_API_URL to the team's Prefect server "
            "(`make stack-up TEAM=1` prints it) and run again, or use a store of your own (unset MLFLOW_TRACKING_URI)."
        )


@contextlib.contextmanager
def _file_lock(name: str) -> Iterator[None]:
    """One promoter at a time per model among the processes of this machine."""
    lock_dir = store_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def promote_if_better(
    name: str, version: str, judge: Callable[[str | None], Decision], shared_lock: str | None = None
) -> Decision:
    """Decide and, if the decision says so, move the alias; the decision is recorded on the version.

    `shared_lock` names a lock the caller holds that promoters on every machine take; without it,
    a file lock on this machine is taken, which only a store on this machine may rely on.

    `judge(champion_version)` compares the candidate with that champion (None: no champion yet)
    on the run's frozen test set. Under the lock, the champion is read, judged, and read again
    just before the alias moves: if it changed meanwhile (a promoter on another machine, a
    rollback), the candidate is judged again against the new champion. So a run can never move
    the alias past a champion it did not beat.
    """
    require_shared_lock(shared_lock)
    mlflow_client = client()
    with contextlib.nullcontext() if shared_lock else _file_lock(name):
        for _ in range(MAX_RECHECKS):
            current = champion_version(name)
            decision = judge(current)
            if champion_version(name) == current:
                break
        else:
            raise PromotionError(
                f"The champion of {name!r} moved {MAX_RECHECKS} times while version {version} was being "
                "judged; something else is moving the alias. Run again once it has stopped."
            )
        if decision.promote:
            mlflow_client.set_registered_model_alias(name, CHAMPION, version)
            _record_move(name, current, version, "promotion", decision.reason, decision)
        record = {
            "skillops.decision": "promoted" if decision.promote else "not promoted",
            "skillops.decision_reason": decision.reason,
            "skillops.decision_time": datetime.now(UTC).isoformat(timespec="seconds"),
            "skillops.previous_champion": current or "none",
            "skillops.decision_numbers": json.dumps(_numbers(decision)),
        }
        for key, value in record.items():
            mlflow_client.set_model_version_tag(name, version, key, value)
    logger.info("Version %s of %s: %s", version, name, decision.reason)
    return decision


def _numbers(decision: Decision) -> dict[str, Any]:
    return {
        "metric": decision.metric,
        "candidate": round(decision.candidate, 6),
        "reference": round(decision.reference, 6),
        "reference_name": decision.reference_name,
        "delta": round(decision.delta, 6),
        "p_value": None if decision.p_value is None else round(decision.p_value, 6),
    }


def _record_move(name: str, old: str | None, new: str, kind: str, why: str, decision: Decision | None = None) -> dict:
    """One alias move, on both versions it concerns: from, to, when, why and the decision's numbers."""
    now = datetime.now(UTC)
    move = {
        "from": old,
        "to": new,
        "when": now.isoformat(timespec="seconds"),
        "kind": kind,
        "why": why,
        **({"numbers": _numbers(decision)} if decision else {}),
    }
    value = json.dumps(move)
    key = MOVE_TAG_PREFIX + now.strftime("%Y%m%dT%H%M%S%fZ")  # sorts by time; no ':' (not allowed in keys)
    for touched in {new, old} - {None}:
        client().set_model_version_tag(name, touched, key, value)
    return move


TUNED_PARAMS = {"learning_rate": float, "batch_size": int, "warmup_ratio": float}


def trained_with(name: str, version: str) -> dict[str, Any]:
    """The tuned parameters version `version` was trained with: its run's search result
    (`best.*`), else the recipe's (`training.*`); those its run does not record are left out."""
    mlflow_client = client()
    params = mlflow_client.get_run(mlflow_client.get_model_version(name, version).run_id).data.params
    found = {key: params.get(f"best.{key}", params.get(f"training.{key}")) for key in TUNED_PARAMS}
    return {key: TUNED_PARAMS[key](value) for key, value in found.items() if value is not None}


def history(name: str) -> list[dict]:
    """Every recorded move of the champion alias of `name`, oldest first."""
    moves = {}
    for version in client().search_model_versions(f"name = '{name}'"):
        for key, value in version.tags.items():
            if key.startswith(MOVE_TAG_PREFIX):
                moves[key] = json.loads(value)
    return [moves[key] for key in sorted(moves)]


def rollback(name: str, reason: str) -> tuple[str, str]:
    """Move `champion` back to the version it replaced; returns (from_version, to_version).

    With a tracking server the file lock excludes only this machine's promoters; a promotion
    elsewhere re-reads the champion just before it moves the alias, so it judges again against
    the version rolled back to, unless the two writes fall in the same instant."""
    mlflow_client = client()
    with _file_lock(name):
        current = champion_version(name)
        if current is None:
            raise RollbackError(f"{name!r} has no champion, so there is nothing to roll back.")
        previous = mlflow_client.get_model_version(name, current).tags.get("skillops.previous_champion", "none")
        if previous == "none":
            raise RollbackError(
                f"Version {current} of {name!r} was its first champion; there is no earlier one to "
                "roll back to. Promote another version instead."
            )
        mlflow_client.set_registered_model_alias(name, CHAMPION, previous)
        move = _record_move(name, current, previous, "rollback", reason)
        mlflow_client.set_model_version_tag(
            name, previous, "skillops.rollback", f"{move['when']}: champion moved back from version {current}: {reason}"
        )
        mlflow_client.set_model_version_tag(
            name, current, "skillops.rolled_back", f"{move['when']}: replaced by version {previous}: {reason}"
        )
    logger.info("Champion of %s moved back from version %s to %s", name, current, previous)
    return current, previous
