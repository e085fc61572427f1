"""Data contracts: Great Expectations suites from `expectations/`, turned into errors people can act on.

GX 1.x never raises on bad data (a failed suite only sets `success=False`), so this module is the
place that stops the pipeline, with the file, column, rule, offending rows and the fix.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from skillops.esco import OCCUPATIONS, RELATIONS, SKILLS, DataError, esco_files, read_csv

EXPECTATIONS_DIR = Path(__file__).resolve().parents[2] / "expectations"
MAX_EXAMPLES = 5


class Failure(BaseModel):
    file: str
    column: str
    rule: str
    expectation: str
    fix: str
    unexpected: int | None = None
    rows: int | None = None
    examples: list[Any] = []
    lines: list[int] = []  # 1-based line numbers in a CSV file (the header is line 1)

    def describe(self) -> str:
        where = f"{self.file}: column {self.column!r}" if self.column else f"{self.file}"
        text = f"{where}: rule '{self.rule}' ({self.expectation}) failed"
        if self.unexpected is not None:
            text += f" for {self.unexpected} of {self.rows} rows"
        if self.lines:
            text += f", e.g. lines {self.lines}"
        if self.examples:
            text += f": {self.examples}"
        return f"{text}. Fix: {self.fix}."


class ValidationReport(BaseModel):
    checked: dict[str, int]  # file -> rows
    failures: list[Failure]

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
    frame: pd.DataFrame, suite_name: str, file: str, parameters: dict[str, Any] | None = None
) -> list[Failure]:
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
        failures.append(
            Failure(
                file=file,
                column=", ".join(columns),
                rule=config.meta.get("rule", config.type),
                expectation=config.type,
                fix=config.meta.get("fix", "correct the rows shown"),
                unexpected=details.get("unexpected_count"),
                rows=details.get("element_count"),
                examples=list(details.get("partial_unexpected_list", []))[:MAX_EXAMPLES],
                lines=[int(i) + 2 for i in details.get("partial_unexpected_index_list", [])][:MAX_EXAMPLES],
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


def validate_pairs(pairs: pd.DataFrame, file: str) -> ValidationReport:
    return ValidationReport(checked={file: len(pairs)}, failures=run_suite(pairs, "pairs", file))


def require(report: ValidationReport) -> ValidationReport:
    """Stop here, before any training, when a rule failed."""
    if not report.success:
        raise DataValidationError(report)
    return report
