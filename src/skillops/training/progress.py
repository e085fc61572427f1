"""Progress that reads well where it is read: the libraries' bars on an interactive terminal; in a
Prefect worker's log or CI, where every bar update becomes a line, a few plain lines instead."""

from __future__ import annotations

import functools
import logging
import sys
import time

logger = logging.getLogger(__name__)

REPORT_AT = (0.25, 0.5, 0.75, 1.0)  # shares of the training steps at which a plain line is logged


def interactive() -> bool:
    return sys.stderr.isatty()


@functools.cache
def quiet_bars() -> None:
    """Outside a terminal, turn off the progress bars of the libraries skillops drives (loading
    weights, building datasets, downloading); training reports through `TrainingProgress`."""
    if interactive():
        return
    import datasets
    import huggingface_hub.utils
    import transformers

    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def training_progress(what: str):
    """A trainer callback that logs `what: step 21/42 (50%), 16.6 samples/s, about 1 min left` at
    a quarter, half, three quarters and the end of training."""
    from transformers import TrainerCallback

    class TrainingProgress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.started, self.first_step, self.reported = time.monotonic(), state.global_step, set()

        def on_step_end(self, args, state, control, **kwargs):
            total = max(1, state.max_steps)
            due = [share for share in REPORT_AT if state.global_step >= share * total and share not in self.reported]
            if not due:
                return
            self.reported.update(due)
            elapsed = time.monotonic() - self.started
            done = max(1, state.global_step - self.first_step)
            samples = done * args.per_device_train_batch_size * args.gradient_accumulation_steps / max(elapsed, 1e-9)
            left = elapsed / done * (total - state.global_step)
            logger.info(
                "%s: step %d/%d (%d%%), %.1f samples/s, %s",
                what,
                state.global_step,
                total,
                100 * state.global_step // total,
                samples,
                f"about {_duration(left)} left" if state.global_step < total else f"done in {_duration(elapsed)}",
            )

    return TrainingProgress()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
