"""Fine-tuning on (anchor, positive) pairs with in-batch negatives, as model card 000 does."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from skillops.config import TrainingConfig
from skillops.modeling import device, load_model, mixed_precision

logger = logging.getLogger(__name__)


class TrainingResult(BaseModel):
    model_dir: Path
    steps: int
    final_loss: float | None
    log_history: Path  # the trainer's log (loss per logging step), for the loss curve


def train_pairs(
    base_model: str,
    pairs_path: Path,
    config: TrainingConfig,
    output_dir: Path,
    evaluator: Any = None,
    evals: int = 0,
    callbacks: list | None = None,
) -> TrainingResult:
    """Train with MultipleNegativesRankingLoss and save the model under `output_dir/model`.

    The NO_DUPLICATES batch sampler keeps one ESCO skill from appearing twice in a batch, where
    it would be counted as a negative of the very occupation it belongs to. With an evaluator and
    `evals` > 0, the model is scored that many times during training (for pruning and curves).
    """
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = load_model(base_model, config.max_seq_length)
    dataset = Dataset.from_parquet(str(pairs_path))
    steps_per_epoch = max(1, -(-len(dataset) // config.batch_size))
    total_steps = config.max_steps if config.max_steps > 0 else int(steps_per_epoch * config.epochs)
    eval_settings: dict[str, Any] = {"eval_strategy": "no"}
    if evaluator is not None and evals > 0:
        eval_settings = {"eval_strategy": "steps", "eval_steps": max(1, total_steps // evals)}

    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir / "checkpoints"),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio,  # transformers 5: a value below 1 is a ratio
        weight_decay=config.weight_decay,
        seed=config.seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        logging_steps=max(1, total_steps // 20),
        save_strategy="epoch",
        save_total_limit=1,
        report_to="none",
        dataloader_pin_memory=device() == "cuda",
        **mixed_precision(),
        **eval_settings,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        loss=MultipleNegativesRankingLoss(model, scale=config.mnrl_scale),
        evaluator=evaluator,
        callbacks=callbacks,
    )
    logger.info("Training %s on %d pairs for %d steps", base_model, len(dataset), total_steps)
    trainer.train()

    model_dir = output_dir / "model"
    model.save(str(model_dir))
    # Checkpoints only matter while training can still crash; the saved model replaces them.
    shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    history_path = output_dir / "log_history.json"
    history = trainer.state.log_history
    history_path.write_text(json.dumps(history, indent=1), "utf-8")
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return TrainingResult(
        model_dir=model_dir,
        steps=trainer.state.global_step,
        final_loss=losses[-1] if losses else None,
        log_history=history_path,
    )
