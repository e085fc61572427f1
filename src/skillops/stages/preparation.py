"""prepare-data: the split, the frozen eval sets and mined negatives, checked and logged as MLflow
datasets."""

from __future__ import annotations

from skillops.context import RunContext
from skillops.inputs import preparation
from skillops.inputs.preparation import PreparedData
from skillops.inputs.validation import data_docs, require, validate_prepared
from skillops.stages.shared import gate_sets, log_report
from skillops.tracking import runs


def prepare_data(run: RunContext) -> PreparedData:
    """Split the data and freeze the evaluation sets (mining negatives when the recipe asks), then
    check what was built: leakage, cut texts, and the suites of the training and eval shapes."""
    recipe = run.recipe
    fingerprint = run.fingerprints.data or f"unversioned hub dataset {recipe.data.path}"
    task = preparation.with_mined_negatives(preparation.build_task(recipe), recipe)
    paths = preparation.write_task(task, run.output_dir / "data", {"data_fingerprint": fingerprint})
    with data_docs(run.output_dir / "validation" / "gx-prepared") as docs:
        report = validate_prepared(task, recipe, paths)
    log_report(report, run, "prepared", docs)
    require(report)
    prepared = PreparedData(
        directory=paths.directory,
        data_fingerprint=fingerprint,
        # What the gate's scores depend on: the frozen test and golden sets, the prompts and how
        # they are scored.
        eval_fingerprint=preparation.fingerprint_files(
            [paths.eval_set(part) for part in gate_sets(recipe)],
            extra=recipe.prompts.model_dump_json() + recipe.evaluation.model_dump_json(exclude={"batch_size"}),
        ),
        counts=task.counts,
    )
    runs.log_params(
        run.run_id, {"data_fingerprint": prepared.data_fingerprint, "eval_fingerprint": prepared.eval_fingerprint}
    )
    runs.log_metrics(run.run_id, {f"data_{k}": v for k, v in prepared.counts.items()})
    runs.log_artifact(run.run_id, paths.manifest, "data")
    _log_datasets(run, task, prepared)
    return prepared


def _log_datasets(run: RunContext, task: preparation.Task, prepared: PreparedData) -> None:
    """The training table and every eval set as MLflow datasets: name, source, digest, context."""
    recipe = run.recipe
    golden = {preparation.golden_part(g.name): g for g in recipe.evaluation.golden}
    datasets = [("training", f"{recipe.name}-train", task.train, recipe.data.path, prepared.data_fingerprint[:16])]
    for part, eval_set in task.eval_sets.items():
        frame = preparation.eval_set_frame(eval_set, recipe.evaluation.evaluator)
        if part in golden:
            datasets.append(("golden", f"{recipe.name}-{part}", frame, golden[part].path, None))
        else:
            source = f"{recipe.data.path} ({part} split)"
            digest = prepared.eval_fingerprint if part == "test" else None
            datasets.append((part, f"{recipe.name}-{part}", frame, source, digest))
    runs.log_datasets(run.run_id, datasets)
