"""MLflow store location, run lifecycle and metric naming, in one place.

The store defaults to `mlruns/` under the working directory (sqlite + an artifacts folder), not
MLflow 3's own default of `./mlflow.db`, so that every command and the UI agree on one store.
MLflow's active run is thread-local, so runs are passed around by id and written with a client.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import mlflow
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from skillops.errors import StillRunningError
from skillops.settings import settings
from skillops.stack import servers
from skillops.uris import safe_uri

if TYPE_CHECKING:
    import pandas as pd

STORE_DIR = Path("mlruns")
logger = logging.getLogger(__name__)
_warned_local_artifacts: set[str] = set()  # one warning per experiment and process


def account() -> str:
    """Who this process acts as: its account on the tracking server, else the local user."""
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or f"{getpass.getuser()} (local store)"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(STORE_DIR / 'mlflow.db').resolve()}"


def uses_server(uri: str | None = None) -> bool:
    """Whether the store is an MLflow tracking server (shared), not a database or folder here."""
    return (uri or tracking_uri()).startswith(("http://", "https://"))


def store_dir() -> Path:
    """A local folder that belongs to this store: its lock files and the local score cache (next
    to the sqlite file; mlruns/ for any other store)."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent
    return STORE_DIR.resolve()


def artifact_location(experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts. SKILLOPS_ARTIFACT_ROOT: a URI as given
    (mlflow-artifacts:/, s3://, file://) or a local folder, plus the experiment's name. Else,
    with a tracking server, None: the server's default (mlflow-artifacts:/, proxied), which every
    machine can read; a file:// location would pin the artifacts to this machine's disk. Else
    next to the store (mlruns/artifacts/<experiment>)."""
    root = settings().artifact_root
    if root:
        base = root if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", root) else Path(root).resolve().as_uri()
        return f"{base.rstrip('/')}/{experiment}"
    if uses_server():
        return None
    folder = store_dir() / "artifacts" / experiment
    folder.mkdir(parents=True, exist_ok=True)
    return folder.as_uri()


def client() -> MlflowClient:
    servers.ride_out_restarts()  # MLflow reads its retry settings at each request
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ui_command(experiment: str) -> str:
    """How to open this store's runs of `experiment` in the MLflow UI: the command (with the mlflow
    of this environment) and the page to open."""
    page = f"{_ui_base()}/#/experiments/{experiment_id(experiment)}?{UI_LAYOUT}"
    if uses_server():
        return f"open {page}"  # a tracking server is its own UI (`mlflow ui` refuses its URI)
    mlflow_bin = Path(os.path.relpath(Path(sys.executable).parent / "mlflow"))
    command = f"{mlflow_bin} ui --backend-store-uri {safe_uri(tracking_uri())} --host 127.0.0.1 --port 5000"
    return f"`{command}`, then open {page}"


def _ui_base() -> str:
    """The MLflow UI: SKILLOPS_MLFLOW_UI, else the tracking server itself, else `make ui`'s address."""
    default = safe_uri(tracking_uri()) if uses_server() else "http://127.0.0.1:5000"
    return (settings().mlflow_ui or default).rstrip("/")


def metric_name(name: str) -> str:
    """MLflow refuses '@' (ndcg@10): one spelling for every run, chart and promotion gate."""
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", name.replace("@", "_at_"))


# MLflow's kind of experiment: model training, not a GenAI application. (The UI's layout follows
# UI_LAYOUT in the links skillops prints, or the browser's last choice: the tag alone does not
# keep the UI from opening on its GenAI overview.)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
UI_LAYOUT = "workflowType=machine_learning"


def experiment_id(name: str) -> str:
    mlflow_client = client()
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        return mlflow_client.create_experiment(name, artifact_location=artifact_location(name), tags=EXPERIMENT_KIND)
    for key, value in EXPERIMENT_KIND.items():  # experiments made by earlier versions
        if experiment.tags.get(key) != value:
            mlflow_client.set_experiment_tag(experiment.experiment_id, key, value)
    location = experiment.artifact_location
    if uses_server() and location.startswith(("file:", "/")) and name not in _warned_local_artifacts:
        _warned_local_artifacts.add(name)
        logger.warning(
            "Experiment %r keeps its artifacts at %s, on the disk of the machine that created it, while the "
            "store is the tracking server %s: other machines cannot read its models, reports or score cache. "
            "Fix: rename that experiment in the MLflow UI (skillops then creates a new one on the server's "
            "artifact store), or set SKILLOPS_ARTIFACT_ROOT to a location every machine reads.",
            name,
            location,
            safe_uri(tracking_uri()),
        )
    return experiment.experiment_id


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def code_version() -> str:
    """The git commit, plus a hash of uncommitted changes to tracked files: edited code is new code."""
    commit = git_commit()
    try:
        diff = subprocess.run(["git", "diff", "HEAD"], capture_output=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return commit
    return f"{commit}+{hashlib.sha256(diff).hexdigest()[:12]}" if diff else commit


def start_run(
    experiment: str,
    run_name: str,
    params: dict[str, Any],
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> str:
    mlflow_client = client()
    # Who runs it: lets the next start tell a crashed run (process gone) from a live one; and the
    # account, which the UI shows as the run's user.
    all_tags = {
        "mlflow.runName": run_name,
        "mlflow.user": account(),
        "skillops.host": socket.gethostname(),
        "skillops.pid": str(os.getpid()),
        **(tags or {}),
    }
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = mlflow_client.create_run(experiment_id(experiment), tags=all_tags)
    log_params(run.info.run_id, params)
    return run.info.run_id


@contextlib.contextmanager
def sent_once() -> Iterator[None]:
    """MLflow requests made in this block are sent once, without the client's retries. Its
    retries re-send POSTs too, which duplicates whatever the server made before an answer was
    lost; a caller that creates something looks up what the server did before it tries again.
    (MLflow reads the setting at each request; the block is for the one thread that registers.)"""
    saved = os.environ.get(servers.MLFLOW_RETRIES)
    os.environ[servers.MLFLOW_RETRIES] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(servers.MLFLOW_RETRIES, None)
        else:
            os.environ[servers.MLFLOW_RETRIES] = saved


def answer_lost(error: Exception) -> bool:
    """Whether a request failed for want of an answer (connection dropped, reset or timed out),
    so the server may or may not have done what it asked."""
    text = str(error)
    return any(sign in text for sign in ("Max retries exceeded", "Connection aborted", "Read timed out"))


T = TypeVar("T")


def answer_broke_off(error: Exception) -> bool:
    """Whether the server's answer started and stopped before its end (the server was killed while
    answering). urllib3's retries, which ride out a server that does not answer, end once the
    answer has begun: the body is read after them."""
    return any(sign in str(error) for sign in ("Connection broken", "IncompleteRead"))


def resent_if_broken(write: Callable[[], T]) -> T:
    """`write`, sent again when its answer broke off, for up to `servers.wait_seconds()`. Only for
    writes that leave the same state when the server received them twice: MLflow keeps one row
    per metric, value, step and timestamp, accepts a param logged again with its value, and a tag
    set or an artifact uploaded twice is the same tag or file."""
    deadline = time.monotonic() + servers.wait_seconds()
    while True:
        try:
            return write()
        except Exception as error:
            if not answer_broke_off(error) or time.monotonic() > deadline:
                raise
            logger.warning("The MLflow tracking server's answer broke off (%s); sending it again", error)
            time.sleep(2)


def _log_batch(run_id: str, **entries: list) -> None:
    resent_if_broken(lambda: client().log_batch(run_id, **entries))


def log_params(run_id: str, params: dict[str, Any]) -> None:
    _log_batch(run_id, params=[mlflow.entities.Param(key, str(value)) for key, value in params.items()])


def log_metrics(run_id: str, metrics: dict[str, float], prefix: str = "", step: int = 0) -> None:
    # Timestamp 0: a batch sent again is the same rows, which MLflow keeps once.
    _log_batch(
        run_id,
        metrics=[
            mlflow.entities.Metric(metric_name(prefix + key), float(value), 0, step) for key, value in metrics.items()
        ],
    )


def log_loss_history(run_id: str, log_history: Path, step_offset: int = 0) -> None:
    """The trainer's log as curves over optimizer steps: `train_loss`, and `validation_<metric>`
    for each evaluation during training. `step_offset` places later training rounds after earlier ones."""
    metrics = []
    for entry in json.loads(log_history.read_text("utf-8")):
        step = entry["step"] + step_offset
        if "loss" in entry:
            metrics.append(mlflow.entities.Metric("train_loss", entry["loss"], 0, step))
        for key, value in entry.items():
            if (
                key.startswith("eval_")
                and isinstance(value, int | float)
                and key not in ("eval_runtime", "eval_steps_per_second", "eval_samples_per_second")
            ):
                metrics.append(
                    mlflow.entities.Metric(metric_name("validation_" + key.removeprefix("eval_")), value, 0, step)
                )
    _log_batch(run_id, metrics=metrics)


def log_datasets(run_id: str, datasets: list[tuple[str, str, pd.DataFrame, str, str | None]]) -> None:
    """(context, name, rows, source, digest) per data set the run used: the Dataset column and the
    inputs of the run page in the MLflow UI. A digest of None lets MLflow hash the rows."""
    import warnings

    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for context, name, frame, source, digest in datasets:
        with warnings.catch_warnings():
            # MLflow registers its local-file source twice and warns that a path "can be
            # interpreted in multiple ways", naming the same class twice; nothing to act on.
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            # Counts are whole numbers without missing values; MLflow's hint about integer
            # columns concerns model signatures, not these tables.
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
            # MLflow's digest calls DataFrame.all positionally, which pandas 4 will refuse: theirs.
            warnings.filterwarnings("ignore", message="Starting with pandas version 4.0")
            dataset = mlflow.data.from_pandas(frame, source=source, name=name, digest=digest)._to_mlflow_entity()
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)]))
    client().log_inputs(run_id, datasets=inputs)


def get_params(run_id: str) -> dict[str, str]:
    return client().get_run(run_id).data.params


def set_tags(run_id: str, tags: dict[str, Any]) -> None:
    _log_batch(run_id, tags=[mlflow.entities.RunTag(key, str(value)) for key, value in tags.items()])


def log_artifact(run_id: str, path: Path, folder: str | None = None) -> None:
    resent_if_broken(lambda: client().log_artifact(run_id, str(path), folder))


def log_artifacts(run_id: str, directory: Path, folder: str) -> None:
    resent_if_broken(lambda: client().log_artifacts(run_id, str(directory), folder))


def download_artifacts(run_id: str, path: str, destination: Path) -> Path:
    """A run's artifact folder, copied here (from the tracking server when there is one)."""
    destination.mkdir(parents=True, exist_ok=True)
    return Path(client().download_artifacts(run_id, path, str(destination)))


def run_url(run_id: str, artifact: str | None = None) -> str:
    """The run's page in the MLflow UI (`make ui`; SKILLOPS_MLFLOW_UI for another address), or
    one of its artifacts there."""
    run = client().get_run(run_id)
    url = f"{_ui_base()}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
    # MLflow 3's UI picks its GenAI or model-training layout from this parameter (or the
    # browser's last choice), not from the experiment's kind.
    return f"{url}/artifacts/{artifact}?{UI_LAYOUT}" if artifact else f"{url}?{UI_LAYOUT}"


def last_run_with(experiment: str, tags: dict[str, str]) -> str | None:
    """The last completed pipeline run of `experiment`, if its tags equal `tags` (else None):
    the same data, recipe and code mean a retrain cannot change anything."""
    found = client().get_experiment_by_name(experiment)
    if found is None:
        return None
    last = client().search_runs(
        [found.experiment_id],
        "attributes.status = 'FINISHED' and tags.`skillops.kind` = 'pipeline'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if last and all(last[0].data.tags.get(key) == value for key, value in tags.items()):
        return last[0].info.run_id
    return None


def record_skip(experiment: str, tags: dict[str, str], previous_run_id: str) -> str:
    """A short FINISHED run that says why nothing was trained, next to the runs that were."""
    reason = (
        f"data, recipe and code are those of run {previous_run_id}: nothing to retrain (force=True retrains anyway)"
    )
    run_id = start_run(
        experiment,
        f"{experiment} (skipped)",
        {},
        {**tags, "skillops.kind": "skip", "skillops.skip_reason": reason, "skillops.same_as_run": previous_run_id},
    )
    end_run(run_id)
    return run_id


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


# Which Prefect flow run a pipeline run belongs to, and on which Prefect server: any machine that
# shares that server can ask it whether the flow run died, where a pid only means something on
# the machine that started it.
FLOW_RUN_TAG = "skillops.prefect_flow_run_id"
PREFECT_API_TAG = "skillops.prefect_api"
DEAD_FLOW_RUN_STATES = ("CRASHED", "FAILED", "CANCELLED")


def fail_stale_runs(
    experiment: str,
    prefect_api: str | None = None,
    flow_run_states: Callable[[list[str]], dict[str, str]] | None = None,
    current_flow_run: str | None = None,
) -> list[str]:
    """Mark FAILED, with the reason, the runs left RUNNING by a run that died (killed, out of
    memory, machine rebooted): MLflow itself would show them RUNNING forever. A run tagged with a
    flow run of the Prefect server at `prefect_api` is judged by `flow_run_states` (flow run id ->
    state type, from that server), from any machine; a run of `current_flow_run` (the caller's
    own flow run) belongs to an earlier attempt of it, retried after it crashed; other runs are
    judged by whether their process still exists, which only the machine that started them can tell."""
    mlflow_client = client()
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        return []
    host, now = socket.gethostname(), time.time()
    reasons: dict[str, str] = {}
    asked: dict[str, str] = {}  # flow run id -> MLflow run id
    for run in mlflow_client.search_runs([found.experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        tags, run_id = run.data.tags, run.info.run_id
        silent = _silent_for(tags, now)
        alive = silent is not None and silent < alive_window() and not _ended_here(tags, host)
        if current_flow_run and tags.get(FLOW_RUN_TAG) == current_flow_run:
            if silent is not None and not alive and not _ended_here(tags, host):
                logger.info(
                    "Waiting up to %.0f s for the earlier attempt (MLflow run %s) to say it is alive",
                    alive_window(),
                    run_id,
                )
                alive = _heard_again(run_id, tags[ALIVE_TAG])
            if alive:
                raise StillRunningError(
                    f"Prefect flow run {current_flow_run} was retried while its earlier attempt still runs: MLflow run "
                    f"{run_id} on {tags.get('skillops.host')} (pid {tags.get('skillops.pid')}) still says it is alive. "
                    "A stalled server marked it crashed; its worker did not die. This attempt "
                    f"stops before training so that the model is not trained twice; the earlier one's results will be "
                    f"in that MLflow run. If its machine is really gone, retry: an attempt silent for "
                    f"{alive_window():.0f} s (its {ALIVE_TAG} tag) is taken for dead."
                )
            reasons[run_id] = (
                f"an earlier attempt of Prefect flow run {current_flow_run}, which crashed and was retried"
            )
        elif alive:
            continue  # heard from just now: alive, whatever its flow run's state says
        elif flow_run_states and prefect_api and tags.get(PREFECT_API_TAG) == prefect_api and FLOW_RUN_TAG in tags:
            asked[tags[FLOW_RUN_TAG]] = run_id
        elif tags.get("skillops.host") == host and tags.get("skillops.pid", "").isdigit():
            pid = int(tags["skillops.pid"])
            if pid != os.getpid() and not _process_alive(pid):
                reasons[run_id] = f"process {pid} on {host} ended without closing the run (killed or crashed)"
    for flow_run_id, state in (flow_run_states(list(asked)) if asked else {}).items():
        if state in DEAD_FLOW_RUN_STATES:
            reasons[asked[flow_run_id]] = f"its Prefect flow run {flow_run_id} is {state} on {prefect_api}"
    for run_id, reason in reasons.items():
        end_run(run_id, failure=f"{reason}; marked FAILED by the next start, on {host}")
    return list(reasons)


# A pipeline run says it is alive every `run_alive_seconds` (the tag holds its machine's clock), and
# one heard from within three of them is alive wherever it runs, whatever its Prefect flow run's
# state says: a stalled server counts the heartbeats it could not take as missed, and the automation
# then marks a live run CRASHED. Three periods (60 s) stay within the automation's shortest window
# (two 30 s heartbeats), so a run it crashed for silence is silent for longer than that.
ALIVE_TAG = "skillops.alive_at"


def alive_window() -> float:
    return 3 * settings().run_alive_seconds


def keep_alive(run_id: str) -> threading.Thread:
    """Tag the run alive now, then every `run_alive_seconds` while it is RUNNING, from a daemon
    thread that ends with the process (a killed run falls silent) or with the run. The thread
    keeps the store of its start: it never reads the environment again, nor sets MLflow's global
    tracking URI under the main thread."""
    set_tags(run_id, {ALIVE_TAG: f"{time.time():.0f}"})
    period, store = settings().run_alive_seconds, MlflowClient(tracking_uri=tracking_uri())

    def beat() -> None:
        while True:
            time.sleep(period)
            try:
                if store.get_run(run_id).info.status != RunStatus.to_string(RunStatus.RUNNING):
                    return
                alive = [mlflow.entities.RunTag(ALIVE_TAG, f"{time.time():.0f}")]
                resent_if_broken(lambda tags=alive: store.log_batch(run_id, tags=tags))
            except Exception as error:  # the tracking server is away: the next beat tries again
                logger.debug("Run %s could not say it is alive: %s", run_id, error)

    thread = threading.Thread(target=beat, name=f"skillops-alive-{run_id}", daemon=True)
    thread.start()
    return thread


def _heard_again(run_id: str, last: str) -> bool:
    """Whether a silent run says it is alive within `alive_window()`. Its servers may have been
    stalled (the database under MLflow too): a live run beats again within a period of their
    return, a dead one never does."""
    deadline = time.monotonic() + alive_window()
    while time.monotonic() < deadline:
        time.sleep(min(5, settings().run_alive_seconds))
        if client().get_run(run_id).data.tags.get(ALIVE_TAG, last) != last:
            return True
    return False


def _silent_for(tags: dict[str, str], now: float) -> float | None:
    """Seconds since the run last said it was alive; None for a run that never did."""
    beat = tags.get(ALIVE_TAG, "")
    return now - float(beat) if beat.isdigit() else None


def _ended_here(tags: dict[str, str], host: str) -> bool:
    """The run's process was on this machine and is gone (or is this process: a retry in it)."""
    pid = tags.get("skillops.pid", "")
    return (
        tags.get("skillops.host") == host
        and pid.isdigit()
        and (int(pid) == os.getpid() or not _process_alive(int(pid)))
    )


def end_run(run_id: str, failure: str | None = None) -> None:
    """Close a run explicitly: MLflow would otherwise leave a crashed run FINISHED or RUNNING."""
    if failure:
        set_tags(run_id, {"skillops.failure": failure[:5000]})
    status = RunStatus.to_string(RunStatus.FAILED if failure else RunStatus.FINISHED)
    resent_if_broken(lambda: client().set_terminated(run_id, status))
