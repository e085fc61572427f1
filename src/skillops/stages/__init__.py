"""The pipeline's stages, one module each, every one taking the run's context (`RunContext`: the
recipe, its inputs' fingerprints, the MLflow run) and small serialisable values.

The order of the stages lives in one place only, the Prefect flow (`flows/train_esco.py`), which
calls them by these names. Nothing here knows about Prefect. Each stage is glue: the work is done
by the library's rooms (inputs, training, judging, serving, tracking), and the stage logs what it
did to the run's MLflow run. What several stages share is in `shared`.
"""

from skillops.context import fingerprint
from skillops.stages.churn import index_churn
from skillops.stages.evaluation import evaluate_models
from skillops.stages.lifecycle import (
    explain,
    fail,
    finish,
    reconcile,
    record_skip,
    require_promotion_lock,
    start,
    unchanged_since,
)
from skillops.stages.preparation import prepare_data
from skillops.stages.promotion import promote
from skillops.stages.registration import register
from skillops.stages.reporting import report
from skillops.stages.shared import run_link
from skillops.stages.training import train
from skillops.stages.tuning import join_study, tune
from skillops.stages.validation import data_docs_link, validate_data

__all__ = [
    "data_docs_link",
    "evaluate_models",
    "explain",
    "fail",
    "fingerprint",
    "finish",
    "index_churn",
    "join_study",
    "prepare_data",
    "promote",
    "reconcile",
    "record_skip",
    "register",
    "report",
    "require_promotion_lock",
    "run_link",
    "start",
    "train",
    "tune",
    "unchanged_since",
    "validate_data",
]
