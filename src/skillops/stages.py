"""One function per pipeline stage, each taking and returning small, serialisable values.

The order of the stages lives in one place only, the Prefect flow (`flows/train_esco.py`); the
CLI calls single stages. Nothing here knows about Prefect.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
from importlib import metadata
from pathlib import Path

from pydantic import BaseModel

from skillops import registry, tasks, tracking
from skillops.config import Recipe
from skillops.evaluation import QueryScores, evaluate, score_queries, scorer
from skillops.modeling import load_model
from skillops.promotion import Decision, decide
from skillops.reports import comparison_chart, loss_curve_chart, model_card, rounds_chart, summary
from skillops.training import train_model
from skillops.tuning import tune as run_search
from skillops.validation import ValidationReport, require, validate_prepared, validate_recipe_data

logger = logging.getLogger(__name__)

TRACKED_LIBRARIES = ("sentence-transformers", "transformers", "torch", "mlflow", "prefect", "optuna")


class PreparedData(BaseModel):
    directory: Path
    data_fingerprint: str  # the raw input files and the task settings
    eval_fingerprint: str  # the frozen test samples the promotion gate scores on
    counts: dict[str, int]

    @property
    def paths(self) -> tasks.PreparedPaths:
        return tasks.PreparedPaths(self.directory)


class Scores(BaseModel):
    """Per-query scores of base, candidate and champion on the run's frozen test set."""

    base: QueryScores
    candidate: QueryScores
    champion: QueryScores | None
    champion_version: str | None
    champion_source: str | None = None  # how the champion's scores were obtained (cache or re-scored)

    def table(self, metrics: list[str]) -> dict[str, dict[str, float]]:
        rows = {"base": self.base, "candidate": self.candidate}
        if self.champion is not None:
            rows[f"champion (v{self.champion_version})"] = self.champion
        return {model: values.aggregate(tuple(metrics)) for model, values in rows.items()}


class Fingerprints(BaseModel):
    """What decides whether a retrain can change anything: the data, the recipe, the code."""

    data: str | None  # None for a hub dataset: skillops cannot see whether it changed
    recipe: str
    code: str

    @property
    def attempt(self) -> str:
        """Names the work folder that a crashed run resumes from when run again."""
        return hashlib.sha256(f"{self.data}|{self.recipe}|{self.code}".encode()).hexdigest()[:16]

    def tags(self) -> dict[str, str]:
        return {
            "skillops.data_fingerprint": str(self.data),
            "skillops.recipe_hash": self.recipe,
            "skillops.code_version": self.code,
            "skillops.git_commit": self.code.split("+")[0],
        }


def fingerprint(recipe: Recipe) -> Fingerprints:
    files = tasks.source_files(recipe.data)
    return Fingerprints(
        # The source files and every data setting: a change to either is a new data set.
        data=tasks.fingerprint_files(files, extra=recipe.data.model_dump_json()) if files else None,
        recipe=hashlib.sha256(recipe.model_dump_json().encode()).hexdigest()[:16],
        code=tracking.code_version(),
    )


def reconcile(recipe: Recipe) -> list[str]:
    """Runs of this recipe left RUNNING by a dead process are marked FAILED, with the reason."""
    stale = tracking.fail_stale_runs(recipe.name)
    if stale:
        logger.warning("Marked %d run(s) left RUNNING by a dead process as FAILED: %s", len(stale), stale)
    return stale


def unchanged_since(recipe: Recipe, fingerprints: Fingerprints) -> str | None:
    """The last completed pipeline run, if it had the same data, recipe and code (else None)."""
    if fingerprints.data is None:
        return None
    experiment = tracking.client().get_experiment_by_name(recipe.name)
    if experiment is None:
        return None
    last = tracking.client().search_runs(
        [experiment.experiment_id],
        "attributes.status = 'FINISHED' and tags.`skillops.kind` = 'pipeline'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if last and all(last[0].data.tags.get(key) == value for key, value in fingerprints.tags().items()):
        return last[0].info.run_id
    return None


def record_skip(recipe: Recipe, fingerprints: Fingerprints, previous_run_id: str) -> str:
    """A short FINISHED run that says why nothing was trained, next to the runs that were."""
    reason = (
        f"data, recipe and code are those of run {previous_run_id}: nothing to retrain (force=True retrains anyway)"
    )
    run_id = tracking.start_run(
        recipe.name,
        f"{recipe.name} (skipped)",
        {},
        {
            **fingerprints.tags(),
            "skillops.kind": "skip",
            "skillops.skip_reason": reason,
            "skillops.same_as_run": previous_run_id,
        },
    )
    tracking.end_run(run_id)
    return run_id


def start(recipe: Recipe, fingerprints: Fingerprints) -> str:
    """Open the pipeline's MLflow run with everything needed to reproduce or compare it."""
    versions = {f"version.{lib}": metadata.version(lib) for lib in TRACKED_LIBRARIES}
    params = {
        "recipe": recipe.name,
        "base_model": recipe.base_model,
        "data.format": recipe.data.format,
        "data.path": recipe.data.path,
        "data.shape": recipe.data.training_shape,
        **{f"loss.{k}": v for k, v in recipe.loss.model_dump().items()},
        **{f"prompts.{k}": repr(v) for k, v in recipe.prompts.model_dump().items()},
        **{f"training.{k}": v for k, v in recipe.training.model_dump().items()},
        **{f"evaluation.{k}": v for k, v in recipe.evaluation.model_dump().items()},
        **{f"promotion.{k}": v for k, v in recipe.promotion.model_dump().items()},
        "search.n_trials": recipe.search.n_trials,
    }
    tags = {
        **fingerprints.tags(),
        "skillops.kind": "pipeline",
        "skillops.python": platform.python_version(),
        **versions,
    }
    run_id = tracking.start_run(recipe.name, recipe.name, params, tags)
    recipe_file = output_dir(run_id) / "recipe.json"
    recipe_file.parent.mkdir(parents=True, exist_ok=True)
    recipe_file.write_text(recipe.model_dump_json(indent=1), "utf-8")
    tracking.log_artifact(run_id, recipe_file)
    return run_id


def attempt_dir(fingerprints: Fingerprints) -> Path:
    """Tuning results and training checkpoints of one (data, recipe, code): a run that crashed
    and is started again finds them here and resumes instead of starting over."""
    return outputs_root() / "attempts" / fingerprints.attempt


def finish(fingerprints: Fingerprints) -> None:
    """The attempt succeeded: its checkpoints are no longer needed (the model is in the registry)."""
    shutil.rmtree(attempt_dir(fingerprints), ignore_errors=True)


def outputs_root() -> Path:
    """Work folders, git-ignored: outputs/ (SKILLOPS_OUTPUTS_DIR elsewhere)."""
    return Path(os.environ.get("SKILLOPS_OUTPUTS_DIR", "outputs")).resolve()


def output_dir(run_id: str) -> Path:
    """The run's work folder (prepared data, validation reports, charts): outputs/<run id>."""
    return outputs_root() / run_id


def check_inputs(recipe: Recipe, run_id: str | None = None) -> ValidationReport:
    """Check the recipe's raw data against its suites and checks; the report is saved (markdown
    and HTML) to the run, passed or not. `require(report)` is what stops the pipeline."""
    report = validate_recipe_data(recipe)
    if run_id:
        _log_report(report, run_id, "inputs")
    return report


def _log_report(report: ValidationReport, run_id: str, name: str) -> None:
    directory = output_dir(run_id) / "validation"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.md").write_text(report.markdown(), "utf-8")
    (directory / f"{name}.html").write_text(report.html(), "utf-8")
    for suffix in ("md", "html"):
        tracking.log_artifact(run_id, directory / f"{name}.{suffix}", "validation")


def prepare(recipe: Recipe, fingerprints: Fingerprints, run_id: str) -> PreparedData:
    """Split the data and freeze the evaluation sets (mining negatives when the recipe asks), then
    check what was built: leakage, cut texts, and the suites of the training and eval shapes."""
    fingerprint = fingerprints.data or f"unversioned hub dataset {recipe.data.path}"
    task = tasks.build_task(recipe)
    if recipe.data.mine_negatives is not None:
        task = tasks.Task(tasks.mine_negatives(task.train, recipe), task.eval_sets, task.split)
    paths = tasks.write_task(task, output_dir(run_id) / "data", {"data_fingerprint": fingerprint})
    report = validate_prepared(task, recipe, paths)
    _log_report(report, run_id, "prepared")
    require(report)
    prepared = PreparedData(
        directory=paths.directory,
        data_fingerprint=fingerprint,
        # What the test scores depend on: the frozen set, the prompts and how it is scored.
        eval_fingerprint=tasks.fingerprint_files(
            [paths.eval_set("test")],
            extra=recipe.prompts.model_dump_json() + recipe.evaluation.model_dump_json(exclude={"batch_size"}),
        ),
        counts=task.counts,
    )
    tracking.log_params(
        run_id, {"data_fingerprint": prepared.data_fingerprint, "eval_fingerprint": prepared.eval_fingerprint}
    )
    tracking.log_metrics(run_id, {f"data_{k}": v for k, v in prepared.counts.items()})
    tracking.log_artifact(run_id, paths.manifest, "data")
    return prepared


def tune(recipe: Recipe, data: PreparedData, fingerprints: Fingerprints, run_id: str) -> dict:
    """The best trial's parameters; an attempt that crashed after tuning reuses its result."""
    saved = attempt_dir(fingerprints) / "best_params.json"
    if saved.is_file():
        best = json.loads(saved.read_text("utf-8"))
        tracking.set_tags(run_id, {"skillops.tuning": f"reused from the interrupted attempt {fingerprints.attempt}"})
        logger.info("Reusing the tuning result of the interrupted attempt: %s", best)
    else:
        best = run_search(recipe, data.paths, recipe.name, run_id, output_dir(run_id) / "tuning")
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(best), "utf-8")
    tracking.log_params(run_id, {f"best.{k}": v for k, v in best.items()})
    return best


def train(recipe: Recipe, data: PreparedData, params: dict, fingerprints: Fingerprints, run_id: str) -> Path:
    """Final training with the best parameters; returns the saved model folder.

    Checkpoints live in the attempt's folder: a run killed mid-training and started again resumes
    from the last checkpoint (logged as `resumed_from_step`). With `training.rounds` > 1, each
    round continues from the previous round's model and is scored on the validation set, so the
    run shows the curve over rounds (model card 000); finished rounds are not trained again.
    """
    config = recipe.training.model_copy(update=params)
    validation = scorer(data.paths.eval_set("validation"), recipe.evaluation, recipe.prompts)
    model, steps, round_scores = recipe.base_model, 0, []
    for number in range(1, config.rounds + 1):
        round_dir = attempt_dir(fingerprints) / "train" / (f"round-{number}" if config.rounds > 1 else "")
        result = train_model(
            model, data.paths.train, config, recipe.loss, recipe.prompts, round_dir, evaluator=validation
        )
        if result.resumed_from_step is not None:
            tracking.log_metrics(run_id, {"resumed_from_step": result.resumed_from_step}, step=number)
            tracking.set_tags(
                run_id,
                {"skillops.resumed": f"round {number} from step {result.resumed_from_step} of the interrupted attempt"},
            )
        tracking.log_loss_history(run_id, result.log_history, step_offset=steps)
        chart = loss_curve_chart(result.log_history, round_dir / "loss_curve.png", recipe.loss.name)
        tracking.log_artifact(run_id, chart, "charts" if config.rounds == 1 else f"charts/round-{number}")
        steps += result.steps
        if config.rounds > 1:
            scores = evaluate(
                load_model(str(result.model_dir)), data.paths.eval_set("validation"), recipe.evaluation, recipe.prompts
            )
            tracking.log_metrics(run_id, scores, prefix="round_validation_", step=number)
            round_scores.append(scores)
            logger.info(
                "Round %d/%d: validation %s %.4f",
                number,
                config.rounds,
                recipe.evaluation.primary_metric,
                scores[recipe.evaluation.primary_metric],
            )
        model = str(result.model_dir)
    if round_scores:
        chart = rounds_chart(round_scores, recipe.evaluation.primary_metric, output_dir(run_id) / "rounds.png")
        tracking.log_artifact(run_id, chart, "charts")
    return result.model_dir


def _cache_file(model_name: str, version: str, eval_fingerprint: str) -> Path:
    """Per-query scores of a registered version on one frozen test set, kept next to the store:
    a version's weights never change, so neither do its scores on the same set."""
    return tracking.store_dir() / "score-cache" / model_name / f"v{version}" / f"{eval_fingerprint}.json"


def champion_scores(recipe: Recipe, data: PreparedData, version: str) -> tuple[QueryScores, str]:
    """A registered version's per-query scores on this run's test set, and where they came from:
    the cache when that version was already scored on this snapshot, else scored now."""
    cached = _cache_file(recipe.registered_model_name, version, data.eval_fingerprint)
    if cached.is_file():
        return QueryScores.model_validate_json(
            cached.read_text("utf-8")
        ), f"cached scores of version {version} on eval snapshot {data.eval_fingerprint}"
    tags = tracking.client().get_model_version(recipe.registered_model_name, version).tags
    scored_on = tags.get("skillops.eval_fingerprint", "unknown")
    model = registry.load(registry.model_uri(recipe.registered_model_name, version))
    values = score_queries(model, data.paths.eval_set("test"), recipe.evaluation, recipe.prompts)
    _save_scores(cached, values)
    return (
        values,
        f"version {version} re-scored on eval snapshot {data.eval_fingerprint} (it was registered with scores on {scored_on})",
    )


def _save_scores(path: Path, values: QueryScores) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")  # concurrent runs may write the same entry
    temporary.write_text(values.model_dump_json(), "utf-8")
    temporary.replace(path)


def score(recipe: Recipe, data: PreparedData, candidate_dir: Path, run_id: str) -> Scores:
    """Base, candidate and current champion, per query, all on the same frozen test set."""
    test_set = data.paths.eval_set("test")
    base = score_queries(
        load_model(recipe.base_model, recipe.training.max_seq_length), test_set, recipe.evaluation, recipe.prompts
    )
    candidate = score_queries(load_model(str(candidate_dir)), test_set, recipe.evaluation, recipe.prompts)
    champion_version = registry.champion_version(recipe.registered_model_name)
    champion, source = champion_scores(recipe, data, champion_version) if champion_version else (None, None)
    scores = Scores(
        base=base, candidate=candidate, champion=champion, champion_version=champion_version, champion_source=source
    )
    metrics = recipe.evaluation.metric_names()
    for name, values in (("base", base), ("test", candidate), ("champion", champion)):
        if values is not None:
            tracking.log_metrics(run_id, values.aggregate(metrics), prefix=f"{name}_")
    return scores


def register(recipe: Recipe, data: PreparedData, candidate_dir: Path, scores: Scores, run_id: str) -> str:
    tags = {
        "skillops.recipe": recipe.name,
        "skillops.run_id": run_id,
        "skillops.data_fingerprint": data.data_fingerprint,
        "skillops.eval_fingerprint": data.eval_fingerprint,
        "skillops.git_commit": tracking.git_commit(),
        **{f"test_{k}": f"{v:.6f}" for k, v in scores.candidate.aggregate(recipe.evaluation.metric_names()).items()},
    }
    version = registry.register(candidate_dir, run_id, recipe.registered_model_name, tags, recipe.description)
    # A later run that finds this version as its champion, on the same snapshot, reads these
    # instead of encoding the test set again.
    _save_scores(_cache_file(recipe.registered_model_name, version, data.eval_fingerprint), scores.candidate)
    return version


def promote(recipe: Recipe, data: PreparedData, version: str, scores: Scores, run_id: str) -> Decision:
    """Judge the candidate against the champion of the moment, under the registry's lock.

    If another run moved the champion after this run's `score`, the new champion is judged
    against instead (its scores usually come from the cache: that run registered them)."""
    notes = {}

    def judge(champion: str | None) -> Decision:
        if champion is None:
            reference, name = scores.base, "base model"
        elif champion == scores.champion_version:
            reference, name = scores.champion, "champion"
        else:
            reference, notes["champion_source"] = champion_scores(recipe, data, champion)
            name = "champion"
        return decide(
            scores.candidate,
            reference,
            name,
            recipe.evaluation.primary_metric,
            recipe.evaluation.headline_metrics(),
            recipe.promotion,
            champion,
        )

    decision = registry.promote_if_better(recipe.registered_model_name, version, judge)
    tracking.set_tags(
        run_id,
        {
            "skillops.decision": "promoted" if decision.promote else "not promoted",
            "skillops.decision_reason": decision.reason,
            "skillops.model_version": version,
            "skillops.judged_against": decision.reference_version or "base model",
            **notes,
        },
    )
    if decision.p_value is not None:
        tracking.log_metrics(run_id, {"decision_p_value": decision.p_value, "decision_delta": decision.delta})
    return decision


def report(recipe: Recipe, data: PreparedData, version: str, scores: Scores, decision: Decision, run_id: str) -> str:
    """The evaluation report (markdown and JSON), per-query scores, the comparison chart and the
    model card, logged to MLflow; returns the report's markdown."""
    table = scores.table(recipe.evaluation.headline_metrics())
    champion = registry.champion_version(recipe.registered_model_name)
    text = summary(recipe.registered_model_name, version, table, decision, champion, tracking.ui_command())
    directory = output_dir(run_id)
    files = {
        "evaluation.md": text,
        "evaluation.json": json.dumps(
            {
                "model": recipe.registered_model_name,
                "version": version,
                "run_id": run_id,
                "champion_now": champion,
                "eval_fingerprint": data.eval_fingerprint,
                "data_fingerprint": data.data_fingerprint,
                "champion_scores": scores.champion_source,
                "scores": table,
                "decision": decision.model_dump(),
            },
            indent=1,
        ),
        "per_query.json": json.dumps(
            {
                name: values.model_dump()
                for name, values in (
                    ("base", scores.base),
                    ("candidate", scores.candidate),
                    ("champion", scores.champion),
                )
                if values
            }
        ),
        "model_card.md": model_card(
            recipe, version, data.counts, data.eval_fingerprint, table, decision, tracking.get_params(run_id)
        ),
    }
    for name, content in files.items():
        (directory / name).write_text(content, "utf-8")
    comparison_chart(table, directory / "comparison.png", f"Held-out test set ({recipe.evaluation.evaluator})")
    for name in (*files, "comparison.png"):
        tracking.log_artifact(run_id, directory / name, "report")
    return text
