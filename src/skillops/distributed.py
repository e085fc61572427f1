"""One process of a multi-process training (`training.processes` > 1), as torchrun starts it:

    python -m torch.distributed.run --standalone --nproc_per_node N -m skillops.distributed <job.json>

Each process trains on its share of every batch with the trainer's DDP (NCCL on GPUs, gloo on
CPU); process 0 alone writes checkpoints (the trainer's rule) and the final model. Nothing here
logs to MLflow: the pipeline's process does that once training has ended.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from pydantic import BaseModel

from skillops.config import LossConfig, Prompts, TrainingConfig


class TrainingJob(BaseModel):
    base_model: str
    train_path: Path
    config: TrainingConfig
    loss: LossConfig
    prompts: Prompts
    output_dir: Path
    label: str
    parent_pid: int  # the pipeline's process: when it dies (killed, crashed), training stops too


def _exit_with(pid: int) -> None:
    """A killed pipeline must not leave its trainers running: they would write the checkpoints the
    next attempt resumes from while it trains."""
    while True:
        time.sleep(1)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)


if __name__ == "__main__":
    from skillops.training import train_model

    job = TrainingJob.model_validate_json(Path(sys.argv[1]).read_text("utf-8"))
    threading.Thread(target=_exit_with, args=(job.parent_pid,), daemon=True).start()
    train_model(job.base_model, job.train_path, job.config, job.loss, job.prompts, job.output_dir, label=job.label)
