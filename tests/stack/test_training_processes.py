"""Training in several processes (`training.processes`, torchrun + the trainer's DDP, gloo on this
CPU): one model saved, and after a kill of the process that started them the workers stop and a
second start resumes from the last checkpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pandas as pd
import pytest

from helpers import BIN
from skillops.training.modeling import load_model

pytestmark = pytest.mark.faults  # a process is SIGKILLed mid-run

# Train in a process of its own, so that it can be killed: print the result.
TRAIN = """
import sys
from pathlib import Path
from skillops.config import LossConfig, Prompts, TrainingConfig
from skillops.training.trainer import TrainingSpec, train_model

# Many steps after the first checkpoint: the kill lands mid-training, not after its end.
config = TrainingConfig(batch_size=4, max_steps=400, checkpoint_every_steps=10, learning_rate=1e-3, processes=2)
spec = TrainingSpec(
    base_model=sys.argv[1],
    train_path=Path(sys.argv[2]),
    config=config,
    loss=LossConfig(),
    prompts=Prompts(),
    output_dir=Path(sys.argv[3]),
)
print(train_model(spec).model_dump_json())
"""


def _processes(job) -> dict[int, str]:
    """pid -> command line of the processes of this multi-process training: torchrun's agent
    (`torch.distributed.run ...`) and its workers (`-m skillops.training.distributed ...`)."""
    found = {}
    for pid in subprocess.run(["pgrep", "-f", str(job)], capture_output=True, text=True).stdout.split():
        try:
            found[int(pid)] = open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
        except OSError:
            continue  # ended meanwhile
    return found


def _workers(job) -> list[int]:
    return [pid for pid, command in _processes(job).items() if "torch.distributed.run" not in command]


def test_two_processes_train_one_model_and_resume_after_a_kill(tiny_bert, tmp_path):
    pairs = pd.DataFrame(
        {"anchor": [f"occupation {i} needs" for i in range(64)], "positive": [f"skill number {i}" for i in range(64)]}
    )
    pairs.to_parquet(tmp_path / "train.parquet")
    out = tmp_path / "out"
    command = [str(BIN / "python"), "-c", TRAIN, str(tiny_bert), str(tmp_path / "train.parquet"), str(out)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not list(out.glob("checkpoints/checkpoint-*/trainer_state.json")):
        assert first.poll() is None, first.stdout.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.5)
    job = out / "distributed-job.json"
    assert len(_workers(job)) == 2, _processes(job)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    # The workers follow the process that started them, within seconds: none trains on.
    deadline = time.monotonic() + 60
    while _workers(job) and time.monotonic() < deadline:
        time.sleep(1)
    assert not _workers(job)

    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    result = second.stdout.strip().splitlines()[-1]
    assert '"resumed_from_step":' in result and '"resumed_from_step":null' not in result, result
    assert '"steps":400' in result, result
    # The two processes split each epoch: 64 rows in batches of 4 per process are 8 steps an epoch.
    history = json.loads((out / "log_history.json").read_text())
    assert history[-1]["epoch"] == pytest.approx(400 / 8)
    model = load_model(str(out / "model"))
    assert model.encode(["data analyst"]).shape == (1, 32)
    assert not (out / "checkpoints").exists()
