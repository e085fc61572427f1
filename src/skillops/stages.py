"""One function per pipeline stage, each taking the run's context and small, serialisable values.

The order of the stages lives in one place only, the Prefect flow (`flows/train_esco.py`); the
CLI calls single stages. Nothing here knows about Prefect. Each stage is glue: the work is done
by the library module of its concern (preparation, tuning, training, evaluation, registry,
promotion, reports), and the stage logs what it did to the run's MLflow run.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import shutil
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pandas as pd

from skillops import (
    checkpoints,
    esco,
    gate,
    modeling,
    preparation,
    registry,
    score_cache,
    servers,
    serving,
    tracking,
    tuning,
    tuning_workers,
)
from skillops import index_churn as churn_of
from skillops.batches import false_negative_shares
from skillops.config import Recipe, TunedParams, load_recipe
from skillops.context import Fingerprints, FlowRun, RunContext
from skillops.context import fingerprint as fingerprint  # a stage of its own: the flow calls stages.fingerprint
from skillops.errors import RecipeError
from skillops.evaluation import GoldenScores, QueryScores, Scores, evaluate, score_sets, scorer
from skillops.modeling import load_model
from skillops.paths import outputs_root
from skillops.preparation import PreparedData
from skillops.promotion import Decision, ModelPolicy, choose_variant
from skillops.reports import card_summary, loss_curve_chart, rounds_chart, write_evaluation_report
from skillops.training import Round, TrainingSpec, check_processes, plan_steps, train_rounds
from skillops.tuning import TrialWorker
from skillops.tuning import tune as run_search
from skillops.tuning_workers import PlaceWorkers
from skillops.validation import (
    DataDocs,
    ValidationReport,
    data_docs,
    require,
    validate_prepared,
    validate_recipe_data,
)

logger = logging.getLogger(__name__)

TRACKED_LIBRARIES = ("sentence-transformers", "transformers", "torch", "mlflow", "prefect", "optuna")


def reconcile(
    recipe: Recipe,
    flow_run: FlowRun | None = None,
    flow_run_states: Callable[[list[str]], dict[str, str]] | None = None,
) -> list[str]:
    """Runs of this recipe left RUNNING by a run that died are marked FAILED, with the reason
    (`tracking.fail_stale_runs`: by their Prefect flow run's state, else by their process; a run
    of `flow_run` itself is an earlier attempt of this retried flow run)."""
    stale = tracking.fail_stale_runs(
        recipe.name, flow_run.api if flow_run else None, flow_run_states, flow_run.id if flow_run else None
    )
    if stale:
        logger.warning("Marked %d run(s) left RUNNING by a dead process as FAILED: %s", len(stale), stale)
    return stale


def unchanged_since(recipe: Recipe, fingerprints: Fingerprints) -> str | None:
    """The last completed pipeline run, if it had the same data, recipe and code (else None)."""
    if fingerprints.data is None:
        return None  # a hub dataset: skillops cannot see whether it changed
    return tracking.last_run_with(recipe.name, fingerprints.tags())


def record_skip(recipe: Recipe, fingerprints: Fingerprints, previous_run_id: str) -> str:
    return tracking.record_skip(recipe.name, fingerprints.tags(), previous_run_id)


def start(
    recipe: Recipe,
    fingerprints: Fingerprints,
    flow_run: FlowRun | None = None,
    recipe_source: str | None = None,
    overrides: dict | None = None,
) -> RunContext:
    """Open the pipeline's MLflow run with everything needed to reproduce or compare it: the
    recipe as named (`recipe_source`) and the overrides it ran with, and the flow run it belongs
    to when there is one on a shared server (the UI's Source column names it)."""
    versions = {f"version.{lib}": metadata.version(lib) for lib in TRACKED_LIBRARIES}
    # A precision this machine cannot train in is refused here, before the run or any data.
    precision = modeling.precision_name(modeling.mixed_precision(recipe.training.precision))
    params = {
        "recipe": recipe.name,
        "base_model": recipe.base_model,
        "data.format": recipe.data.format,
        "data.path": recipe.data.path,
        "data.shape": recipe.data.training_shape,
        **(
            {f"data.mine_negatives.{k}": v for k, v in recipe.data.mine_negatives.model_dump().items()}
            if recipe.data.mine_negatives
            else {"data.mine_negatives": None}
        ),
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
        "skillops.precision": f"{precision} on {modeling.device()}",
        **versions,
        "skillops.overrides": json.dumps(overrides or {}),
        checkpoints.ATTEMPT_TAG: fingerprints.attempt,
        **_data_release(recipe),
        "mlflow.source.name": (flow_run.deployment or flow_run.name) if flow_run else "flows/train_esco.py",
        "mlflow.source.type": "JOB" if flow_run else "LOCAL",
        "mlflow.source.git.commit": fingerprints.code.split("+")[0],
        # Where the library that ran was imported from (a worker's: its clone at that commit).
        "skillops.library": str(Path(__file__).resolve().parent),
        **({tracking.FLOW_RUN_TAG: flow_run.id, tracking.PREFECT_API_TAG: flow_run.api} if flow_run else {}),
    }
    remote = _remote_gate()
    if remote is not None:  # on a team's stack, the authority makes the experiment this account may write
        remote.open_experiment(recipe.name)
    run = RunContext(
        recipe=recipe,
        fingerprints=fingerprints,
        run_id=tracking.start_run(recipe.name, recipe.name, params, tags),
        recipe_source=recipe_source,
    )
    tracking.keep_alive(run.run_id)  # a retry of this flow run can tell it from a dead one
    recipe_file = run.output_dir / "recipe.json"
    recipe_file.parent.mkdir(parents=True, exist_ok=True)
    recipe_file.write_text(recipe.model_dump_json(indent=1), "utf-8")
    try:  # the run's first file: an artifact store that takes none stops the run here, before any work
        tracking.log_artifact(run.run_id, recipe_file)
    except Exception as error:
        if explain(error, recipe) is not error:  # the tracking server is away: say that instead
            raise
        location = tracking.client().get_run(run.run_id).info.artifact_uri
        problem = RecipeError(
            f"The run's artifact store {location} did not take a file ({type(error).__name__}: {error}), so "
            "its checkpoints, model and reports could not be kept; nothing was trained. Fix: set "
            "SKILLOPS_ARTIFACT_ROOT to a location this machine can write and every machine reads (a shared "
            "folder, s3://...), or leave it unset for the store's own (mlflow-artifacts:/ with a tracking server)."
        )
        fail(run, problem, recipe)
        raise problem from None
    return run


def require_promotion_lock(recipe: Recipe, shared_lock: str | None) -> None:
    """Before any compute: a run that could not promote safely says so now, not after training
    (`shared_lock` names the lock every machine takes, when the orchestrator has one)."""
    registry.require_shared_lock(shared_lock)


def run_link(run: RunContext, artifact: str | None = None) -> str:
    """The run's page in the MLflow UI, or one of its artifacts there."""
    return tracking.run_url(run.run_id, artifact)


def explain(error: BaseException, recipe: Recipe) -> BaseException:
    """The error to show: a `ServerError` naming the server and the setting when a server the run
    needs did not answer in time, else `error` itself."""
    addresses = {
        "MLflow tracking server": tracking.tracking_uri(),
        "Optuna database": tuning.storage_url(recipe.search, None) or "",
        "Prefect server": os.environ.get("PREFECT_API_URL", ""),
    }
    return servers.explain(error, addresses) or error


def fail(run: RunContext, error: BaseException, recipe: Recipe) -> BaseException:
    """Close the run FAILED with what went wrong (MLflow would leave it FINISHED, or RUNNING), and
    return the error to show (`explain`). With the tracking server away the run stays RUNNING,
    and the next start closes it."""
    explained = explain(error, recipe)
    try:
        tracking.end_run(run.run_id, failure=f"{type(explained).__name__}: {explained}")
    except Exception as closing:
        logger.warning("Could not close run %s (%s); the next start marks it FAILED", run.run_id, closing)
    return explained


def _data_release(recipe: Recipe) -> dict[str, str]:
    """Which taxonomy release the model learns (ESCO data only), as a tag of the run and version."""
    return {ESCO_VERSION_TAG: esco.release(recipe.data)} if recipe.data.format == "esco" else {}


ESCO_VERSION_TAG = "skillops.esco_version"


def finish(run: RunContext) -> None:
    """Close the run FINISHED; the attempt succeeded, so its checkpoints are no longer needed (the
    model is in the registry)."""
    tracking.end_run(run.run_id)
    shutil.rmtree(run.attempt_dir, ignore_errors=True)


def join_study(ticket: tuning_workers.StudyTicket, name: str) -> int:
    """Run trials of a pipeline's study here, as a worker of the pool, in a work folder of its own
    that is removed afterwards; returns how many trials this worker finished."""
    workdir = outputs_root() / "trial-workers" / name.replace(" ", "-")
    try:
        return tuning_workers.join_study(ticket, workdir, name)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def validate_data(run: RunContext) -> ValidationReport:
    """Check the recipe's raw data against its suites and checks; the report is saved (markdown
    and HTML) to the run, passed or not. `require(report)` is what stops the pipeline."""
    with data_docs(run.output_dir / "validation" / "gx-inputs") as docs:
        report = validate_recipe_data(run.recipe)
    _log_report(report, run, "inputs", docs)
    return report


def data_docs_path(name: str) -> str:
    """Where a validation pass's Great Expectations Data Docs are in the run's artifacts."""
    return f"validation/data_docs/{name}"


def data_docs_link(run: RunContext, name: str) -> str:
    """A validation pass's Data Docs in the MLflow UI."""
    return run_link(run, f"{data_docs_path(name)}/index.html")


def _log_report(report: ValidationReport, run: RunContext, name: str, docs: DataDocs) -> None:
    """The plain report (markdown for terminals, HTML) and GX's own Data Docs site, to the run."""
    directory = run.output_dir / "validation"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.md").write_text(report.markdown(), "utf-8")
    (directory / f"{name}.html").write_text(report.html(), "utf-8")
    for suffix in ("md", "html"):
        tracking.log_artifact(run.run_id, directory / f"{name}.{suffix}", "validation")
    tracking.log_artifacts(run.run_id, docs.build(), data_docs_path(name))


def prepare_data(run: RunContext) -> PreparedData:
    """Split the data and freeze the evaluation sets (mining negatives when the recipe asks), then
    check what was built: leakage, cut texts, and the suites of the training and eval shapes."""
    recipe = run.recipe
    fingerprint = run.fingerprints.data or f"unversioned hub dataset {recipe.data.path}"
    task = preparation.with_mined_negatives(preparation.build_task(recipe), recipe)
    paths = preparation.write_task(task, run.output_dir / "data", {"data_fingerprint": fingerprint})
    with data_docs(run.output_dir / "validation" / "gx-prepared") as docs:
        report = validate_prepared(task, recipe, paths)
    _log_report(report, run, "prepared", docs)
    require(report)
    prepared = PreparedData(
        directory=paths.directory,
        data_fingerprint=fingerprint,
        # What the gate's scores depend on: the frozen test and golden sets, the prompts and how
        # they are scored.
        eval_fingerprint=preparation.fingerprint_files(
            [paths.eval_set(part) for part in _gate_sets(recipe)],
            extra=recipe.prompts.model_dump_json() + recipe.evaluation.model_dump_json(exclude={"batch_size"}),
        ),
        counts=task.counts,
    )
    tracking.log_params(
        run.run_id, {"data_fingerprint": prepared.data_fingerprint, "eval_fingerprint": prepared.eval_fingerprint}
    )
    tracking.log_metrics(run.run_id, {f"data_{k}": v for k, v in prepared.counts.items()})
    tracking.log_artifact(run.run_id, paths.manifest, "data")
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
    tracking.log_datasets(run.run_id, datasets)


def starting_model(run: RunContext) -> tuple[str, str | None]:
    """The weights tuning and training start from, and the registered model they are when they
    are one: the base model, or with `training.init_from: champion` the current champion, fetched
    once per attempt into its folder (a resumed attempt keeps the champion it started from)."""
    recipe = run.recipe
    champion = registry.champion_version(recipe.registered_model_name)
    if recipe.training.init_from == "base" or champion is None:
        return recipe.base_model, None
    fetched = run.attempt_dir / "init-from-champion"
    if not (fetched / "version.txt").is_file():  # written last: a fetch cut short is fetched again
        registry.fetch(registry.model_uri(recipe.registered_model_name, champion), fetched)
        (fetched / "version.txt").write_text(champion, "utf-8")
    version = (fetched / "version.txt").read_text("utf-8")
    tracking.set_tags(run.run_id, {"skillops.init_from": f"champion version {version}"})
    logger.info("Training starts from the champion, version %s of %s", version, recipe.registered_model_name)
    return str(fetched), registry.model_uri(recipe.registered_model_name, version)


def tune(run: RunContext, data: PreparedData, place_workers: PlaceWorkers | None = None) -> TunedParams | None:
    """The best trial's parameters (None when the search is off). The study is the attempt's: a run that crashed during tuning
    continues it (finished trials kept), one that crashed after tuning reuses its result.
    `place_workers` starts trial workers in the orchestrator's pool (`search.workers: pool`)."""
    check_processes(run.recipe.training)  # the final training's processes, before any trial trains
    tuning_workers.check_parallel(run.recipe.search, run.attempt_dir)
    restored = checkpoints.restore(run.run_id, run.recipe.name, run.fingerprints.attempt, run.attempt_dir)
    if restored:
        tracking.set_tags(run.run_id, {"skillops.restored_from": f"run {restored} (the attempt's files in the store)"})
    saved = run.attempt_dir / "best_params.json"
    if saved.is_file():
        best = TunedParams.model_validate_json(saved.read_text("utf-8"))
        tracking.set_tags(
            run.run_id, {"skillops.tuning": f"reused from the interrupted attempt {run.fingerprints.attempt}"}
        )
        logger.info("Reusing the tuning result of the interrupted attempt: %s", best)
    else:
        start, init_model = starting_model(run)
        worker = TrialWorker(
            recipe=run.recipe.model_copy(update={"base_model": start}),
            data_dir=data.directory,
            experiment=run.recipe.name,
            parent_run_id=run.run_id,
            output_dir=run.output_dir / "tuning",
            study_name=f"{run.recipe.name}-{run.fingerprints.attempt}",
            attempt_dir=run.attempt_dir,
            init_model=init_model,
        )
        best = run_search(
            worker,
            first_trial=_champion_params(run.recipe),
            start_workers=tuning_workers.starter(run.recipe.search, place_workers),
        )
        if best is None:  # the search is off: the recipe's settings as they are
            return None
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(best.model_dump_json(), "utf-8")
        tracking.log_artifact(run.run_id, saved, checkpoints.ARTIFACT_PATH)  # a restart elsewhere reuses it
    tracking.log_params(run.run_id, {f"best.{k}": v for k, v in best.model_dump().items()})
    return best


def _champion_params(recipe: Recipe) -> TunedParams | None:
    """What the current champion was trained with: the search tries it first."""
    champion = registry.champion_version(recipe.registered_model_name)
    return registry.trained_with(recipe.registered_model_name, champion) if champion else None


def train(run: RunContext, data: PreparedData, params: TunedParams | None) -> Path:
    """Final training with the best parameters; returns the saved model folder.

    Checkpoints live in the attempt's folder: a run killed mid-training and started again resumes
    from the last checkpoint (logged as `resumed_from_step`). With `training.rounds` > 1, each
    round continues from the previous round's model and is scored on the validation set, so the
    run shows the curve over rounds (model card 000).
    """
    recipe = run.recipe
    config = recipe.training.tuned(params)
    validation_set = data.paths.eval_set("validation")
    metric = recipe.evaluation.primary_metric

    def log_round(done: Round) -> None:
        result = done.result
        mirror.keep(result.model_dir.parent)  # the finished round: a restart elsewhere does not train it again
        if result.resumed_from_step is not None:
            tracking.log_metrics(run.run_id, {"resumed_from_step": result.resumed_from_step}, step=done.number)
            tracking.set_tags(
                run.run_id,
                {
                    "skillops.resumed": f"round {done.number} from step {result.resumed_from_step} of the interrupted attempt"
                },
            )
        tracking.log_loss_history(run.run_id, result.log_history, step_offset=done.step_offset)
        chart = loss_curve_chart(result.log_history, result.model_dir.parent / "loss_curve.png", recipe.loss.name)
        tracking.log_artifact(run.run_id, chart, "charts" if config.rounds == 1 else f"charts/round-{done.number}")
        if done.validation is not None:
            tracking.log_metrics(run.run_id, done.validation, prefix="round_validation_", step=done.number)
            logger.info("Round %d/%d: validation %s %.4f", done.number, config.rounds, metric, done.validation[metric])

    from datasets import Dataset

    dataset = Dataset.from_parquet(str(data.paths.train))
    plan = plan_steps(dataset, config, recipe.loss)  # what the final training takes, as its log says
    tracking.log_params(run.run_id, {"batches": plan.sampler, "steps_per_epoch": plan.steps_per_epoch})
    if recipe.loss.in_batch_negatives:  # what the batches' false negatives are, with and without the switch
        shares = false_negative_shares(
            dataset, config.batch_size, config.processes, config.taxonomy_aware_batches, config.seed
        )
        tracking.log_metrics(run.run_id, shares)
    spec = TrainingSpec.for_recipe(
        recipe, data.paths.train, run.attempt_dir / "train", config, starting_model(run)[0]
    ).model_copy(update={"stage_checkpoints": True})  # for the checkpoint mirror below
    with checkpoints.Mirror(run.run_id, run.attempt_dir) as mirror:
        rounds = train_rounds(
            spec,
            evaluator=scorer(validation_set, recipe.evaluation, recipe.prompts),
            score_round=lambda model_dir: evaluate(
                load_model(str(model_dir)), validation_set, recipe.evaluation, recipe.prompts
            ),
            on_round=log_round,
        )
    if mirror.seconds:  # what keeping the checkpoints in the store took, in the uploading thread
        uploads = {"checkpoint_uploads": len(mirror.seconds), "checkpoint_upload_seconds_max": max(mirror.seconds)}
        tracking.log_metrics(run.run_id, uploads)
    if config.rounds > 1:
        chart = rounds_chart([done.validation for done in rounds], metric, run.output_dir / "rounds.png")
        tracking.log_artifact(run.run_id, chart, "charts")
    return rounds[-1].result.model_dir


def _gate_sets(recipe: Recipe) -> list[str]:
    """The eval sets the gate judges on: the test split, then each golden set."""
    return ["test", *(preparation.golden_part(golden.name) for golden in recipe.evaluation.golden)]


def _score_sets(run: RunContext, data: PreparedData, model, eval_sets: list[str]) -> dict[str, QueryScores]:
    """One model on the run's gate sets, each text encoded once across them (they share their
    documents: for the ESCO recipe, the whole vocabulary)."""
    recipe = run.recipe
    paths = {eval_set: data.paths.eval_set(eval_set) for eval_set in eval_sets}
    return score_sets(model, paths, recipe.evaluation, recipe.prompts)


def _version_scores(run: RunContext, data: PreparedData, version: str) -> tuple[dict[str, QueryScores], str]:
    """A registered version's per-query scores on this run's gate sets (cached per snapshot)."""
    return score_cache.version_scores(
        run.recipe.registered_model_name,
        version,
        data.eval_fingerprint,
        _gate_sets(run.recipe),
        lambda model, eval_sets: _score_sets(run, data, model, eval_sets),
    )


def _golden(scores: dict[str, QueryScores]) -> dict[str, QueryScores]:
    """Golden set name -> scores, from eval set name -> scores."""
    prefix = preparation.golden_part("")
    return {name.removeprefix(prefix): values for name, values in scores.items() if name.startswith(prefix)}


def _base_scores(run: RunContext, data: PreparedData, eval_sets: list[str]) -> dict[str, QueryScores]:
    """The base model's per-query scores, cached on this machine per snapshot (`score_cache`)."""
    recipe = run.recipe
    scores, note = score_cache.base_scores(
        recipe.base_model,
        recipe.training.max_seq_length,
        data.eval_fingerprint,
        eval_sets,
        lambda sets: _score_sets(run, data, load_model(recipe.base_model, recipe.training.max_seq_length), sets),
    )
    if note:
        tracking.set_tags(run.run_id, {"skillops.base_scores": note})
    return scores


@functools.lru_cache(maxsize=1)
def _candidate(model_dir: Path):
    """The trained model, loaded once for scoring it and exporting its variants; dropped once
    registered."""
    return load_model(str(model_dir))


def _served_variants(run: RunContext, data: PreparedData, candidate_dir: Path, fp32: dict[str, QueryScores]):
    """The candidate's ONNX variants (`serving.variants`), built into its folder and scored on the
    gate's sets like fp32; returns the variant it is served as, its scores and the checks."""
    recipe, primary = run.recipe, run.recipe.evaluation.primary_metric
    eval_sets = list(fp32)
    variants = recipe.serving.variants
    built = {v: candidate_dir / serving.FILES[v] for v in variants if (candidate_dir / serving.FILES[v]).is_file()}
    if len(built) < len(variants):  # exported once per attempt: a resumed run finds them
        built = serving.export(_candidate(candidate_dir), candidate_dir, variants)
    scored = {v: _score_sets(run, data, serving.load(candidate_dir, v), eval_sets) for v in built}
    served, checks = choose_variant(
        {s: fp32[s].metric(primary) for s in eval_sets},
        {v: {s: values[s].metric(primary) for s in eval_sets} for v, values in scored.items()},
        recipe.serving.prefer,
        recipe.serving.max_relative_drop,
        primary,
    )
    for variant, values in scored.items():
        tracking.log_metrics(
            run.run_id, values["test"].aggregate(recipe.evaluation.metric_names()), prefix=f"{variant}_"
        )
    tracking.set_tags(run.run_id, {"skillops.served_variant": served})
    return served, scored.get(served, fp32), checks


def evaluate_models(run: RunContext, data: PreparedData, candidate_dir: Path) -> Scores:
    """Base, candidate and current champion, per query, all on the same frozen test set and on
    every golden set. The candidate is judged as it will be served: its fastest variant within
    `serving.max_relative_drop` of its fp32 weights (fp32 itself when none is)."""
    recipe = run.recipe
    eval_sets = _gate_sets(recipe)
    base = _base_scores(run, data, eval_sets)
    fp32 = _score_sets(run, data, _candidate(candidate_dir), eval_sets)
    tracking.log_metrics(run.run_id, fp32["test"].aggregate(recipe.evaluation.metric_names()), prefix="fp32_")
    served, candidate, checks = _served_variants(run, data, candidate_dir, fp32)
    champion_version = registry.champion_version(recipe.registered_model_name)
    champion, source = _version_scores(run, data, champion_version) if champion_version else ({}, None)
    golden_champion = _golden(champion)
    scores = Scores(
        base=base["test"],
        candidate=candidate["test"],
        champion=champion.get("test"),
        champion_version=champion_version,
        champion_source=source,
        golden={
            name: GoldenScores(base=values, candidate=_golden(candidate)[name], champion=golden_champion.get(name))
            for name, values in _golden(base).items()
        },
        served_variant=served,
        variants=checks,
    )
    metrics = recipe.evaluation.metric_names()
    for name, values in (("base", base), ("test", candidate), ("champion", champion)):
        for eval_set, per_query in values.items():
            prefix = f"{name}_" if eval_set == "test" else f"{name}_golden_{eval_set.removeprefix('golden-')}_"
            tracking.log_metrics(run.run_id, per_query.aggregate(metrics), prefix=prefix)
    return scores


def register(run: RunContext, data: PreparedData, candidate_dir: Path, scores: Scores) -> str:
    recipe = run.recipe
    tags = {
        "skillops.recipe": recipe.name,
        "skillops.run_id": run.run_id,
        "skillops.data_fingerprint": data.data_fingerprint,
        "skillops.eval_fingerprint": data.eval_fingerprint,
        "skillops.git_commit": tracking.git_commit(),
        **_data_release(recipe),
        **{f"test_{k}": f"{v:.6f}" for k, v in scores.candidate.aggregate(recipe.evaluation.metric_names()).items()},
    }
    name = recipe.registered_model_name
    tags["skillops.variant_checks"] = json.dumps([check.model_dump() for check in scores.variants])
    remote = _remote_gate()
    if remote is not None:  # the authority opens the model (its first policy) and its candidates model
        remote.open(name, run.recipe_source or recipe.name, run.fingerprints.code)
    version = registry.register(candidate_dir, run.run_id, name, tags, recipe.description, scores.served_variant)
    _candidate.cache_clear()
    # A later run that finds this version as its champion, on the same snapshot, reads these
    # instead of encoding the test and golden sets again.
    candidate = {"test": scores.candidate} | {
        preparation.golden_part(golden): values.candidate for golden, values in scores.golden.items()
    }
    score_cache.save_scores(run.run_id, data.eval_fingerprint, candidate)
    return version


class _RunEvidence:
    """What the local gate judges from: this run's per-query scores of the candidate (as served),
    the base model and the champion it scored, on its frozen sets; a champion that moved since is
    scored on the same sets (from the cache when its run saved them)."""

    def __init__(self, run: RunContext, data: PreparedData, scores: Scores) -> None:
        self.run, self.data, self.scores = run, data, scores

    def candidate(self) -> dict[str, QueryScores]:
        golden = {preparation.golden_part(n): v.candidate for n, v in self.scores.golden.items()}
        return {"test": self.scores.candidate, **golden}

    def reference(self, champion: str | None) -> tuple[dict[str, QueryScores], str | None]:
        scores = self.scores
        if champion is None:
            return {"test": scores.base, **{preparation.golden_part(n): v.base for n, v in scores.golden.items()}}, None
        if champion == scores.champion_version:
            golden = {preparation.golden_part(n): v.champion for n, v in scores.golden.items()}
            return {"test": scores.champion, **golden}, None
        return _version_scores(self.run, self.data, champion)


def _remote_gate():
    """The team's promotion authority when this process works with one (None: a store of its own)."""
    url = gate.remote_url()
    if url is None:
        return None
    from skillops.gate.client import RemoteGate

    return RemoteGate(url)


def promote(
    run: RunContext, data: PreparedData, version: str, scores: Scores, shared_lock: str | None = None
) -> Decision:
    """Ask the gate to judge the candidate against the champion of the moment: the team's
    promotion authority, which scores it itself, or on one machine the local authority, which
    judges from this run's scores under the registry's lock (`shared_lock`: one the caller holds
    for every machine; see `registry`). The model's first policy is the recipe's as written
    (before this run's overrides), so overrides can never set it."""
    recipe = run.recipe
    name = recipe.registered_model_name
    remote = _remote_gate()
    if remote is not None:
        decision = remote.judge(name, version, ModelPolicy.of_recipe(recipe))
    else:
        registry.require_shared_lock(shared_lock)
        authority = gate.local(shared_lock)
        written = load_recipe(run.recipe_source) if run.recipe_source else recipe
        why = f"first policy of the model: recipe {run.recipe_source or recipe.name} as written"
        authority.first_policy(name, ModelPolicy.of_recipe(written), why)
        decision = authority.judge(name, version, _RunEvidence(run, data, scores), ModelPolicy.of_recipe(recipe))
    tracking.set_tags(
        run.run_id,
        {
            "skillops.decision": "promoted" if decision.promote else "not promoted",
            "skillops.decision_reason": decision.reason,
            "skillops.model_version": version,
            "skillops.judged_against": decision.reference_version or "base model",
            **({"skillops.served_version": decision.served_version} if decision.served_version else {}),
        },
    )
    if decision.p_value is not None:
        tracking.log_metrics(run.run_id, {"decision_p_value": decision.p_value, "decision_delta": decision.delta})
    return decision


def index_churn(
    run: RunContext, data: PreparedData, candidate_dir: Path, scores: Scores, decision: Decision
) -> churn_of.Churn | None:
    """After a promotion: the new champion, as it is served, embeds the recipe's documents into
    `index/embeddings.parquet` of its run (id, text, vector, model version), and the neighbourhoods
    of those documents are compared with the previous champion's (its run's embeddings, else
    encoded now). None when nothing was promoted; no comparison for a first champion."""
    if not decision.promote:
        return None
    recipe = run.recipe
    documents = pd.read_parquet(data.paths.documents)

    def embeddings(model, version: str):
        return churn_of.embed(model, documents, version, recipe.prompts.document, recipe.evaluation.batch_size)

    current = embeddings(serving.load(candidate_dir, scores.served_variant), decision.served_version)
    tracking.log_artifact(run.run_id, churn_of.write(current, run.output_dir / "index" / EMBEDDINGS), "index")
    previous_version = decision.reference_version
    if previous_version is None:
        return None
    name = recipe.registered_model_name
    previous = _logged_embeddings(name, previous_version, run.output_dir / "index" / "previous")
    if previous is None or not set(documents["id"]) <= set(previous["id"]):
        previous = embeddings(
            registry.load(registry.model_uri(name, previous_version), as_served=True), previous_version
        )
    churn = churn_of.churn(previous, current)
    tracking.log_metrics(run.run_id, churn.metrics())
    return churn


EMBEDDINGS = "embeddings.parquet"


def _logged_embeddings(name: str, version: str, folder: Path):
    """The documents' embeddings the run of a served version logged (None if it logged none)."""
    run_id = tracking.client().get_model_version(name, version).run_id
    try:
        return pd.read_parquet(tracking.download_artifacts(run_id, f"index/{EMBEDDINGS}", folder))
    except Exception:  # an older version, or one registered outside the flow: encoded instead
        return None


def report(
    run: RunContext,
    data: PreparedData,
    version: str,
    scores: Scores,
    decision: Decision,
    churn: churn_of.Churn | None = None,
) -> str:
    """The evaluation report, per-query scores, comparison chart and model card, logged under
    `report/`; returns the report's markdown (with the index churn after a promotion)."""
    text, files = write_evaluation_report(
        run.output_dir,
        run.recipe,
        version,
        run.run_id,
        data,
        scores,
        decision,
        registry.champion_version(run.recipe.registered_model_name),
        tracking.get_params(run.run_id),
        tracking.ui_command(run.recipe.name),
        churn,
    )
    for path in files:
        tracking.log_artifact(run.run_id, path, "report")
    table = scores.table(run.recipe.evaluation.reported_metrics())
    summary = card_summary(run.recipe, table, decision, run.run_id)
    # On a team's stack the served version is the promotion authority's, which describes it itself.
    served = decision.served_version if _remote_gate() is None else None
    registry.describe(run.recipe.registered_model_name, version, summary, served)
    return text
