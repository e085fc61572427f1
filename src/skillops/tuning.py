"""Optuna search over learning rate, batch size and warmup, judged on the validation set only.

Each trial is an MLflow child run of the pipeline's run. The HF trainer's own
`hyperparameter_search` cannot take Optuna callbacks or log child runs, so the loop is written
here; pruning happens at the trainer's evaluation steps through a callback.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path
from typing import Any

from skillops.config import Recipe
from skillops.evaluation import scorer
from skillops.preparation import PreparedPaths
from skillops.reports import optuna_charts
from skillops.tracking import end_run, log_artifact, log_loss_history, log_metrics, metric_name, set_tags, start_run

logger = logging.getLogger(__name__)


def _pruning_callback(trial, evaluator, metric: str, run_id: str):
    """Reports each validation score to Optuna and MLflow, and stops a trial Optuna gives up on."""
    import optuna
    from transformers import TrainerCallback

    class PruneOnValidation(TrainerCallback):
        def __init__(self) -> None:
            self.last_score: float | None = None
            self.last_step = -1

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            scores = {metric_name(k.removeprefix("eval_")): v for k, v in (metrics or {}).items()}
            if metric not in scores:
                return
            self.last_score, self.last_step = float(scores[metric]), state.global_step
            log_metrics(run_id, {metric: self.last_score}, prefix="validation_", step=state.global_step)
            trial.report(self.last_score, state.global_step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation {metric} {self.last_score:.4f} at step {state.global_step}")

        def on_train_end(self, args, state, control, model=None, **kwargs):
            if state.global_step != self.last_step:  # score the final weights too
                scores = evaluator(model)
                self.last_score, self.last_step = float(scores[metric]), state.global_step
                log_metrics(run_id, {metric: self.last_score}, prefix="validation_", step=state.global_step)

    return PruneOnValidation()


def tune(recipe: Recipe, data: PreparedPaths, experiment: str, parent_run_id: str, output_dir: Path) -> dict[str, Any]:
    """Run the search; returns the best trial's parameters ({} when the search is switched off)."""
    search = recipe.search
    if search.n_trials == 0:
        return {}
    import optuna
    import torch

    from skillops.training import train_model

    metric = recipe.evaluation.primary_metric
    evaluator = scorer(data.eval_set("validation"), recipe.evaluation, recipe.prompts)

    def objective(trial: optuna.Trial) -> float:
        params = {
            "learning_rate": trial.suggest_float("learning_rate", *search.learning_rate, log=True),
            "batch_size": trial.suggest_categorical("batch_size", search.batch_sizes),
            "warmup_ratio": trial.suggest_float("warmup_ratio", *search.warmup_ratio),
        }
        config = recipe.training.model_copy(
            update={**params, "epochs": search.epochs, "evals_during_training": search.evals_per_trial}
        )
        run_id = start_run(
            experiment, f"trial-{trial.number}", {**params, "epochs": search.epochs}, parent_run_id=parent_run_id
        )
        callback = _pruning_callback(trial, evaluator, metric, run_id)
        trial_dir = output_dir / f"trial-{trial.number}"
        try:
            result = train_model(
                recipe.base_model,
                data.train,
                config,
                recipe.loss,
                recipe.prompts,
                trial_dir,
                evaluator=evaluator,
                callbacks=[callback],
                label=f"tuning trial {trial.number + 1} of {search.n_trials}",
            )
            log_loss_history(run_id, result.log_history)
        except optuna.TrialPruned as pruned:
            set_tags(run_id, {"skillops.trial_state": "pruned"})
            end_run(run_id)
            logger.info("Trial %d pruned: %s", trial.number, pruned)
            raise
        except Exception as error:
            end_run(run_id, failure=repr(error))
            raise
        finally:
            shutil.rmtree(trial_dir, ignore_errors=True)  # trial weights are not kept, only scores
        score = callback.last_score
        if score is None or not math.isfinite(score):
            # Optuna would record +-inf as COMPLETE; a trial without a finite score failed.
            end_run(run_id, failure=f"validation {metric} is {score}")
            return float("nan")
        set_tags(run_id, {"skillops.trial_state": "complete"})
        end_run(run_id)
        logger.info("Trial %d: validation %s %.4f with %s", trial.number, metric, score, params)
        return score

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=search.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
        study_name=f"{recipe.name}-{parent_run_id}",
    )
    study.optimize(objective, n_trials=search.n_trials, catch=(torch.OutOfMemoryError,))
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not completed:
        raise RuntimeError(
            f"No tuning trial completed (states: {[t.state.name for t in study.trials]}); see the "
            "trial runs in MLflow. Widen search.learning_rate or set search.n_trials: 0 to skip tuning."
        )
    for chart in optuna_charts(study, output_dir):
        log_artifact(parent_run_id, chart, "tuning")
    return dict(study.best_params)
