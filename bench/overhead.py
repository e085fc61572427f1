"""What the pipeline costs against plain sentence-transformers + Optuna, measured in one run.

    .venv/bin/python bench/overhead.py [recipe] [--out FILE]

Runs the train-esco flow (`make train FORCE=1`: validation, tuning, training, evaluation,
registration, gate) and then bench/plain_st_optuna.py on the flow's own prepared split files,
with the same search space, n_trials, trial epochs, evaluations per trial, TPE seed, pruner
(Optuna's median unless --flow-pruner says otherwise) and final epochs, one after the other, each
in a fresh process. Prints flow/plain ratios of the wall time, tuning, training and evaluation,
and both sides' MAP over the whole vocabulary on the test and golden sets; writes
bench/results/overhead.json. Run it on an otherwise idle machine: the load is recorded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import typing
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "overhead.json"
PLAIN_PRUNER = "median"  # bench/plain_st_optuna.py's Optuna MedianPruner

# The flow's side, in a process of its own: the run, then its stages' times from Prefect's task runs.
FLOW = """
import json, sys
sys.path.insert(0, sys.argv[1])
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from train_esco import train_esco
from skillops.tracking import runs

state = train_esco(sys.argv[2], overrides=json.loads(sys.argv[3]), force=True, return_state=True)
result = state.result()
with get_client(sync_client=True) as client:
    task_runs = client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    )
seconds = {}
for task_run in task_runs:
    stage = task_run.name.split()[0]
    seconds[stage] = seconds.get(stage, 0.0) + task_run.total_run_time.total_seconds()
metrics = runs.client().get_run(result["run_id"]).data.metrics
golden = sys.argv[4]
print(json.dumps({"run_id": result["run_id"], "seconds": seconds, "base_map": metrics["base_cosine_map"],
                  "test_map": metrics["test_cosine_map"], "base_golden_map": metrics[f"base_golden_{golden}_cosine_map"],
                  "golden_map": metrics[f"test_golden_{golden}_cosine_map"], "promoted": result["promoted"]}))
"""


def _trials(output: str) -> dict[str, str]:
    """Each trial's outcome as Optuna logged it (both sides log through Optuna's logger)."""
    outcomes = {}
    for number, value in re.findall(r"Trial (\d+) finished with value: ([0-9.]+)", output):
        outcomes[number] = f"{float(value):.4f}"
    for number in re.findall(r"Trial (\d+) pruned", output):
        outcomes[number] = "pruned"
    return dict(sorted(outcomes.items()))


def _last_json_line(output: str) -> dict:
    return json.loads(next(line for line in reversed(output.splitlines()) if line.startswith("{")))


def _timed(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> tuple[float, dict]:
    load = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    log.write_text(done.stdout + done.stderr, "utf-8")
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:3])} failed; its output is in {log}")
    return wall, {**_last_json_line(done.stdout), "trials": _trials(done.stdout + done.stderr), "load_before": load}


def plain_settings(recipe, data: Path) -> dict:
    from skillops.inputs.preparation import golden_part
    from skillops.training.modeling import resolve_model

    if (
        recipe.loss.name != "mnrl"
        or recipe.evaluation.evaluator != "information_retrieval"
        or not recipe.evaluation.golden
    ):
        sys.exit(
            "The plain script trains MNRL and ranks the whole vocabulary with the InformationRetrievalEvaluator, "
            "on the test set and a golden set: give a recipe that does."
        )
    search, training = recipe.search, recipe.training
    return {
        "data": str(data),
        "golden": golden_part(recipe.evaluation.golden[0].name),
        "model": resolve_model(recipe.base_model),
        "max_seq_length": training.max_seq_length,
        "n_trials": search.n_trials,
        "learning_rate": list(search.learning_rate),
        "batch_sizes": search.batch_sizes,
        "warmup_ratio": list(search.warmup_ratio),
        "trial_epochs": search.epochs,
        "evals_per_trial": search.evals_per_trial,
        "seed": search.seed,
        "epochs": training.epochs,
        "scale": recipe.loss.scale,
    }


def main() -> None:
    from skillops.config import SearchConfig, load_recipe

    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("recipe", nargs="?", default="esco-occupation-skills")
    cli.add_argument("--out", type=Path, default=RESULTS, help=f"where the results go (default {RESULTS})")
    cli.add_argument(
        "--work", type=Path, help="keep the runs' logs, stores and data here (default: a temporary folder)"
    )
    cli.add_argument(
        "--flow-pruner",
        default=PLAIN_PRUNER,
        choices=typing.get_args(SearchConfig.model_fields["pruner"].annotation),
        help="the flow's search.pruner (default median, the plain script's rule, so both sides stop the same "
        "trials; noise_aware_median, the recipes' default, shows what that costs and buys)",
    )
    arguments = cli.parse_args()

    # Both sides judged on the whole vocabulary: the flow by its own scorer, the plain script by
    # the library's InformationRetrievalEvaluator (MAP at k = every document), on the same files.
    overrides = {"search.pruner": arguments.flow_pruner}
    recipe = load_recipe(arguments.recipe).with_overrides(overrides)
    golden = recipe.evaluation.golden[0].name
    python = sys.executable
    kept = contextlib.nullcontext(arguments.work) if arguments.work else None
    with kept or tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        work = Path(tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlruns' / 'mlflow.db'}",
            "SKILLOPS_OUTPUTS_DIR": str(work / "outputs"),
        }
        print(f"flow: train-esco {arguments.recipe} (logs in {work})", flush=True)
        flow_wall, flow = _timed(
            [python, "-c", FLOW, str(REPO / "flows"), arguments.recipe, json.dumps(overrides), golden],
            REPO,
            env,
            work / "flow.log",
        )
        settings = work / "plain.json"
        data = work / "outputs" / flow["run_id"] / "data"
        settings.write_text(json.dumps(plain_settings(recipe, data)), "utf-8")
        print("plain: sentence-transformers + Optuna on the flow's split files", flush=True)
        plain_wall, plain = _timed(
            [python, str(REPO / "bench" / "plain_st_optuna.py"), str(settings)], work, env, work / "plain.log"
        )

    stages = {"tuning": "tune", "training": "train", "evaluation": "evaluate-models"}
    ratios = {"total_ratio": flow_wall / plain_wall}
    for name, task in stages.items():
        ratios[f"{name}_ratio"] = flow["seconds"].get(task, 0.0) / plain["seconds"][name]
    result = {
        "recipe": arguments.recipe,
        "pruner": {"flow": arguments.flow_pruner, "plain": PLAIN_PRUNER},
        **{key: round(value, 3) for key, value in ratios.items()},
        "flow": {"wall_seconds": round(flow_wall, 1), **flow},
        "plain": {"wall_seconds": round(plain_wall, 1), **plain},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_1min_before_flow": flow["load_before"],
            "load_1min_before_plain": plain["load_before"],
        },
    }
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(result, indent=1) + "\n", "utf-8")
    print(f"\n{'':12}{'flow':>10}{'plain':>10}{'flow/plain':>12}")
    print(f"{'total s':12}{flow_wall:10.1f}{plain_wall:10.1f}{ratios['total_ratio']:12.2f}")
    for name, task in stages.items():
        flow_s, plain_s = flow["seconds"].get(task, 0.0), plain["seconds"][name]
        print(f"{name + ' s':12}{flow_s:10.1f}{plain_s:10.1f}{ratios[name + '_ratio']:12.2f}")
    for label, key in (("base MAP", "base_map"), ("test MAP", "test_map"), ("golden base", "base_golden_map")):
        print(f"{label:12}{flow[key]:10.4f}{plain[key]:10.4f}")
    print(f"{'golden MAP':12}{flow['golden_map']:10.4f}{plain['golden_map']:10.4f}  (whole vocabulary)")
    print(f"pruner: flow {arguments.flow_pruner}, plain {PLAIN_PRUNER}")
    print(f"trials, flow:  {flow['trials']}\ntrials, plain: {plain['trials']}")
    print(f"Written to {arguments.out}")


if __name__ == "__main__":
    main()
