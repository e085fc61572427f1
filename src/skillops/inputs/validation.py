"""Data contracts: Great Expectations suites from `expectations/`, turned into errors people can act on.

GX 1.x never raises on bad data (a failed suite only sets `success=False`), so this module is the
place that stops the pipeline, with the file, column, rule, offending rows and the fix.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from skillops.config import Recipe, ValidationPolicy
from skillops.errors import DataValidationError
from skillops.inputs import checks
from skillops.inputs.checks import MAX_EXAMPLES, Failure
from skillops.inputs.esco import OCCUPATIONS, RELATIONS, SKILLS, esco_files, load_esco
from skillops.inputs.preparation import golden_sources
from skillops.inputs.tables import read_table, text_columns
from skillops.training.modeling import load_model, load_tokenizer, prompt_warnings

logger = logging.getLogger(__name__)


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
            failed = self.failed_rules(file)
            verdict = "passed" if not failed else f"**{failed} rule(s) failed**"
            lines.append(f"| {file} | {rows} | {verdict} |")
        if self.failures:
            lines += ["", "## Failures", ""] + [f"- {failure.describe()}" for failure in self.failures]
        if self.warnings:
            lines += ["", "## Warnings", ""] + [f"- {warning}" for warning in self.warnings]
        return "\n".join(lines) + "\n"

    def failed_rules(self, file: str) -> int:
        return sum(f.file.startswith(file) for f in self.failures)

    def html(self) -> str:
        """A page to open in a browser (and in MLflow's artifact viewer): the same content as `markdown`."""
        rows = "".join(
            f"<tr><td>{escape(file)}</td><td>{count}</td><td>{self._verdict(file)}</td></tr>"
            for file, count in self.checked.items()
        )
        failures = "".join(
            f"<tr><td>{escape(f.file)}</td><td>{escape(f.column)}</td><td>{escape(f.rule)}</td>"
            f"<td>{f.unexpected if f.unexpected is not None else ''}</td><td>{escape(str(f.lines or f.rows or ''))}</td>"
            f"<td>{escape(str(f.examples))}</td><td>{escape(f.fix)}</td></tr>"
            for f in self.failures
        )
        warnings = "".join(f"<li>{escape(w)}</li>" for w in self.warnings)
        verdict = "passed" if self.success else f"{len(self.failures)} rule(s) failed: nothing was trained"
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>skillops data validation</title><style>"
            "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
            ".bad{color:#b00020;font-weight:bold}.ok{color:#1b5e20}</style></head><body>"
            f"<h1>Data validation: <span class='{'ok' if self.success else 'bad'}'>{verdict}</span></h1>"
            f"<table><tr><th>file</th><th>rows</th><th>result</th></tr>{rows}</table>"
            + (
                f"<h2>Failures</h2><table><tr><th>file</th><th>column</th><th>rule</th><th>rows failing</th>"
                f"<th>lines / rows</th><th>examples</th><th>fix</th></tr>{failures}</table>"
                if failures
                else ""
            )
            + (f"<h2>Warnings</h2><ul>{warnings}</ul>" if warnings else "")
            + "</body></html>\n"
        )

    def _verdict(self, file: str) -> str:
        failed = self.failed_rules(file)
        return "passed" if not failed else f"<span class='bad'>{failed} rule(s) failed</span>"


@functools.cache
def _batch_definition():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # GX draws a progress bar per suite; in logs and CI they are only noise.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    asset = context.data_sources.add_pandas("skillops").add_dataframe_asset("frame")
    return asset.add_batch_definition_whole_dataframe("whole")


class DataDocs:
    """A file-backed Great Expectations context that keeps every validation result of one pass,
    so that GX renders its own Data Docs for it (what GX users know how to read)."""

    def __init__(self, root: Path):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.root = root
        self.context = gx.get_context(mode="file", project_root_dir=str(root))
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.source = self.context.data_sources.add_or_update_pandas("skillops")
        self.names: set[str] = set()

    def validate(self, frame: pd.DataFrame, suite_name: str, file: str, parameters: dict[str, Any]):
        import great_expectations as gx

        name = f"{Path(file).name} ({suite_name})"
        while name in self.names:  # the same file and suite twice in one pass (ESCO per table)
            name += "'"
        self.names.add(name)
        suite = self.context.suites.add_or_update(load_suite(suite_name))
        batch = self.source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("whole")
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=suite)
        )
        return definition.run(
            batch_parameters={"dataframe": frame}, expectation_parameters=parameters, result_format="SUMMARY"
        )

    def build(self) -> Path:
        """Render the Data Docs site; returns its folder (index.html inside)."""
        self.context.build_data_docs()
        return self.root / "gx" / "uncommitted" / "data_docs" / "local_site"


_data_docs: ContextVar[DataDocs | None] = ContextVar("skillops_data_docs", default=None)


@contextlib.contextmanager
def data_docs(root: Path) -> Iterator[DataDocs]:
    """Within the block, every suite run is also kept for GX's Data Docs under `root`."""
    docs = DataDocs(root)
    token = _data_docs.set(docs)
    try:
        yield docs
    finally:
        _data_docs.reset(token)


def load_suite(name: str):
    from great_expectations.core import ExpectationSuite

    suite = resources.files("skillops.expectations") / f"{name}.json"
    return ExpectationSuite(**json.loads(suite.read_text("utf-8")))


def run_suite(
    frame: pd.DataFrame,
    suite_name: str,
    file: str,
    parameters: dict[str, Any] | None = None,
    first_line: int | None = 2,
) -> list[Failure]:
    """Failed expectations of one suite; row numbers come from the frame's index, reported as
    file lines (`first_line` is the line of row 0) or, for binary files, as row numbers."""
    docs = _data_docs.get()
    if docs is not None:
        result = docs.validate(frame, suite_name, file, parameters or {})
    else:
        result = (
            _batch_definition()
            .get_batch(batch_parameters={"dataframe": frame})
            .validate(load_suite(suite_name), expectation_parameters=parameters or {}, result_format="SUMMARY")
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
                total=details.get("element_count"),
                examples=[_shorten(v) for v in details.get("partial_unexpected_list", [])][:MAX_EXAMPLES],
                **checks.located([int(i) for i in details.get("partial_unexpected_index_list", [])], first_line),
            )
        )
    return failures


def validate_esco(directory: Path, language: str = "en") -> ValidationReport:
    """The three ESCO files, each against its suite, relations against the two concept files."""
    files = esco_files(directory, language)
    tables = load_esco(directory, language)
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
    return pd.concat([frame[["anchor", "positive", c]].rename(columns={c: "negative"}) for c in negatives]).sort_index(
        kind="stable"
    )


def check_shape(frame: pd.DataFrame, shape: str, file: str, first_line: int | None = None) -> list[Failure]:
    """A table in skillops' column names against the suite of its shape."""
    failures = checks.non_text_values(frame, text_columns(frame), file, first_line)
    if failures:
        return failures  # the suites' text rules cannot run on non-text values
    if shape == "triplets":
        return run_suite(_long_triplets(frame), "triplets", file, first_line=first_line)
    return run_suite(frame, shape, file, first_line=first_line)


class _Findings:
    """Failures sorted by the recipe's policy into errors and warnings."""

    def __init__(self, policy: ValidationPolicy):
        self.policy, self.errors, self.warnings = policy, [], []

    def add(self, check: str, found: list[Failure]) -> None:
        level = getattr(self.policy, check)
        if level == "error":
            self.errors += found
        elif level == "warn":
            self.warnings += [failure.describe() for failure in found]


def _row_checks(findings: _Findings, frame: pd.DataFrame, file: str, first_line: int | None) -> None:
    query = checks.query_column(frame)
    document = "sentence2" if query == "sentence1" else "positive"
    findings.add("duplicates", checks.duplicates_after_normalising(frame, [query, document], file, first_line))
    findings.add("anchor_equals_positive", checks.anchor_equals_positive(frame, query, document, file, first_line))
    findings.add("positive_in_negatives", checks.positive_in_negatives(frame, file, first_line))


def validate_recipe_data(recipe: Recipe) -> ValidationReport:
    """The recipe's raw data against the suites of its format and shape and the row checks, plus
    warnings about the base model (prompts it was not trained with)."""
    findings = _Findings(recipe.validation)
    if recipe.data.format == "esco":
        report = validate_esco(recipe.data.location, recipe.data.language)
    else:
        table = read_table(recipe.data)
        report = ValidationReport(
            checked={table.source: len(table.frame)},
            failures=check_shape(table.frame, recipe.data.shape, table.source, table.first_line),
        )
        if report.success:  # row checks compare texts the suites have vouched for
            _row_checks(findings, table.frame, table.source, table.first_line)
    golden = _golden_files_report(recipe)
    return ValidationReport(
        checked={**report.checked, **golden.checked},
        failures=report.failures + golden.failures + findings.errors,
        warnings=report.warnings + findings.warnings + prompt_warnings(recipe.base_model, recipe.prompts),
    )


def _golden_files_report(recipe: Recipe) -> ValidationReport:
    """Each golden file against the suite of the recipe's data shape, named as the user wrote it."""
    checked, failures = {}, []
    for golden in recipe.evaluation.golden:
        table = read_table(recipe.golden_data(golden))
        checked[table.source] = len(table.frame)
        failures += check_shape(table.frame, recipe.data.shape, table.source, table.first_line)
    return ValidationReport(checked=checked, failures=failures)


def _eval_set_failures(eval_set: Any, evaluator: str, file: str) -> list[Failure]:
    """An evaluation set against the suites of its evaluator."""
    if evaluator == "reranking":
        frame = pd.DataFrame(
            {
                "query": [s["query"] for s in eval_set],
                "positives": [len(s["positive"]) for s in eval_set],
                "negatives": [len(s["negative"]) for s in eval_set],
            }
        )
        return run_suite(frame, "reranking_samples", file, first_line=None)
    if evaluator == "information_retrieval":
        queries = pd.DataFrame({"query_id": list(eval_set["queries"]), "text": list(eval_set["queries"].values())})
        corpus = pd.DataFrame({"doc_id": list(eval_set["corpus"]), "text": list(eval_set["corpus"].values())})
        relevance = pd.DataFrame(
            [(query, doc) for query, docs in eval_set["relevant_docs"].items() for doc in docs],
            columns=["query_id", "doc_id"],
        )
        ids = {"query_ids": sorted(eval_set["queries"]), "doc_ids": sorted(eval_set["corpus"])}
        return (
            run_suite(queries, "ir_queries", f"{file} (queries)", first_line=None)
            + run_suite(corpus, "ir_corpus", f"{file} (corpus)", first_line=None)
            + run_suite(relevance, "ir_relevance", f"{file} (relevant_docs)", ids, first_line=None)
        )
    return check_shape(pd.DataFrame(eval_set), "scored_pairs", file)


def validate_prepared(task, recipe: Recipe, paths) -> ValidationReport:
    """What skillops built from the data: the training table (after splitting and mining) and the
    frozen evaluation sets, against their suites, and checked for leakage and cut texts."""
    findings = _Findings(recipe.validation)
    train_file = str(paths.train)
    # A golden set's problems are the user's file's: name it, not skillops' copy of it.
    sources = {part: str(paths.eval_set(part)) for part in task.eval_sets} | golden_sources(recipe)
    failures = check_shape(task.train, recipe.data.training_shape, train_file)
    for part, eval_set in task.eval_sets.items():
        failures += _eval_set_failures(eval_set, recipe.evaluation.evaluator, sources[part])
    if not failures:
        derived = recipe.data.format == "esco" or recipe.data.mine_negatives is not None
        if derived:  # table data had its row checks on the user's own file already
            _row_checks(findings, task.train, train_file, None)
        # Leakage into a split is fixed in the data (train.parquet's rows); into a golden set, in that file.
        leak_files = {part: train_file for part in task.eval_sets} | golden_sources(recipe)
        findings.add("leakage", checks.leakage(task.train, task.eval_sets, recipe.evaluation.evaluator, leak_files))
        if recipe.validation.near_duplicates != "off":
            _near_duplicate_check(findings, task, recipe, sources)
        if recipe.validation.too_long != "off":
            try:
                tokenizer = load_tokenizer(recipe.base_model)
            except (OSError, ValueError) as error:  # no model here yet: the data can still be judged
                findings.warnings.append(
                    f"Token lengths not checked: the tokenizer of {recipe.base_model!r} did not load ({str(error)[:160]})."
                )
            else:
                for column in text_columns(task.train):
                    findings.add(
                        "too_long",
                        checks.too_long(
                            task.train[column], tokenizer, recipe.training.max_seq_length, column, train_file
                        ),
                    )
    return ValidationReport(
        checked={
            train_file: len(task.train),
            **{
                str(paths.eval_set(p)): len(checks.eval_queries(s, recipe.evaluation.evaluator))
                for p, s in task.eval_sets.items()
            },
        },
        failures=failures + findings.errors,
        warnings=findings.warnings,
    )


def _near_duplicate_check(findings: _Findings, task, recipe: Recipe, sources: dict[str, str]) -> None:
    try:
        model = load_model(recipe.base_model, recipe.training.max_seq_length)
    except (OSError, ValueError) as error:  # no model here yet: the exact checks still ran
        findings.warnings.append(
            f"Near duplicates not checked: {recipe.base_model!r} did not load ({str(error)[:160]})."
        )
        return
    column = checks.query_column(task.train)
    held_out = {
        part: checks.eval_queries(eval_set, recipe.evaluation.evaluator) for part, eval_set in task.eval_sets.items()
    }
    findings.add(
        "near_duplicates",
        checks.near_duplicates(
            model,
            task.train[column].tolist(),
            held_out,
            recipe.validation.near_duplicate_threshold,
            sources,
            column,
        ),
    )


def require(report: ValidationReport) -> ValidationReport:
    """Stop here, before any training, when a rule failed; log the warnings."""
    for warning in report.warnings:
        logger.warning(warning)
    if not report.success:
        problems = "\n".join(f"  - {failure.describe()}" for failure in report.failures)
        message = f"Data validation failed ({len(report.failures)} rule(s)); nothing was trained.\n{problems}"
        raise DataValidationError(message, report)
    return report
