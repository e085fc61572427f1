"""One process of a multi-process training (`training.processes` > 1), as torchrun starts it:

    python -m torch.distributed.run --standalone --nproc_per_node N -m skillops.training.distributed <spec.json> <pipeline pid>

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
    from skillops.training.trainer import TrainingSpec, train_model

    spec = TrainingSpec.model_validate_json(Path(sys.argv[1]).read_text("utf-8"))
    threading.Thread(target=_exit_with, args=(int(sys.argv[2]),), daemon=True).start()
    train_model(spec)
