"""Every environment variable skillops reads, in one place: its name, its default and why.

A variable is read when it is used (`settings()`), never at import, so a test or a worker that
sets one before the call gets it. The timings a run waits on are here too: production waits
minutes (a restart of a server, a worker's heartbeats), and tests set the same variables to wait
seconds, through the same code. Bad values are refused with the variable's name and the fix.

    skillops settings      # each variable, its value here and what it is for
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from skillops.config import ServedVariant
from skillops.errors import RecipeError

PREFIX = "SKILLOPS_"


class Settings(BaseSettings):
    """Read from SKILLOPS_<FIELD> (e.g. SKILLOPS_SERVER_WAIT_SECONDS=120)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", frozen=True)

    # Where files go.
    outputs_dir: Path = Field(
        Path("outputs"),
        description="A run's work files (prepared data, checkpoints, reports before upload): outputs/ under the "
        "working directory. A worker of a team stack keeps them outside the flow run's own folder, so that a "
        "retried run finds its checkpoints.",
    )
    artifact_root: str | None = Field(
        None,
        description="Where new experiments keep their artifacts (a URI or a folder every machine reads); unset: "
        "the tracking server's own store (mlflow-artifacts:/), or mlruns/artifacts for a local store.",
    )
    optuna_storage: str | None = Field(
        None,
        description="The Optuna storage URL of every study when the recipe names none (a team stack's "
        "PostgreSQL, so that workers on other machines share it); unset: a sqlite file in the attempt's folder.",
    )
    mlflow_ui: str | None = Field(
        None, description="The MLflow UI links in reports point here; unset: the tracking server, or make ui's address."
    )
    serving_variant: ServedVariant | None = Field(
        None,
        description="At serve time: serve this variant instead of the one the gate chose (fp32: the PyTorch weights).",
    )

    gate_url: str | None = Field(
        None,
        description="A team's promotion authority (https://<stack>:5000/gate; an account's env file sets it): "
        "candidates are judged, champions moved, policies changed and rollbacks made there, never in this process.",
    )

    gate_database: str | None = Field(
        None,
        description="The promotion authority's own database (on the server machine only; scripts/stack.sh sets "
        "it): its record of policies, judgements and moves, and the evaluation sets it holds.",
    )

    # What a run waits for, and how long.
    server_wait_seconds: float = Field(
        120,
        gt=0,
        description="How long a run waits for a server it needs (the tracking server, PostgreSQL, the Prefect "
        "server) before it stops with a message naming the server: a restart shorter than this is ridden out.",
    )
    missed_heartbeats: int = Field(
        4,
        ge=2,
        description="The heartbeat automation marks a flow run CRASHED after this many heartbeat periods "
        "(Prefect's PREFECT_FLOWS_HEARTBEAT_FREQUENCY, 30 s by default here) of silence: four outlast a "
        "restart of the Prefect server of up to a minute.",
    )
    trial_heartbeat_seconds: int = Field(
        10,
        ge=1,
        description="A tuning trial's heartbeat in the Optuna storage: a trial silent for longer than its grace "
        "period (the server wait plus two heartbeats, at least 30 s) was killed, and is run again.",
    )
    run_alive_seconds: int = Field(
        20,
        ge=1,
        description="A pipeline run tags itself alive (skillops.alive_at) this often; one heard from within three "
        "periods is alive, whatever a stalled Prefect server made of its flow run, and a retry of its flow run "
        "stops before training. Keep three periods within the heartbeat automation's window.",
    )
    promotion_wait_seconds: int = Field(
        1800,
        ge=1,
        description="How long a run waits for another run's promotion of the same model (a champion re-scored on "
        "a large test set) before it gives up.",
    )
    checkpoint_poll_seconds: float = Field(
        2.0, gt=0, description="How often the checkpoint mirror looks for a checkpoint the trainer finished."
    )

    # Read by scripts/stack.sh, listed here so that one place names every variable.
    git_url: str | None = Field(
        None, description="scripts/stack.sh (TEAM=1): the repository workers clone the flows from; default: origin."
    )
    git_ref: str | None = Field(
        None, description="scripts/stack.sh (TEAM=1): the branch or tag workers clone; default: the checkout's branch."
    )
    credentials: Path | None = Field(
        None,
        description="scripts/stack.sh's env file: the account credentials file a shell of the server machine uses "
        "(default: the admin's).",
    )


def settings() -> Settings:
    """The settings of this process's environment, read now."""
    try:
        return Settings()
    except ValidationError as error:
        problem = error.errors()[0]
        field = str(problem["loc"][0]) if problem["loc"] else "?"
        raise RecipeError(
            f"{PREFIX}{field.upper()} = {problem.get('input')!r}: {problem['msg']}. "
            f"{Settings.model_fields[field].description if field in Settings.model_fields else ''}"
        ) from None


def describe() -> list[tuple[str, str, str]]:
    """(variable, its value here, what it is for) for every setting."""
    current = settings()
    return [
        (
            f"{PREFIX}{name.upper()}",
            "(unset)" if (value := getattr(current, name)) is None else str(value),
            field.description or "",
        )
        for name, field in Settings.model_fields.items()
    ]
