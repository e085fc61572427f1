"""validate-data: the recipe's raw data against its suites and checks, before anything is built."""

from __future__ import annotations

from skillops.context import RunContext
from skillops.inputs.validation import ValidationReport, data_docs, validate_recipe_data
from skillops.stages.shared import data_docs_path, log_report, run_link


def validate_data(run: RunContext) -> ValidationReport:
    """Check the recipe's raw data against its suites and checks; the report is saved (markdown
    and HTML) to the run, passed or not. `require(report)` is what stops the pipeline."""
    with data_docs(run.output_dir / "validation" / "gx-inputs") as docs:
        report = validate_recipe_data(run.recipe)
    log_report(report, run, "inputs", docs)
    return report


def data_docs_link(run: RunContext, name: str) -> str:
    """A validation pass's Data Docs in the MLflow UI."""
    return run_link(run, f"{data_docs_path(name)}/index.html")
