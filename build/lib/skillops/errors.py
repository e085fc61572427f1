"""The errors skillops raises for bad input and bad settings.

Kept free of heavy imports: the CLI catches these before it knows whether it needs pandas or torch.
"""

from __future__ import annotations


class RecipeError(ValueError):
    """A recipe (file, override or parameter) that cannot be used; the message says how to fix it."""


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, the column and the fix."""


def data_error(file: object, rule: str, fix: str, column: str | None = None, detail: str = "") -> DataError:
    """The same shape as a failed suite rule: `<file>: column '<c>': rule '<rule>' failed (...). Fix: ...`"""
    where = f"{file}: column {column!r}" if column else f"{file}"
    return DataError(f"{where}: rule '{rule}' failed{f' ({detail})' if detail else ''}. Fix: {fix}.")
