"""Every error skillops raises on purpose, in one family: `except SkillopsError` catches them all.

Each message says what is wrong, the offending value, and how to fix it. Kept free of heavy
imports: the CLI catches these before it knows whether it needs pandas or torch.
"""

from __future__ import annotations


class SkillopsError(Exception):
    """Something skillops refused or could not do; the message says how to go on."""


class RecipeError(SkillopsError, ValueError):
    """A recipe (file, override or parameter) or a setting that cannot be used."""


class DataError(SkillopsError, ValueError):
    """Input data that cannot be used; the message names the file, the column and the fix."""


class DataValidationError(DataError):
    """Rules of the data contracts failed; `report` (a `validation.ValidationReport`, which
    raises this) holds every failure and warning."""

    def __init__(self, message: str, report: object):
        super().__init__(message)
        self.report = report


class ModelNotFoundError(SkillopsError, FileNotFoundError):
    """No copy of a model could be found; the message lists every place that was tried."""


class TrainingError(SkillopsError):
    """Training or tuning ended without a model; the message says where its output and checkpoints are."""


class PromotionError(SkillopsError):
    """The champion cannot be moved safely from here; the message says what to set."""


class RollbackError(SkillopsError):
    """The champion cannot be moved back; the message says why."""


class PolicyError(PromotionError):
    """A served model's policy is missing or malformed; the message names the model, the field and
    the command that repairs it. Nothing is promoted until it is repaired."""


class AccessError(SkillopsError):
    """The promotion authority refused the caller (wrong role, unknown account); the message says
    which account may do it."""


class ServerError(SkillopsError):
    """A server skillops needs (tracking server, database, Prefect) did not answer in time; the
    message names the server and the setting that sets how long skillops waits."""


def data_error(file: object, rule: str, fix: str, column: str | None = None, detail: str = "") -> DataError:
    """The same shape as a failed suite rule: `<file>: column '<c>': rule '<rule>' failed (...). Fix: ...`"""
    where = f"{file}: column {column!r}" if column else f"{file}"
    return DataError(f"{where}: rule '{rule}' failed{f' ({detail})' if detail else ''}. Fix: {fix}.")


class StillRunningError(SkillopsError):
    """A retry of a flow run whose earlier attempt still runs (a stalled server marked it CRASHED):
    the retry stops before training, so the model is never trained twice at once."""
