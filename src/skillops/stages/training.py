"""train: the final training with the tuned parameters, its rounds, checkpoints kept in the store."""

from __future__ import annotations

import logging
from pathlib import Path

from skillops.config import TunedParams
from skillops.context import RunContext
from skillops.inputs.preparation import PreparedData
from skillops.judging.evaluation import evaluate, scorer
from skillops.stages.shared import starting_model
from skillops.tracking import runs
from skillops.tracking.reports import loss_curve_chart, rounds_chart
from skillops.training import checkpoints
from skillops.training.batches import false_negative_shares
from skillops.training.modeling import load_model
from skillops.training.trainer import Round, TrainingSpec, plan_steps, train_rounds

logger = logging.getLogger(__name__)


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
            runs.log_metrics(run.run_id, {"resumed_from_step": result.resumed_from_step}, step=done.number)
            runs.set_tags(
                run.run_id,
                {
                    "skillops.resumed": f"round {done.number} from step {result.resumed_from_step} of the interrupted attempt"
                },
            )
        runs.log_loss_history(run.run_id, result.log_history, step_offset=done.step_offset)
        chart = loss_curve_chart(result.log_history, result.model_dir.parent / "loss_curve.png", recipe.loss.name)
        runs.log_artifact(run.run_id, chart, "charts" if config.rounds == 1 else f"charts/round-{done.number}")
        if done.validation is not None:
            runs.log_metrics(run.run_id, done.validation, prefix="round_validation_", step=done.number)
            logger.info("Round %d/%d: validation %s %.4f", done.number, config.rounds, metric, done.validation[metric])

    from datasets import Dataset

    dataset = Dataset.from_parquet(str(data.paths.train))
    plan = plan_steps(dataset, config, recipe.loss)  # what the final training takes, as its log says
    runs.log_params(run.run_id, {"batches": plan.sampler, "steps_per_epoch": plan.steps_per_epoch})
    if recipe.loss.in_batch_negatives:  # what the batches' false negatives are, with and without the switch
        shares = false_negative_shares(
            dataset, config.batch_size, config.processes, config.taxonomy_aware_batches, config.seed
        )
        runs.log_metrics(run.run_id, shares)
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
        runs.log_metrics(run.run_id, uploads)
    if config.rounds > 1:
        chart = rounds_chart([done.validation for done in rounds], metric, run.output_dir / "rounds.png")
        runs.log_artifact(run.run_id, chart, "charts")
    return rounds[-1].result.model_dir
