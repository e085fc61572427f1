"""MLflow model registry: register candidates, find the champion, copy a candidate into the
served model, load a registered model.

Two registered models per recipe. Every candidate is a version of `<name>-candidates`; the gate
(`skillops.gate`) registers the one it promotes into `<name>`, the served model, and moves
`<name>@champion` there. So the served model holds nothing the gate did not pass. (In MLflow's
open-source server, creating a version and moving an alias both need EDIT on the registered
model; one model could not tell "may register" from "may serve".)

The lock: MLflow aliases are last-writer-wins, with no compare-and-set, so promoters must take
turns. On one machine (a sqlite store) a file lock next to the store does it (`file_lock`). With
a tracking server, promoters on other machines never see that file: a team's stack judges in its
promotion authority alone; a plain tracking server needs the caller to hold a lock that every
machine takes (the flow holds its Prefect server's global concurrency limit) and say so
(`require_shared_lock`), or the promotion is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import LoggedModelStatus
from mlflow.exceptions import MlflowException

from skillops.config import TunedParams
from skillops.errors import ModelNotFoundError, PromotionError
from skillops.serving.mlflow_model import model_folder, served_variant
from skillops.serving.variants import load as load_variant
from skillops.stack.servers import wait_seconds
from skillops.tracking.runs import (
    account,
    answer_lost,
    client,
    sent_once,
    store_dir,
    tracking_uri,
    uses_server,
)
from skillops.uris import safe_uri

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CANDIDATE_TAG = "skillops.candidate_version"  # on a served version: the candidate it is a copy of
SERVED_TAG = "skillops.served_as"  # on a promoted candidate: the served version it became

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
    it a second time. The create request itself is sent once (`tracking.sent_once`): MLflow's
    client re-sends any request whose answer did not come, so a version the server made before the
    answer was lost would be made twice. Here a lost answer is followed by a look-up instead, for
    up to SKILLOPS_SERVER_WAIT_SECONDS."""
    model_uri = None
    all_tags = {
        **{key: str(value) for key, value in tags.items()},
        "skillops.registered_by": account(),
        "skillops.served_variant": variant,
    }
    deadline = time.monotonic() + wait_seconds()
    while True:
        registered = _candidate_of_run(name, run_id)
        if registered is not None:
            logger.info("Run %s registered candidate version %s of %s", run_id, registered, name)
            return registered
        model_uri = model_uri or _logged_model(run_id) or log_model(Path(model_dir), run_id, variant)
        try:
            with sent_once():
                # await_registration_for=0: a store makes a version READY at once; waiting would
                # poll it with requests that are not retried here.
                made = mlflow.register_model(model_uri, candidates(name), tags=all_tags, await_registration_for=0)
            break
        except MlflowException as error:
            if not answer_lost(error) or time.monotonic() > deadline:
                raise
            logger.warning(
                "Registering run %s's candidate got no answer (%s); looking up whether the server made it",
                run_id,
                str(error).splitlines()[0][:200],
            )
            time.sleep(2)
    version = str(made.version)
    if description:
        client().update_model_version(candidates(name), version, description=description)
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


def log_model(model_dir: Path, run_id: str, variant: str) -> str:
    """The model folder logged to `run_id` under two flavors (`skillops.serving.mlflow_model`):
    sentence-transformers' (fp32, for `mlflow.sentence_transformers.load_model`) and a pyfunc
    that `mlflow models serve` and `mlflow.pyfunc.load_model` encode with `variant`."""
    from skillops.serving import mlflow_model

    with mlflow.start_run(run_id=run_id):
        info = mlflow.models.Model.log(
            artifact_path=None,  # deprecated in MLflow 3 for `name`, yet still a required argument
            name="model",
            flavor=mlflow_model,
            model_dir=Path(model_dir),
            variant=variant,
            signature=serving_signature(),
            pip_requirements=SERVING_REQUIREMENTS,
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
        return load_variant(model_folder(local), served_variant(local) if as_served else "fp32")


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
def file_lock(name: str) -> Iterator[None]:
    """One promoter at a time per model among the processes of this machine."""
    lock_dir = store_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def served_copy(name: str, candidate: str) -> str:
    """The served model's version that is a copy of this candidate, made now unless it exists."""
    with contextlib.suppress(MlflowException):  # no served model yet
        for version in client().search_model_versions(f"name = '{name}'"):
            if version.tags.get(CANDIDATE_TAG) == candidate:
                return str(version.version)
    copy = client().copy_model_version(model_uri(candidates(name), candidate), name)
    client().set_model_version_tag(name, str(copy.version), CANDIDATE_TAG, candidate)
    return str(copy.version)


def trained_with(name: str, version: str) -> TunedParams | None:
    """The tuned parameters version `version` was trained with: its run's search result
    (`best.*`), else the recipe's (`training.*`); None when its run records neither."""
    mlflow_client = client()
    params = mlflow_client.get_run(mlflow_client.get_model_version(name, version).run_id).data.params
    found = {key: params.get(f"best.{key}", params.get(f"training.{key}")) for key in TunedParams.model_fields}
    return None if None in found.values() else TunedParams(**found)
