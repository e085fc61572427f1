"""Where a run's work files go: `outputs/` under the working directory (git-ignored), or
SKILLOPS_OUTPUTS_DIR. What must outlive a run (models, reports, scores) goes to the MLflow store."""

from __future__ import annotations

from pathlib import Path

from skillops.settings import settings


def outputs_root() -> Path:
    return settings().outputs_dir.resolve()


def output_dir(run_id: str) -> Path:
    """The run's work folder (prepared data, validation reports, charts): outputs/<run id>."""
    return outputs_root() / run_id


def attempt_dir(attempt: str) -> Path:
    """Tuning results and training checkpoints of one (data, recipe, code): a run that crashed
    and is started again finds them here and resumes instead of starting over."""
    return outputs_root() / "attempts" / attempt
