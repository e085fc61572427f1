"""MLflow model registry: register candidates, find the champion, move its alias under a lock."""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from skillops.config import PromotionPolicy
from skillops.promotion import Decision, decide
from skillops.tracking import client, store_dir

logger = logging.getLogger(__name__)

CHAMPION = "champion"

# Written explicitly: MLflow's inference of requirements imports and inspects the model (slow)
# and cannot reach PyPI offline anyway.
SERVING_REQUIREMENTS = ["sentence-transformers>=6.2,<7", "torch", "transformers>=5,<6"]


def register(
    model_dir: Path, run_id: str, name: str, tags: dict[str, Any], description: str = ""
) -> str:
    """Log the model to `run_id` and register it; returns the new version number."""
    from skillops.modeling import load_model

    model = load_model(str(model_dir))
    with mlflow.start_run(run_id=run_id):
        info = mlflow.sentence_transformers.log_model(
            model, name="model", registered_model_name=name, pip_requirements=SERVING_REQUIREMENTS
        )
    mlflow_client = client()
    version = str(info.registered_model_version)
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(name, version, key, str(value))
    if description:
        mlflow_client.update_model_version(name, version, description=description)
    return version


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
    return mlflow.sentence_transformers.load_model(uri)


@contextlib.contextmanager
def promotion_lock(name: str) -> Iterator[None]:
    """One promoter at a time per model: MLflow aliases are last-writer-wins, with no compare-and-set."""
    lock_dir = store_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def promote_if_better(
    name: str,
    version: str,
    metric: str,
    candidate: dict[str, float],
    base: dict[str, float],
    champion: dict[str, float] | None,
    champion_seen: str | None,
    policy: PromotionPolicy,
) -> Decision:
    """Decide and, if the decision says so, move the alias; the decision is recorded on the version.

    `champion` holds the scores of version `champion_seen`, measured in this run on the same
    test set. If another run moved the alias since, those scores no longer describe the champion,
    so the candidate is refused rather than compared against a stale number.
    """
    mlflow_client = client()
    with promotion_lock(name):
        current = champion_version(name)
        if current != champion_seen:
            decision = Decision(
                promote=False,
                reason=f"the champion moved from version {champion_seen} to {current} while this "
                "run was evaluating; run again to compare against the new champion",
                metric=metric,
                candidate=candidate[metric],
                reference=float("nan"),
                reference_name="champion",
            )
        else:
            decision = decide(candidate, champion, base, metric, policy)
        if decision.promote:
            mlflow_client.set_registered_model_alias(name, CHAMPION, version)
        record = {
            "skillops.decision": "promoted" if decision.promote else "not promoted",
            "skillops.decision_reason": decision.reason,
            "skillops.decision_time": datetime.now(UTC).isoformat(timespec="seconds"),
            "skillops.previous_champion": current or "none",
        }
        for key, value in record.items():
            mlflow_client.set_model_version_tag(name, version, key, value)
    logger.info("Version %s of %s: %s", version, name, decision.reason)
    return decision


class RollbackError(RuntimeError):
    """The champion cannot be moved back; the message says why."""


def rollback(name: str, reason: str) -> tuple[str, str]:
    """Move `champion` back to the version it replaced; returns (from_version, to_version)."""
    mlflow_client = client()
    with promotion_lock(name):
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
        when = datetime.now(UTC).isoformat(timespec="seconds")
        mlflow_client.set_model_version_tag(
            name, previous, "skillops.rollback", f"{when}: champion moved back from version {current}: {reason}"
        )
        mlflow_client.set_model_version_tag(
            name, current, "skillops.rolled_back", f"{when}: replaced by version {previous}: {reason}"
        )
    logger.info("Champion of %s moved back from version %s to %s", name, current, previous)
    return current, previous
