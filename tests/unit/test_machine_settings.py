"""Settings this machine cannot run (more training processes or tuning workers than it has GPUs or
cores, pool workers that could not reach the study) are refused before any training."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from skillops import tuning_workers
from skillops.config import SearchConfig, TrainingConfig
from skillops.errors import RecipeError
from skillops.training import check_processes


def test_settings_this_machine_cannot_run_are_refused(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with pytest.raises(RecipeError, match=r"training.processes = 3, but this machine has 2 CPU cores"):
        check_processes(TrainingConfig(processes=3))
    with pytest.raises(RecipeError, match=r"search.parallel = 3, but this machine has 2 CPU cores: each tuning worker"):
        tuning_workers.check_parallel(SearchConfig(parallel=3))
    check_processes(TrainingConfig(processes=2))
    tuning_workers.check_parallel(SearchConfig(parallel=2))
    # Workers of the pool are not this machine's to count, but they must reach the study.
    tuning_workers.check_parallel(
        SearchConfig(parallel=3, workers="pool", storage="postgresql://skillops@127.0.0.1/optuna")
    )
    with pytest.raises(
        RecipeError, match=r"search.workers = pool, but the study is in sqlite:///.*a file on this machine"
    ):
        tuning_workers.check_parallel(SearchConfig(parallel=3, workers="pool"), Path("attempt"))
