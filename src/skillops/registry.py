"""MLflow model registry: register candidates, find the champion, move its alias under a lock.

Two registered models per recipe. Every candidate is a version of `<name>-candidates`; the gate
copies the one it promotes into `<name>`, the served model, and moves `<name>@champion` there. So
the served model holds nothing the gate did not pass: whoever may move its alias (a maintainer's
rollback) can only choose among versions that once beat the champion before them. (In MLflow's
open-source server, creating a version and moving an alias both need EDIT on the registered
model; one model could not tell "may register" from "may serve".) The policy candidates are
judged by is a tag of the served model (`model_policy`), and every move records the account
that made it.

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
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import yaml
from mlflow.entities import LoggedModelStatus
from mlflow.exceptions import MlflowException

from skillops.errors import ModelNotFoundError, PromotionError, RollbackError
from skillops.promotion import Decision, ModelPolicy
from skillops.tracking import account, client, store_dir, tracking_uri, uses_server
from skillops.uris import safe_uri

logger = logging.getLogger(__name__)

CHAMPION = "champion"
MOVE_TAG_PREFIX = "skillops.champion_move."  # one tag per alias move, on both served versions
POLICY_TAG = "skillops.policy"  # on the served model: the ModelPolicy its candidates are judged by
POLICY_CHANGE_PREFIX = "skillops.policy_change."  # one tag per change of it
CANDIDATE_TAG = "skillops.candidate_version"  # on a served version: the candidate it is a copy of
SERVED_TAG = "skillops.served_as"  # on a promoted candidate: the served version it became
MAX_RECHECKS = 5  # judgements of one candidate while the champion keeps moving, before giving up

# Written explicitly: MLflow's inference of requirements imports and inspects the model (slow)
# and cannot reach PyPI offline anyway.
SERVING_REQUIREMENTS = ["sentence-transformers>=6.2,<7", "torch", "transformers>=5,<6", "onnxruntime>=1.20"]


def candidates(name: str) -> str:
    """The registered model that holds every candidate of the served model `name`."""
    return f"{name}-candidates"


def register(
    model_dir: Path, run_id: str, name: str, tags: dict[str, Any], description: str = "", variant: str = "fp32"
) -> str:
    """Log the model folder (with its ONNX variants, if built) to `run_id`, to be served as
    `variant`, and register it as a candidate of `name`; returns its version of `<name>-candidates`.

    Safe to run again for the same run (a retry after a lost answer): a candidate this run already
    registered is returned as it is, and a model it already logged is registered without logging
    it a second time."""
    mlflow_client = client()
    registered = _candidate_of_run(name, run_id)
    if registered is not None:
        logger.info("Run %s already registered candidate version %s of %s", run_id, registered, name)
        return registered
    model_uri = _logged_model(run_id) or _log_model(Path(model_dir), run_id, variant)
    all_tags = {
        **{key: str(value) for key, value in tags.items()},
        "skillops.registered_by": account(),
        "skillops.served_variant": variant,
    }
    version = str(mlflow.register_model(model_uri, candidates(name), tags=all_tags).version)
    if description:
        mlflow_client.update_model_version(candidates(name), version, description=description)
    return version


def _candidate_of_run(name: str, run_id: str) -> str | None:
    try:
        found = client().search_model_versions(f"name = '{candidates(name)}' and run_id = '{run_id}'")
    except MlflowException:
        return None  # no candidates model yet
    return str(min(int(v.version) for v in found)) if found else None


def _logged_model(run_id: str) -> str | None:
    """The model this run logged completely before (None if it has none)."""
    mlflow_client = client()
    run = mlflow_client.get_run(run_id)
    for logged in mlflow_client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
    ):
        if logged.name == "model" and logged.status == LoggedModelStatus.READY:
            return logged.model_uri
    return None


def _log_model(model_dir: Path, run_id: str, variant: str) -> str:
    """The model as MLflow's pyfunc `skillops.serving.EmbeddingModel`: `mlflow models serve` and
    `mlflow.pyfunc.load_model` encode with `variant` (prompts applied), from the model folder."""
    import warnings

    from skillops.serving import EmbeddingModel

    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        # The signature is given (with the prompt_name parameter): MLflow's hint about inferring one
        # from an input example concerns models without it.
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=EmbeddingModel(),
            artifacts={"model": str(model_dir)},
            model_config={"variant": variant},
            pip_requirements=SERVING_REQUIREMENTS,
            signature=serving_signature(),
        )
    return info.model_uri


def fetch(uri: str, folder: Path) -> Path:
    """A registered model saved as a plain model folder (for training to start from)."""
    load(uri).save(str(folder))
    return folder


def describe(name: str, candidate: str, description: str, served: str | None = None) -> None:
    """The description in the MLflow UI (markdown) of a candidate, and of its served copy."""
    client().update_model_version(candidates(name), candidate, description=description)
    if served:
        client().update_model_version(name, served, description=description)


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


def load(uri: str, as_served: bool = False):
    """A registered model as a SentenceTransformer, from a URI like models:/<name>@champion: its
    fp32 weights, or with `as_served` the variant it is served as (what the gate scores)."""
    from skillops import serving

    client()  # resolve models:/ against the skillops store, not MLflow's default
    with tempfile.TemporaryDirectory(prefix="skillops-model-") as folder:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder))
        except MlflowException as error:
            raise ModelNotFoundError(
                f"{uri}: not in the registry of {safe_uri(tracking_uri())} ({error.message.splitlines()[0]}). "
                "Run `skillops models` to list the versions and aliases there, or set MLFLOW_TRACKING_URI to the "
                "store that holds it."
            ) from None
        described = yaml.safe_load((local / "MLmodel").read_text("utf-8"))
        if "sentence_transformers" in described["flavors"]:  # logged by skillops before the pyfunc
            return mlflow.sentence_transformers.load_model(str(local))
        variant = described["flavors"]["python_function"].get("config", {}).get("variant", "fp32")
        return serving.load(local / "artifacts" / "model", variant if as_served else "fp32")


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
    name: str, candidate: str, judge: Callable[[str | None], Decision], shared_lock: str | None = None
) -> Decision:
    """Decide on candidate version `candidate` of `<name>-candidates` and, if the decision says so,
    copy it into the served model `name` and move `name@champion` to the copy. The decision is
    recorded on the candidate (and so on its copy); the returned decision names the served version.

    `shared_lock` names a lock the caller holds that promoters on every machine take; without it,
    a file lock on this machine is taken, which only a store on this machine may rely on.

    `judge(champion_version)` compares the candidate with that champion (None: no champion yet)
    on the run's frozen test set. Under the lock, the champion is read, judged, and read again
    just before the alias moves: if it changed meanwhile (a promoter on another machine, a
    rollback), the candidate is judged again against the new champion. So a run can never move
    the alias past a champion it did not beat. A retry after a crash between the copy and the
    alias move finds the copy and does not make a second one.
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
                f"The champion of {name!r} moved {MAX_RECHECKS} times while candidate {candidate} was being "
                "judged; something else is moving the alias. Run again once it has stopped."
            )
        record = {
            "skillops.decision": "promoted" if decision.promote else "not promoted",
            "skillops.decision_reason": decision.reason,
            "skillops.decision_time": datetime.now(UTC).isoformat(timespec="seconds"),
            "skillops.decision_by": account(),
            "skillops.previous_champion": current or "none",
            "skillops.decision_numbers": json.dumps(_numbers(decision)),
        }
        for key, value in record.items():
            mlflow_client.set_model_version_tag(candidates(name), candidate, key, value)
        if decision.promote:
            served = _served_copy(name, candidate)
            for key, value in record.items():  # a copy made by an earlier attempt has that attempt's
                mlflow_client.set_model_version_tag(name, served, key, value)
            mlflow_client.set_registered_model_alias(name, CHAMPION, served)
            _record_move(name, current, served, "promotion", decision.reason, decision, candidate)
            mlflow_client.set_model_version_tag(candidates(name), candidate, SERVED_TAG, served)
            decision = decision.model_copy(update={"served_version": served})
    logger.info("Candidate %s of %s: %s", candidate, name, decision.reason)
    return decision


def _served_copy(name: str, candidate: str) -> str:
    """The served model's version that is a copy of this candidate, made now unless it exists."""
    with contextlib.suppress(MlflowException):  # no served model yet
        for version in client().search_model_versions(f"name = '{name}'"):
            if version.tags.get(CANDIDATE_TAG) == candidate:
                return str(version.version)
    copy = client().copy_model_version(model_uri(candidates(name), candidate), name)
    client().set_model_version_tag(name, str(copy.version), CANDIDATE_TAG, candidate)
    return str(copy.version)


def _numbers(decision: Decision) -> dict[str, Any]:
    return {
        "metric": decision.metric,
        "candidate": round(decision.candidate, 6),
        "reference": round(decision.reference, 6),
        "reference_name": decision.reference_name,
        "delta": round(decision.delta, 6),
        "p_value": None if decision.p_value is None else round(decision.p_value, 6),
    }


def _record_move(
    name: str,
    old: str | None,
    new: str,
    kind: str,
    why: str,
    decision: Decision | None = None,
    candidate: str | None = None,
) -> dict:
    """One alias move, on both served versions it concerns: from, to, when, who, why, and for a
    promotion the candidate it came from and the decision's numbers."""
    now = datetime.now(UTC)
    move = {
        "from": old,
        "to": new,
        "when": now.isoformat(timespec="seconds"),
        "kind": kind,
        "by": account(),
        "why": why,
        **({"candidate": candidate} if candidate else {}),
        **({"numbers": _numbers(decision)} if decision else {}),
    }
    value = json.dumps(move)
    key = MOVE_TAG_PREFIX + now.strftime("%Y%m%dT%H%M%S%fZ")  # sorts by time; no ':' (not allowed in keys)
    for touched in {new, old} - {None}:
        client().set_model_version_tag(name, touched, key, value)
    return move


def model_policy(name: str) -> ModelPolicy | None:
    """The policy the served model `name` judges its candidates by (None: no model or no policy yet)."""
    try:
        tags = client().get_registered_model(name).tags
    except MlflowException:
        return None
    return ModelPolicy.model_validate_json(tags[POLICY_TAG]) if POLICY_TAG in tags else None


def set_model_policy(name: str, policy: ModelPolicy, reason: str) -> dict:
    """Store `policy` with the served model (created if it is new) and record the change: who,
    when, from, to and why. Returns the change."""
    mlflow_client = client()
    with contextlib.suppress(MlflowException):  # it exists already
        mlflow_client.create_registered_model(name, description=f"The served model: candidates in {candidates(name)}")
    old = model_policy(name)
    now = datetime.now(UTC)
    change = {
        "when": now.isoformat(timespec="seconds"),
        "by": account(),
        "why": reason,
        "from": None if old is None else old.model_dump(mode="json"),
        "to": policy.model_dump(mode="json"),
    }
    mlflow_client.set_registered_model_tag(name, POLICY_TAG, policy.model_dump_json())
    mlflow_client.set_registered_model_tag(
        name, POLICY_CHANGE_PREFIX + now.strftime("%Y%m%dT%H%M%S%fZ"), json.dumps(change)
    )
    return change


def policy_changes(name: str) -> list[dict]:
    """Every recorded change of the served model's policy, oldest first."""
    try:
        tags = client().get_registered_model(name).tags
    except MlflowException:
        return []
    return [json.loads(tags[key]) for key in sorted(tags) if key.startswith(POLICY_CHANGE_PREFIX)]


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
