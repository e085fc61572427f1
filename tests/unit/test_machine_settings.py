"""Settings this machine cannot run (more training processes or tuning workers than it has GPUs or
cores, pool workers that could not reach the study) are refused before any training."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from skillops.config import SearchConfig, TrainingConfig
from skillops.errors import RecipeError
from skillops.training import tuning_workers
from skillops.training.trainer import check_processes


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


def test_every_environment_setting_is_read_in_one_place_and_a_bad_value_names_its_variable(monkeypatch, capsys):
    """The timings a run waits on are settings (tests shorten them, production keeps its
    minutes): the grace of a trial's heartbeat follows the server wait and the heartbeat, and a
    value that is no number is refused naming the variable."""
    from skillops import cli
    from skillops.settings import Settings, settings
    from skillops.training import tuning

    for name in Settings.model_fields:
        monkeypatch.delenv(f"SKILLOPS_{name.upper()}", raising=False)
    defaults = settings()
    assert (defaults.server_wait_seconds, defaults.missed_heartbeats, defaults.trial_heartbeat_seconds) == (120, 4, 10)
    assert tuning.grace_seconds() == 140  # production: a database restart of two minutes is not a dead trial
    monkeypatch.setenv("SKILLOPS_SERVER_WAIT_SECONDS", "10")
    monkeypatch.setenv("SKILLOPS_TRIAL_HEARTBEAT_SECONDS", "2")
    assert tuning.grace_seconds() == 14  # a test: seconds
    monkeypatch.setenv("SKILLOPS_MISSED_HEARTBEATS", "often")
    with pytest.raises(RecipeError, match=r"SKILLOPS_MISSED_HEARTBEATS = 'often': Input should be a valid integer"):
        settings()
    monkeypatch.setenv("SKILLOPS_MISSED_HEARTBEATS", "4")
    assert cli.main(["settings"]) == 0
    listed = capsys.readouterr().out
    assert "SKILLOPS_SERVER_WAIT_SECONDS=10.0" in listed and "SKILLOPS_OPTUNA_STORAGE=(unset)" in listed
    assert listed.count("SKILLOPS_") >= len(Settings.model_fields)
