"""How long skillops waits for a server it needs (the tracking server, PostgreSQL, the Prefect
server) before a run gives up, and the message it then gives.

One setting, SKILLOPS_SERVER_WAIT_SECONDS (default 120; `skillops.settings`), turned into each client's own retries:
MLflow's HTTP retries, Prefect's client retries, and the retries around the Optuna storage. A
restart shorter than that is ridden out; a longer outage fails the run with a `ServerError` that
names the server and the setting, and running it again continues where it stopped. No heavy
imports: the flow reads this before Prefect is imported.
"""

from __future__ import annotations

import os

from skillops.errors import ServerError
from skillops.settings import settings
from skillops.uris import safe_uri

WAIT_SETTING = "SKILLOPS_SERVER_WAIT_SECONDS"  # named in messages (skillops.settings reads it)
# MLflow's client setting: how often it re-sends a request that got no answer (read at each request).
MLFLOW_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"


def wait_seconds() -> float:
    return settings().server_wait_seconds


def doubling_retries(wait: float, first: float = 2.0) -> int:
    """How many retries that wait first, 2 x first, 4 x first, ... add up to `wait`."""
    retries, total, step = 0, 0.0, first
    while total < wait:
        retries, total, step = retries + 1, total + step, step * 2
    return retries


def client_settings() -> dict[str, str]:
    """The clients' own settings that ride out `wait_seconds()` of outage: MLflow waits 0, 4, 8,
    ... s between tries (urllib3's backoff with factor 2), Prefect 2, 4, 8, ... s."""
    wait = wait_seconds()
    return {
        MLFLOW_RETRIES: str(doubling_retries(wait, first=4.0) + 1),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
        "PREFECT_CLIENT_MAX_RETRIES": str(doubling_retries(wait, first=2.0)),
    }


def flow_defaults() -> dict[str, str]:
    """What the train-esco flow sets, unless the environment does, before it imports Prefect."""
    return {
        # skillops' own log lines (stage progress, warnings) go to the flow run's log next to
        # Prefect's. Outside a flow run (a trial worker's process, the CLI) the same lines stay
        # local, without Prefect warning about each one that it cannot send.
        "PREFECT_LOGGING_EXTRA_LOGGERS": "skillops",
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
        # Without PREFECT_API_URL the run starts Prefect's temporary server, which on a fresh HOME
        # first creates its database: 20 s (Prefect's default wait) was not enough on a busy machine.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        # Heartbeats every 30 s: the stack's automation crashes a run silent for four of them.
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
        # Nothing is sent anywhere unless asked: the temporary server Prefect starts for a run
        # would otherwise report usage, as MLflow and Great Expectations would.
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_ENABLE_TELEMETRY": "false",
        "GX_ANALYTICS_ENABLED": "false",
        **client_settings(),
    }


def ride_out_restarts() -> None:
    """Give this process's clients the retries of `client_settings` (settings set by hand win)."""
    for key, value in client_settings().items():
        os.environ.setdefault(key, value)


# What each client raises once its retries are spent: (the exception's class name or a part of
# its message, the server it means).
_OUTAGES = (
    ("Max retries exceeded", "MLflow tracking server"),
    ("ConnectionError", "MLflow tracking server"),
    ("OperationalError", "Optuna database"),
    ("ConnectError", "Prefect server"),
)


def explain(error: BaseException, addresses: dict[str, str]) -> ServerError | None:
    """A `ServerError` naming the server and the setting, when `error` is a client giving up on
    a server that did not answer; None for any other error. `addresses`: server -> its URL."""
    text = f"{type(error).__name__}: {error}"
    for sign, server in _OUTAGES:
        if sign in text:
            where = safe_uri(addresses.get(server, "")) or "(address not set)"
            return ServerError(
                f"The {server} {where} did not answer for {wait_seconds():.0f} s ({WAIT_SETTING}), so this run "
                f"stopped: {text.splitlines()[0][:300]}. Once it answers, run again: tuning continues its study and "
                f"training its last checkpoint; a candidate already registered is not registered twice. Raise "
                f"{WAIT_SETTING} to wait longer."
            )
    return None
