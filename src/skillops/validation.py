"""Data contracts: Great Expectations suites from `expectations/`, turned into errors people can act on.

GX 1.x never raises on bad data (a failed suite only sets `success=False`), so this module is the
place that stops the pipeline, with the file, column, rule, offending rows and the fix.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from skillops.config import Recipe
from skillops.esco import OCCUPATIONS, RELATIONS, SKILLS, DataError, esco_files, read_csv
from skillops.modeling import prompt_warnings
from skillops.tables import read_table, text_columns

logger = logging.getLogger(__name__)

EXPECTATIONS_DIR = Path(__file__).resolve().parents[2] / "expectations"
MAX_EXAMPLES = 5


class Failure(BaseModel):
    file: str
    column: str
    rule: str
    expectation: str
    fix: str
    unexpected: int | None = None
    total: int | None = None
    examples: list[Any] = []
    lines: list[int] = []  # 1-based line numbers in a text file (a CSV's header is line 1)
    rows: list[int] = []  # 0-based row numbers, for files without lines (Parquet, datasets)

    def describe(self) -> str:
        where = f"{self.file}: column {self.column!r}" if self.column else f"{self.file}"
        text = f"{where}: rule '{self.rule}' ({self.expectation}) failed"
        if self.unexpected is not None:
            text += f" for {self.unexpected} of {self.total} rows"
        if self.lines:
            text += f", e.g. lines {self.lines}"
        if self.rows:
            text += f", e.g. rows {self.rows}"
        if self.examples:
            text += f": {self.examples}"
        return f"{text}. Fix: {self.fix}."


class ValidationReport(BaseModel):
    checked: dict[str, int]  # file -> rows
    failures: list[Failure]
    warnings: list[str] = []  # worth reading, not worth stopping for

    @property
    def success(self) -> bool:
        return not self.failures

    def markdown(self) -> str:
        lines = ["# Data validation", "", "| file | rows | result |", "|---|---|---|"]
        for file, rows in self.checked.items():
            failed = [f for f in self.failures if f.file == file]
            verdict = "passed" if not failed else f"**{len(failed)} rule(s) failed**"
            lines.append(f"| {file} | {rows} | {verdict} |")
        if self.failures:
            lines += ["", "## Failures", ""] + [f"- {failure.describe()}" for failure in self.failures]
        if self.warnings:
            lines += ["", "## Warnings", ""] + [f"- {warning}" for warning in self.warnings]
        return "\n".join(lines) + "\n"


class DataValidationError(DataError):
    def __init__(self, report: ValidationReport):
        self.report = report
        problems = "\n".join(f"  - {failure.describe()}" for failure in report.failures)
        super().__init__(
            f"Data validation failed ({len(report.failures)} rule(s)); nothing was trained.\n{problems}"
        )


@functools.cache
def _batch_definition():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # GX draws a progress bar per suite; in logs and CI they are only noise.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("skillops").add_dataframe_asset("frame")
    return asset.add_batch_definition_whole_dataframe("whole")


def load_suite(name: str):
    from great_expectations.core import ExpectationSuite

    path = EXPECTATIONS_DIR / f"{name}.json"
    return ExpectationSuite(**json.loads(path.read_text("utf-8")))


def run_suite(
    frame: pd.DataFrame,
    suite_name: str,
    file: str,
    parameters: dict[str, Any] | None = None,
    first_line: int | None = 2,
) -> list[Failure]:
    """Failed expectations of one suite; row numbers come from the frame's index, reported as
    file lines (`first_line` is the line of row 0) or, for binary files, as row numbers."""
    result = _batch_definition().get_batch(batch_parameters={"dataframe": frame}).validate(
        load_suite(suite_name), expectation_parameters=parameters or {}, result_format="SUMMARY"
    )
    missing_columns = {
        r.expectation_config.kwargs["column"]
        for r in result.results
        if r.expectation_config.type == "expect_column_to_exist" and not r.success
    }
    failures = []
    for outcome in result.results:
        if outcome.success:
            continue
        config = outcome.expectation_config
        columns = config.kwargs.get("column_list") or [config.kwargs.get("column", "")]
        if config.type != "expect_column_to_exist" and missing_columns & set(columns):
            continue  # already reported as a missing column
        details = outcome.result or {}
        indexes = [int(i) for i in details.get("partial_unexpected_index_list", [])][:MAX_EXAMPLES]
        failures.append(
            Failure(
                file=file,
                column=", ".join(columns),
                rule=config.meta.get("rule", config.type),
                expectation=config.type,
                fix=config.meta.get("fix", "correct the rows shown"),
                unexpected=details.get("unexpected_count"),
                total=details.get("element_count"),
                examples=[_shorten(v) for v in details.get("partial_unexpected_list", [])][:MAX_EXAMPLES],
                lines=[i + first_line for i in indexes] if first_line is not None else [],
                rows=indexes if first_line is None else [],
            )
        )
    return failures


def validate_esco(directory: Path, language: str = "en") -> ValidationReport:
    """The three ESCO files, each against its suite, relations against the two concept files."""
    files = esco_files(directory, language)
    tables = {table: read_csv(path) for table, path in files.items()}
    failures = run_suite(tables[OCCUPATIONS], "esco_occupations", str(files[OCCUPATIONS]))
    failures += run_suite(tables[SKILLS], "esco_skills", str(files[SKILLS]))
    failures += run_suite(
        tables[RELATIONS],
        "esco_relations",
        str(files[RELATIONS]),
        {
            "occupation_uris": sorted(set(tables[OCCUPATIONS].get("conceptUri", []))),
            "skill_uris": sorted(set(tables[SKILLS].get("conceptUri", []))),
        },
    )
    return ValidationReport(
        checked={str(files[table]): len(frame) for table, frame in tables.items()}, failures=failures
    )


def _shorten(value: Any) -> Any:
    return value[:80] + "..." if isinstance(value, str) and len(value) > 80 else value


def _long_triplets(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per negative, keeping the source row's index so failures point at the right row."""
    negatives = [c for c in frame.columns if c.startswith("negative_")]
    return pd.concat(
        [frame[["anchor", "positive", c]].rename(columns={c: "negative"}) for c in negatives]
    ).sort_index(kind="stable")


def _non_text(frame: pd.DataFrame, file: str, first_line: int | None) -> list[Failure]:
    """Text columns holding numbers, lists or nulls (a Parquet column of the wrong type)."""
    failures = []
    for column in text_columns(frame):
        bad = frame.index[~frame[column].map(lambda value: isinstance(value, str))].tolist()
        if bad:
            failures.append(
                Failure(
                    file=file, column=column, rule="value is text", expectation="skillops: text type",
                    fix=f"store '{column}' as strings (e.g. cast the column to string before saving)",
                    unexpected=len(bad), total=len(frame),
                    examples=[repr(frame.at[i, column]) for i in bad[:MAX_EXAMPLES]],
                    lines=[i + first_line for i in bad[:MAX_EXAMPLES]] if first_line is not None else [],
                    rows=bad[:MAX_EXAMPLES] if first_line is None else [],
                )
            )
    return failures


def check_shape(frame: pd.DataFrame, shape: str, file: str, first_line: int | None = None) -> list[Failure]:
    """A table in skillops' column names against the suite of its shape."""
    failures = _non_text(frame, file, first_line)
    if failures:
        return failures  # the suites' text rules cannot run on non-text values
    if shape == "triplets":
        return run_suite(_long_triplets(frame), "triplets", file, first_line=first_line)
    return run_suite(frame, shape, file, first_line=first_line)


def validate_recipe_data(recipe: Recipe) -> ValidationReport:
    """The recipe's raw data against the suites of its format and shape, plus warnings about the
    base model (prompts it was not trained with)."""
    if recipe.data.format == "esco":
        report = validate_esco(Path(recipe.data.path), recipe.data.language)
    else:
        table = read_table(recipe.data)
        report = ValidationReport(
            checked={table.source: len(table.frame)},
            failures=check_shape(table.frame, recipe.data.shape, table.source, table.first_line),
        )
    return report.model_copy(update={"warnings": report.warnings + prompt_warnings(recipe.base_model, recipe.prompts)})


def validate_prepared(frame: pd.DataFrame, shape: str, file: str) -> ValidationReport:
    """The training table skillops built (after splitting and mining) against its shape's suite."""
    return ValidationReport(checked={file: len(frame)}, failures=check_shape(frame, shape, file))


def require(report: ValidationReport) -> ValidationReport:
    """Stop here, before any training, when a rule failed; log the warnings."""
    for warning in report.warnings:
        logger.warning(warning)
    if not report.success:
        raise DataValidationError(report)
    return report
