"""Fine-tuning with sentence-transformers' trainer: the recipe's loss on its data shape.

(Cached)MNRL train on pairs or triplets with in-batch negatives; CosineSimilarityLoss on scored
pairs. Prompts are given to the trainer per column, so training, evaluation and serving agree.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel

from skillops.config import LossConfig, Prompts, Recipe, TrainingConfig
from skillops.errors import TrainingError
from skillops.training import progress
from skillops.training.batches import length_grouped_batches, taxonomy_aware_batches
from skillops.training.modeling import device, load_model, mixed_precision, require_devices

logger = logging.getLogger(__name__)

CHECKPOINT_COMPLETE = "skillops-complete.json"  # in a checkpoint the trainer finished writing: {"step": N}
# Beside checkpoints/: each complete checkpoint again, as hard links made the moment it is saved, for
# the checkpoint mirror to upload (`skillops.training.checkpoints`). The trainer deletes its older
# checkpoints as it saves new ones; these copies are the mirror's to delete, so it never reads a
# folder the trainer may remove.
STAGED = "staged"


def round_dir(train_dir: Path, number: int, rounds: int) -> Path:
    """Where round `number` of `rounds` trains: the training folder itself when there is one."""
    return train_dir / f"round-{number}" if rounds > 1 else train_dir


def staged_folders(train_dir: Path) -> list[Path]:
    """The staged/ folders of a training folder's rounds that exist now, found by name: a walk of
    the folder would list checkpoints the trainer is renaming or deleting, and fail on them."""
    return [folder for folder in [train_dir / STAGED, *train_dir.glob(f"round-*/{STAGED}")] if folder.is_dir()]


class TrainingSpec(BaseModel):
    """One training, whole: what it starts from, what it trains on and how, and where it writes.
    Passed as one object, to a trial, a round or the processes of a multi-process training (as JSON)."""

    base_model: str  # a model folder, an installed model package or a hub id
    train_path: Path  # the prepared training table (parquet)
    config: TrainingConfig
    loss: LossConfig
    prompts: Prompts
    output_dir: Path  # checkpoints/, model/, done.json, log_history.json
    label: str = "training"  # how progress lines name it
    stage_checkpoints: bool = False  # hard-link each complete checkpoint into staged/ for the mirror

    @classmethod
    def for_recipe(
        cls,
        recipe: Recipe,
        train_path: Path,
        output_dir: Path,
        config: TrainingConfig | None = None,
        base_model: str | None = None,
        label: str = "training",
    ) -> TrainingSpec:
        """The recipe's training (its base model, loss, prompts and settings unless given)."""
        return cls(
            base_model=base_model or recipe.base_model,
            train_path=train_path,
            config=recipe.training if config is None else config,
            loss=recipe.loss,
            prompts=recipe.prompts,
            output_dir=output_dir,
            label=label,
        )


class TrainingResult(BaseModel):
    model_dir: Path
    steps: int
    final_loss: float | None
    log_history: Path  # the trainer's log (loss per logging step), for the loss curve
    resumed_from_step: int | None = None  # set when an interrupted training was continued


def _last_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint: with the trainer's state and the model's config and
    weights. A kill can leave a folder without some of them (seen with several processes: the
    state written, the weights not), and resuming from it would fail."""
    complete = [
        p
        for p in checkpoints.glob("checkpoint-*")
        if (p / "trainer_state.json").is_file()
        and (p / "config.json").is_file()
        and any((p / weights).is_file() for weights in ("model.safetensors", "pytorch_model.bin"))
    ]
    return max(complete, key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)


def build_loss(model, config: LossConfig):
    from sentence_transformers.sentence_transformer import losses

    if config.name == "mnrl":
        return losses.MultipleNegativesRankingLoss(
            model, scale=config.scale, gather_across_devices=config.gather_across_devices
        )
    if config.name == "cached_mnrl":
        return losses.CachedMultipleNegativesRankingLoss(
            model,
            scale=config.scale,
            mini_batch_size=config.mini_batch_size,
            gather_across_devices=config.gather_across_devices,
        )
    return losses.CosineSimilarityLoss(model)


def column_prompts(columns: list[str], prompts: Prompts) -> dict[str, str] | None:
    """The trainer's per-column prompts: queries (anchor, sentence1) and documents (the rest)."""
    if not prompts:
        return None
    return {
        column: prompts.query if column in ("anchor", "sentence1") else prompts.document
        for column in columns
        if column != "score"
    }


class StepPlan(NamedTuple):
    """Which batches a training takes and how many optimizer steps an epoch of them is."""

    sampler: str  # how the run and its log name it: taxonomy-aware, no-duplicates, length-grouped, random
    batch_sampler: Any  # what the trainer is given: a BatchSamplers value or a sampler factory
    steps_per_epoch: int


def plan_steps(dataset, config: TrainingConfig, loss: LossConfig) -> StepPlan:
    """The batch sampler for this loss and settings, and the steps an epoch really takes with it.
    Taxonomy-aware batches cannot always be filled (a row waits while its anchor's positives are
    in the batch), so an epoch has more, smaller batches than rows / batch size: counted by
    running the sampler's first pass, as the trainer sizes its schedule."""
    from sentence_transformers.base.sampler import BatchSamplers

    # Each process takes one of every `processes` batches; an optimizer step accumulates several.
    batches_per_step = config.processes * config.gradient_accumulation_steps
    if loss.in_batch_negatives and config.taxonomy_aware_batches:
        batches = len(
            taxonomy_aware_batches(dataset, config.batch_size, False, seed=config.seed, world=config.processes)
        )
        return StepPlan("taxonomy-aware", taxonomy_aware_batches, max(1, -(-batches // batches_per_step)))
    if loss.in_batch_negatives:
        name, sampler = "no-duplicates", BatchSamplers.NO_DUPLICATES
    elif config.group_by_length:
        name, sampler = "length-grouped", length_grouped_batches
    else:
        name, sampler = "random", BatchSamplers.BATCH_SAMPLER
    batches = -(-len(dataset) // config.batch_size)
    return StepPlan(name, sampler, max(1, -(-batches // batches_per_step)))


def train_model(spec: TrainingSpec, evaluator: Any = None, callbacks: list | None = None) -> TrainingResult:
    """Train and save the model under `spec.output_dir/model`.

    For in-batch-negative losses the batches keep apart duplicate texts and, with
    `training.taxonomy_aware_batches`, the known positives of every anchor (`skillops.training.batches`):
    either would count as a negative of the very query it belongs to. With an evaluator and
    `config.evals_during_training`, the validation set is scored that many times while training
    (for pruning and curves).
    """
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from transformers import PrinterCallback

    config, loss, output_dir = spec.config, spec.loss, spec.output_dir
    done = output_dir / "done.json"
    if done.is_file():  # finished by an earlier attempt that crashed later on
        return TrainingResult.model_validate_json(done.read_text("utf-8"))
    if config.processes > 1 and "WORLD_SIZE" not in os.environ:
        if evaluator is not None and config.evals_during_training:
            logger.warning("training.processes > 1: no validation scores during training (only after it)")
        return _train_in_processes(spec)
    main_process = int(os.environ.get("RANK", "0")) == 0
    model = load_model(spec.base_model, config.max_seq_length)
    dataset = Dataset.from_parquet(str(spec.train_path))
    # The saved model's README shows one example; given here, the trainer does not sample a
    # thousand rows (behind a progress bar) to pick one at every training and trial.
    first = dataset[0]
    model.model_card_data.widget = [
        {"source_sentence": first[dataset.column_names[0]], "sentences": [first[dataset.column_names[1]]]}
    ]
    plan = plan_steps(dataset, config, loss)
    # As the trainer counts them: a part of an epoch rounds up to a whole step.
    total_steps = config.max_steps if config.max_steps > 0 else max(1, math.ceil(plan.steps_per_epoch * config.epochs))
    eval_settings: dict[str, Any] = {"eval_strategy": "no"}
    if evaluator is not None and config.evals_during_training > 0:
        eval_settings = {"eval_strategy": "steps", "eval_steps": max(1, total_steps // config.evals_during_training)}

    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_ratio,  # transformers 5: a value below 1 is a ratio
        weight_decay=config.weight_decay,
        seed=config.seed,
        batch_sampler=plan.batch_sampler,
        prompts=column_prompts(dataset.column_names, spec.prompts),
        logging_steps=max(1, total_steps // 20),
        # Checkpoints are what a killed run resumes from; steps when asked, else each epoch.
        save_strategy="steps" if config.checkpoint_every_steps else "epoch",
        save_steps=config.checkpoint_every_steps or 500,
        # Two, not one: the trainer deletes the older checkpoint after saving a new one, and a kill
        # during that deletion leaves a folder that still has trainer_state.json but lacks weights
        # or config. With two kept, the newest complete checkpoint is never the one being deleted.
        save_total_limit=2,
        report_to="none",
        dataloader_pin_memory=device() == "cuda",
        # Without a GPU, transformers 5 runs every torchrun process alone, each as process 0 of 1
        # (no DDP, all writing the same checkpoints), unless told the device is the CPU.
        use_cpu=device() == "cpu",
        disable_tqdm=not progress.interactive(),
        **mixed_precision(config.precision),
        **eval_settings,
    )
    trainer = _process_zero_saves(SentenceTransformerTrainer)(
        model=model,
        args=args,
        train_dataset=dataset,
        loss=build_loss(model, loss),
        evaluator=evaluator,
        callbacks=[
            *(callbacks or []),
            *(
                [progress.training_progress(spec.label), _mark_complete_callback(spec.stage_checkpoints)]
                if main_process
                else []
            ),
        ],
    )
    if not progress.interactive():
        # Without bars the trainer prints every logged loss as a dict; the curve is in MLflow.
        trainer.remove_callback(PrinterCallback)
    logger.info(
        "Training %s with %s on %d rows for %d steps (%s batches, %d steps per epoch)",
        spec.base_model,
        loss.name,
        len(dataset),
        total_steps,
        plan.sampler,
        plan.steps_per_epoch,
    )
    checkpoint = _last_checkpoint(output_dir / "checkpoints")
    if checkpoint is not None:
        logger.info("Resuming %s from step %s (%s)", spec.label, checkpoint.name.rsplit("-", 1)[1], checkpoint)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    # Every process is done writing its part of the last checkpoint before process 0 removes them.
    trainer.accelerator.wait_for_everyone()

    model_dir = output_dir / "model"
    resumed_from_step = int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else None
    if not main_process:  # process 0 of a multi-process training saves the model and says it is done
        return TrainingResult(
            model_dir=model_dir,
            steps=trainer.state.global_step,
            final_loss=None,
            log_history=output_dir / "log_history.json",
        )
    if spec.prompts:  # saved with the model: encode(texts, prompt_name="query") works after loading
        model.prompts = {**model.prompts, "query": spec.prompts.query, "document": spec.prompts.document}
    model.save(str(model_dir))
    # Checkpoints only matter while training can still crash; the saved model replaces them.
    shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    history_path = output_dir / "log_history.json"
    history = trainer.state.log_history
    history_path.write_text(json.dumps(history, indent=1), "utf-8")
    losses = [entry["loss"] for entry in history if "loss" in entry]
    result = TrainingResult(
        model_dir=model_dir,
        steps=trainer.state.global_step,
        final_loss=losses[-1] if losses else None,
        log_history=history_path,
        resumed_from_step=resumed_from_step,
    )
    done.write_text(result.model_dump_json(), "utf-8")
    return result


def _mark_complete_callback(stage: bool):
    from transformers import TrainerCallback

    class MarkComplete(TrainerCallback):
        """The trainer calls this once it has written a whole checkpoint: the marker says so (only
        a checkpoint with it is kept in the artifact store), and with `stage` the checkpoint is
        hard-linked into staged/ at once, before the trainer can rotate it away."""

        def on_save(self, args, state, control, **kwargs):
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            (checkpoint / CHECKPOINT_COMPLETE).write_text(json.dumps({"step": state.global_step}), "utf-8")
            if stage:
                staged = Path(args.output_dir).parent / STAGED / checkpoint.name
                shutil.rmtree(staged, ignore_errors=True)
                shutil.copytree(checkpoint, staged.with_suffix(".partial"), copy_function=os.link)
                staged.with_suffix(".partial").rename(staged)  # whole, or not there

    return MarkComplete()


def _process_zero_saves(trainer_class):
    """The trainer, saving from process 0 only. transformers 5 calls `_save` on every process and
    lets its own `_save` skip the others; sentence-transformers 6 overrides `_save` assuming only
    process 0 calls it, so with several processes each wrote the same checkpoint files at once
    (half-written checkpoints, and a crash when one process deleted a folder another wrote in)."""

    class ProcessZeroSaves(trainer_class):
        def _save(self, output_dir=None, state_dict=None):
            if self.args.should_save:
                super()._save(output_dir, state_dict)

    return ProcessZeroSaves


def check_processes(config: TrainingConfig) -> None:
    require_devices(config.processes, "training.processes", "training process")


def _train_in_processes(spec: TrainingSpec) -> TrainingResult:
    """train_model in `spec.config.processes` processes under torchrun; waits, then reads what
    process 0 saved. A killed run resumes from the checkpoint the processes last wrote, as a single one does."""
    config, output_dir = spec.config, spec.output_dir
    check_processes(config)
    spec_file = output_dir / "distributed-job.json"
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(spec.model_dump_json(), "utf-8")
    threads = str(max(1, (os.cpu_count() or 1) // config.processes))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={config.processes}",
        "-m", "skillops.training.distributed", str(spec_file), str(os.getpid()),
    ]  # fmt: skip
    logger.info("Training %s in %d processes (torchrun)", spec.base_model, config.processes)
    finished = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": threads})
    done = output_dir / "done.json"
    if finished.returncode != 0 or not done.is_file():
        raise TrainingError(
            f"The {config.processes}-process training ended with exit code {finished.returncode} (its output is "
            f"above); run again to resume from its last checkpoint in {output_dir / 'checkpoints'}."
        )
    return TrainingResult.model_validate_json(done.read_text("utf-8"))


class Round(BaseModel):
    """One round of continued training, and its validation scores when there are several rounds."""

    number: int
    result: TrainingResult
    validation: dict[str, float] | None
    step_offset: int  # optimizer steps of the rounds before it, so curves line up across rounds


def train_rounds(
    spec: TrainingSpec,
    evaluator: Any = None,
    score_round: Callable[[Path], dict[str, float]] | None = None,
    on_round: Callable[[Round], None] | None = None,
) -> list[Round]:
    """`spec.config.rounds` trainings, each continuing from the previous round's model (model
    card 000's repeated rounds); with several rounds, `score_round(model_dir)` scores each on the
    validation set. Finished rounds are not trained again when a crashed run is started again
    (`train_model` finds their `done.json`); `on_round` is told about each as it ends."""
    rounds: list[Round] = []
    count, model, steps = spec.config.rounds, spec.base_model, 0
    for number in range(1, count + 1):
        this_round = spec.model_copy(
            update={
                "base_model": model,
                "output_dir": round_dir(spec.output_dir, number, count),
                "label": f"{spec.label}, round {number} of {count}" if count > 1 else spec.label,
            }
        )
        result = train_model(this_round, evaluator=evaluator)
        validation = score_round(result.model_dir) if score_round and count > 1 else None
        rounds.append(Round(number=number, result=result, validation=validation, step_offset=steps))
        if on_round:
            on_round(rounds[-1])
        steps += result.steps
        model = str(result.model_dir)
    return rounds
