"""A study that several workers share in PostgreSQL, under faults: their trials run side by side;
PostgreSQL is stopped and started again while both are mid-trial, and they wait for it; a worker
killed mid-trial has its trial failed by its heartbeat and run again; no finished trial is lost."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import optuna
import pytest

from helpers import BIN, tiny_recipe_yaml
from skillops.tracking import runs

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
RETRY = optuna.storages.RetryHeartbeatStaleTrialCallback
# The storage waits this long for its database (15 s away here); with trial heartbeats every 2 s
# the grace period that follows is 24 s (production: 120 s and 10 s, 140 s).
WAIT_SECONDS = 20
HEARTBEAT_SECONDS = 2
pytestmark = pytest.mark.faults
# Run in a process of its own, so that it can be killed: tune the recipe once, print the result.
SEARCH = """
import sys
from pathlib import Path
from skillops.inputs import preparation
from skillops.tracking import runs
from skillops.training import tuning, tuning_workers
from skillops.config import load_recipe

recipe = load_recipe(sys.argv[1])
work = Path(sys.argv[2])
paths = preparation.write_task(preparation.build_task(recipe), work / "data", {})
run_id = runs.start_run(recipe.name, "search", {})
worker = tuning.TrialWorker(
    recipe=recipe,
    data_dir=paths.directory,
    experiment=recipe.name,
    parent_run_id=run_id,
    output_dir=work / "tuning",
    study_name="tiny-study",
    attempt_dir=work / "attempt",
)
print(tuning.tune(worker, start_workers=tuning_workers.starter(recipe.search, None)))
"""


def _search(recipe: Path, work: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "python"), "-c", SEARCH, str(recipe), str(work)],
        env={**{k: v for k, v in os.environ.items() if k != "SKILLOPS_OPTUNA_STORAGE"}, **(env or {})},
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )


def _trials(work: Path, storage: str | None = None) -> list[optuna.trial.FrozenTrial]:
    storage = storage or f"sqlite:///{work / 'attempt' / 'optuna.db'}"
    try:
        return optuna.load_study(study_name="tiny-study", storage=storage).get_trials()
    except Exception:  # the study or its database is not created yet
        return []


# Reading which trial a retry repeats is Optuna's "experimental" API, stable since 2.8: no warning.
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_two_workers_share_a_study_across_a_database_restart_and_a_killed_worker(
    small_esco, tiny_bert, mlflow_store, tmp_path, postgres, monkeypatch
):
    """search.parallel: 2 against PostgreSQL: the trials of both workers run at the same time;
    PostgreSQL is down for 15 s while both are in a trial; then the second worker is SIGKILLed
    mid-trial, and the study still ends with n_trials finished, the killed trial failed and run
    again, no finished trial lost."""
    url, pgpass = postgres.url, postgres.pgpass
    monkeypatch.setenv("PGPASSFILE", str(pgpass))  # for this process's reads of the study too
    recipe = tiny_recipe_yaml(
        tmp_path / "recipe.yaml",
        small_esco,
        tiny_bert,
        # Trials of several seconds: the second worker needs a few to start (imports).
        training={"max_steps": 300},
        search={"n_trials": 6, "epochs": 50, "evals_per_trial": 3, "parallel": 2, "storage": url},
    )
    log = tmp_path / "search.log"
    search = _search(
        recipe,
        tmp_path,
        log,
        {
            "PGPASSFILE": str(pgpass),
            "SKILLOPS_SERVER_WAIT_SECONDS": str(WAIT_SECONDS),
            "SKILLOPS_TRIAL_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
        },
    )
    states = optuna.trial.TrialState
    deadline = time.monotonic() + 300

    def running():
        return [t for t in _trials(tmp_path, url) if t.state == states.RUNNING and "pid" in t.user_attrs]

    while len({t.user_attrs["pid"] for t in running()}) < 2:  # both workers in a trial at once
        assert search.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    before_restart = {t.number for t in _trials(tmp_path, url) if t.state in FINISHED}
    postgres.down()
    time.sleep(15)
    postgres.up()
    assert search.poll() is None, log.read_text()[-3000:]  # the workers waited for their database
    while len({t.user_attrs["pid"] for t in running()}) < 2:
        assert search.poll() is None and time.monotonic() < deadline + 300, log.read_text()[-3000:]
        time.sleep(0.5)
    (killed,) = [t for t in running() if t.user_attrs["pid"] != search.pid]
    finished_before = {t.number: t.datetime_start for t in _trials(tmp_path, url) if t.state in FINISHED}
    os.kill(killed.user_attrs["pid"], signal.SIGKILL)
    assert search.wait(timeout=600) == 0, log.read_text()[-3000:]

    trials = _trials(tmp_path, url)
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) >= 6
    assert {t.number: t.datetime_start for t in finished if t.number in finished_before} == finished_before
    assert before_restart <= {t.number for t in finished}
    assert next(t for t in trials if t.number == killed.number).state == states.FAIL
    retried = [t for t in trials if RETRY.retried_trial_number(t) == killed.number]
    assert retried and retried[0].state in FINISHED and retried[0].params == killed.params
    # Each trial is an MLflow child run of the search's run, and two of them ran side by side.
    client = runs.client()  # this test's store (mlflow's global URI may be an earlier test's)
    trial_runs = client.search_runs(
        [client.get_experiment_by_name("tiny-esco").experiment_id], "tags.mlflow.parentRunId != ''"
    )
    spans = [(r.info.start_time, r.info.end_time or float("inf")) for r in trial_runs]
    assert len(trial_runs) >= 7 and any(a < d and c < b for i, (a, b) in enumerate(spans) for c, d in spans[i + 1 :])
    assert "The Optuna database does not answer" in log.read_text()  # it was away, and waited for


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_every_storage_call_a_trial_makes_waits_for_a_restarted_database(postgres, monkeypatch):
    """What `Study.optimize` calls before and around each trial, through Optuna's cache in front of
    the storage (private calls among them: the stale-trials check), waits for PostgreSQL started
    again rather than ending the worker."""
    from skillops.training import tuning

    monkeypatch.setenv("PGPASSFILE", str(postgres.pgpass))
    monkeypatch.setenv("SKILLOPS_SERVER_WAIT_SECONDS", str(WAIT_SECONDS))
    study = optuna.create_study(study_name="patient", storage=tuning.open_storage(postgres.url))
    study.enqueue_trial({"x": 1.0})
    calls = {
        "stale trials": lambda: optuna.storages.fail_stale_trials(study),
        "new trial": lambda: study.ask({"x": optuna.distributions.FloatDistribution(0, 2)}),
        "trials": lambda: study.get_trials(),
    }
    for call in calls.values():
        postgres.down()
        restart = threading.Timer(4, postgres.up)
        restart.start()
        try:
            call()  # the stale-trials check raised "the database system is shutting down" before
        finally:
            restart.join()
    # One trial, the queued one, taken by `ask` once: nothing made twice, nothing lost.
    trials = study.get_trials()
    assert [(t.number, t.params, t.state) for t in trials] == [(0, {"x": 1.0}, optuna.trial.TrialState.RUNNING)]
