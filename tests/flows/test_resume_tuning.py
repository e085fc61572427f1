"""A pipeline killed during tuning and started again continues its study: it keeps its finished
trials, fails the killed one by its stale heartbeat and runs it again, and ends with n_trials
finished."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest

from helpers import BIN, REPO, tiny_recipe_yaml
from skillops.tracking import runs

pytestmark = pytest.mark.faults  # a process is SIGKILLed mid-run

N_TRIALS = 3
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def _flow(recipe: Path, work: Path, log: Path) -> subprocess.Popen:
    """`python flows/train_esco.py <recipe>`, in a session of its own (with its temporary Prefect
    server) so that a test can kill all of it."""
    env = {k: v for k, v in os.environ.items() if k not in ("SKILLOPS_OPTUNA_STORAGE", "PREFECT_API_URL")}
    env.update(SKILLOPS_OUTPUTS_DIR=str(work / "outputs"), PREFECT_HOME=str(work / "prefect-home"))
    # A killed trial is found by its stale heartbeat after a grace of 14 s (production: 140 s).
    env.update(SKILLOPS_SERVER_WAIT_SECONDS="10", SKILLOPS_TRIAL_HEARTBEAT_SECONDS="2")
    return subprocess.Popen(
        [str(BIN / "python"), str(REPO / "flows" / "train_esco.py"), str(recipe)],
        env=env,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _attempt_trials(work: Path) -> list[optuna.trial.FrozenTrial]:
    """The trials of the study in the flow's attempt folder (none before it exists)."""
    for database in (work / "outputs" / "attempts").glob("*/optuna.db"):
        storage = f"sqlite:///{database}"
        try:
            (name,) = optuna.get_all_study_names(storage)
            return optuna.load_study(study_name=name, storage=storage).get_trials()
        except Exception:  # the study is being created
            return []
    return []


def test_a_pipeline_killed_during_tuning_continues_its_study(small_esco, tiny_bert, mlflow_store, tmp_path):
    """The flow SIGKILLed (with its Prefect server) mid-trial and run again: the same study goes
    on, its finished trials reused, not rerun; the killed trial failed and run again."""
    recipe = tiny_recipe_yaml(
        tmp_path / "recipe.yaml",
        small_esco,
        tiny_bert,
        training={"max_steps": 40},
        search={"n_trials": N_TRIALS, "epochs": 2, "evals_per_trial": 4},
    )
    log = tmp_path / "first.log"
    first = _flow(recipe, tmp_path, log)
    states = optuna.trial.TrialState
    deadline = time.monotonic() + 400
    while not (
        any(t.state in FINISHED for t in _attempt_trials(tmp_path))
        and any(t.state == states.RUNNING for t in _attempt_trials(tmp_path))
    ):
        assert first.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    kept = {t.number for t in _attempt_trials(tmp_path) if t.state in FINISHED}
    (killed,) = [t for t in _attempt_trials(tmp_path) if t.state == states.RUNNING]

    # Once its heartbeat is older than the grace period, the next run fails it and runs it again.
    second = _flow(recipe, tmp_path, tmp_path / "second.log")
    assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-3000:]

    # The attempt's folder (and its study) is gone with the success: the trials are in MLflow.
    client = runs.client()
    experiment = client.get_experiment_by_name("tiny-esco").experiment_id
    (rerun,) = client.search_runs([experiment], "tags.skillops.kind = 'pipeline' and attributes.status = 'FINISHED'")
    assert f"{len(kept)} of {N_TRIALS} trials were already finished" in rerun.data.tags["skillops.tuning"]
    trial_runs = client.search_runs([experiment], "tags.skillops.trial_state != ''")
    again = [r for r in trial_runs if r.data.tags["mlflow.parentRunId"] == rerun.info.run_id]
    # The kept trials were not run again; the killed one was, with its parameters; n_trials finished in all.
    assert {f"trial-{number}" for number in kept}.isdisjoint(r.info.run_name for r in again)
    retry = {k: str(v) for k, v in killed.params.items()}
    assert any({k: r.data.params[k] for k in retry} == retry for r in again)
    assert len(trial_runs) >= N_TRIALS
