"""Training in several processes (`training.processes`, torchrun + the trainer's DDP, gloo on this
CPU): one model saved, resumed after a kill from the last checkpoint, judged by the gate like any
other through the flow; settings the machine cannot run are refused before any training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from helpers import BIN, tiny_recipe_yaml
from skillops import tracking, tuning
from skillops.config import SearchConfig, TrainingConfig
from skillops.errors import RecipeError
from skillops.modeling import load_model
from skillops.training import check_processes

# Train in a process of its own, so that it can be killed: print the result.
TRAIN = """
import sys
from pathlib import Path
from skillops.config import LossConfig, Prompts, TrainingConfig
from skillops.training import train_model

# Many steps after the first checkpoint: the kill lands mid-training, not after its end.
config = TrainingConfig(batch_size=4, max_steps=400, checkpoint_every_steps=10, learning_rate=1e-3, processes=2)
print(train_model(sys.argv[1], Path(sys.argv[2]), config, LossConfig(), Prompts(), Path(sys.argv[3])).model_dump_json())
"""


def _processes(job) -> dict[int, str]:
    """pid -> command line of the processes of this multi-process training: torchrun's agent
    (`torch.distributed.run ...`) and its workers (`-m skillops.distributed ...`)."""
    found = {}
    for pid in subprocess.run(["pgrep", "-f", str(job)], capture_output=True, text=True).stdout.split():
        try:
            found[int(pid)] = open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
        except OSError:
            continue  # ended meanwhile
    return found


def _workers(job) -> list[int]:
    return [pid for pid, command in _processes(job).items() if "torch.distributed.run" not in command]


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_two_process_training_is_judged_like_any_other(small_esco, tiny_bert, mlflow_store, tmp_path):
    from train_esco import train_esco

    recipe = tiny_recipe_yaml(
        tmp_path / "recipe.yaml",
        small_esco,
        tiny_bert,
        training={"max_steps": 40, "learning_rate": 2e-3, "processes": 2, "batch_size": 4},
        search={"n_trials": 0},
    )
    result = train_esco(recipe=str(recipe))
    assert result["version"] == "1" and "the base model's" in result["reason"]
    version = tracking.client().get_model_version("tiny-esco", "1")
    assert version.tags["skillops.decision"] == ("promoted" if result["promoted"] else "not promoted")
    assert json.loads(version.tags["skillops.decision_numbers"])["reference_name"] == "base model"
    assert tracking.get_params(result["run_id"])["training.processes"] == "2"


def test_settings_this_machine_cannot_run_are_refused(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with pytest.raises(RecipeError, match=r"training.processes = 3, but this machine has 2 CPU cores"):
        check_processes(TrainingConfig(processes=3))
    with pytest.raises(RecipeError, match=r"search.parallel = 3, but this machine has 2 CPU cores: each tuning worker"):
        tuning.check_parallel(SearchConfig(parallel=3))
    check_processes(TrainingConfig(processes=2))
    tuning.check_parallel(SearchConfig(parallel=2))
    # Workers of the pool are not this machine's to count, but they must reach the study.
    tuning.check_parallel(SearchConfig(parallel=3, workers="pool", storage="postgresql://skillops@127.0.0.1/optuna"))
    with pytest.raises(
        RecipeError, match=r"search.workers = pool, but the study is in sqlite:///.*a file on this machine"
    ):
        tuning.check_parallel(SearchConfig(parallel=3, workers="pool"), Path("attempt"))
