"""A real Prefect server and process worker on 127.0.0.1 run the train-esco deployment from
prefect.yaml, and its tuning trials in runs of the tune-trials deployment (`search.workers: pool`)."""

import json
import subprocess
import sys
from pathlib import Path

import optuna

from helpers import REPO, tiny_recipe_yaml

BIN = Path(sys.executable).parent


def _prefect(env, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "prefect"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


N_TRIALS = 6


def _pool_recipe(path: Path, esco: Path, model: Path, study_url: str) -> Path:
    return tiny_recipe_yaml(
        path,
        esco,
        model,
        # Trials of several seconds: a flow run of the pool needs some to start (imports, data).
        training={"max_steps": 300},
        search={
            "n_trials": N_TRIALS,
            "epochs": 50,
            "evals_per_trial": 3,
            "parallel": 2,
            "workers": "pool",
            "storage": study_url,
        },
    )


def test_deployment_run_tunes_with_pool_workers_and_registers_a_model(
    prefect_server, postgres, small_esco, tiny_bert, monkeypatch
):
    env, processes, tmp_path = prefect_server
    study_url, pgpass = postgres.url, postgres.pgpass
    monkeypatch.setenv("PGPASSFILE", str(pgpass))  # this process reads the study too
    # One thread per flow run (the pipeline's and the trial worker's share the 2 cores); the worker
    # looks for new flow runs every 2 s, so the trial worker joins while the pipeline still tunes.
    env = {**env, "PGPASSFILE": str(pgpass), "OMP_NUM_THREADS": "1", "PREFECT_WORKER_QUERY_SECONDS": "2"}
    created = _prefect(env, "work-pool", "create", "skillops", "--type", "process")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = _prefect(env, "--no-prompt", "deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert "train-esco/weekly" in deployed.stdout and "tune-trials/pool" in deployed.stdout

    # A pool that runs one flow run at a time could never run this run's trial workers: refused first.
    assert _prefect(env, "work-pool", "set-concurrency-limit", "skillops", "1").returncode == 0
    recipe = _pool_recipe(tmp_path / "recipe.yaml", small_esco, tiny_bert, study_url)
    refused = subprocess.run(
        [sys.executable, "flows/train_esco.py", str(recipe)], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert refused.returncode != 0
    assert (
        "search.parallel = 2 with search.workers = pool, but the work pool skillops runs at most 1"
        in refused.stdout + refused.stderr
    )
    assert _prefect(env, "work-pool", "clear-concurrency-limit", "skillops").returncode == 0

    worker_log = open(tmp_path / "worker.log", "w")
    processes.append(
        subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "skillops"],
            cwd=REPO,
            env=env,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
        )
    )
    run = _prefect(env, "deployment", "run", "train-esco/weekly", "--param", f"recipe={recipe}", "--watch", timeout=600)
    worker_output = (tmp_path / "worker.log").read_text()
    assert run.returncode == 0, run.stdout + run.stderr + worker_output[-5000:]
    assert "Completed" in run.stdout

    import mlflow

    mlflow_client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"], env["MLFLOW_TRACKING_URI"])
    versions = mlflow_client.search_model_versions("name = 'tiny-esco-candidates'")
    assert [v.version for v in versions] in (["1"], [1])
    assert versions[0].tags["skillops.decision"] in {"promoted", "not promoted"}
    schedules = _prefect(env, "deployment", "inspect", "train-esco/weekly")
    assert "0 3 * * 1" in schedules.stdout and "Europe/Brussels" in schedules.stdout

    # The pipeline started a tune-trials run, a worker of the pool took it, and it ran trials of
    # the pipeline's study, as MLflow child runs of the pipeline's run, beside the pipeline's own.
    listed = _prefect(env, "flow-run", "ls", "--flow-name", "tune-trials", "--output", "json")
    trials_runs = {run["name"]: run["state"]["type"] for run in json.loads(listed.stdout)}
    assert trials_runs and all(name.startswith("tune-trials tiny-esco-") for name in trials_runs), trials_runs
    assert "COMPLETED" in trials_runs.values(), trials_runs
    (parent,) = mlflow_client.search_runs(
        [mlflow_client.get_experiment_by_name("tiny-esco").experiment_id], "tags.skillops.kind = 'pipeline'"
    )
    study = optuna.load_study(study_name=parent.data.tags["skillops.optuna_study"], storage=study_url)
    finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    assert len(finished) >= N_TRIALS
    by_pool = [t for t in finished if t.user_attrs["worker"].startswith("flow run ")]
    by_pipeline = [t for t in finished if not t.user_attrs["worker"].startswith("flow run ")]
    assert by_pool and by_pipeline, [t.user_attrs["worker"] for t in finished]
    trial_runs = {t.number: mlflow_client.get_run(t.user_attrs["mlflow_run_id"]) for t in finished}
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs.values()} == {parent.info.run_id}

    def span(trial):
        info = trial_runs[trial.number].info
        return info.start_time, info.end_time

    assert any(max(span(a)[0], span(b)[0]) < min(span(a)[1], span(b)[1]) for a in by_pool for b in by_pipeline), (
        "no trial of the pool overlapped one of the pipeline"
    )
