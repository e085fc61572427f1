"""Four train-esco runs that finish together, against one real Prefect server and one MLflow store,
while the Prefect server is killed and started again: they wait for the promotion slot across the
restart, promote one at a time, the champion ends as the best of them that beat the previous
champion, and every decision is recorded.

The slot is held by the test while the four runs register and line up for it, so that all of them
are waiting when the server goes down (for a few seconds); a server that kept its slots in memory (Prefect's
default) would come back with the slot counted as taken and no lease to release it."""

import json
import os
import signal
import subprocess
import time
import urllib.request

import mlflow
import pytest

from helpers import BIN, REPO, SEED_CHAMPION, served_candidates, start_prefect_server, tiny_recipe_yaml, wait_until
from skillops import gate

pytestmark = pytest.mark.faults

NAME = "tiny-esco"
OUTAGE_SECONDS = 5  # the Prefect server away, with every run waiting for the promotion slot
# Four candidates of different quality: two trained hard, one lightly, one barely at all.
CANDIDATES = [
    {"max_steps": 80, "learning_rate": 2e-3, "seed": 1},
    {"max_steps": 60, "learning_rate": 3e-3, "seed": 2},
    {"max_steps": 10, "learning_rate": 5e-4, "seed": 3},
    {"max_steps": 1, "learning_rate": 1e-9, "seed": 4},
]


# Holds the model's promotion slot (made as the flow makes it) from "held" until its stdin closes;
# a process of its own, so that it talks to this test's Prefect server and no other.
HOLD_SLOT = f"""
import sys
sys.path.insert(0, "flows")
from orchestration import promotion_slot
with promotion_slot("{NAME}"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_four_runs_promoting_at_once_across_a_restart_of_the_prefect_server(
    prefect_server, small_esco, tiny_bert, monkeypatch
):
    env, processes, tmp_path = prefect_server
    env = {**env, "PATH": f"{BIN}{os.pathsep}{env['PATH']}"}
    tracking_uri = env["MLFLOW_TRACKING_URI"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    client = mlflow.MlflowClient(tracking_uri, tracking_uri)

    # The previous champion: the untrained base model, candidate 1, served as version 1.
    seed = subprocess.run(
        [str(BIN / "python"), "-c", SEED_CHAMPION, str(tiny_bert), NAME],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert seed.returncode == 0, seed.stderr[-3000:]

    # The promotion slot, held by the test until the server has restarted.
    holder = subprocess.Popen(
        [str(BIN / "python"), "-c", HOLD_SLOT],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"

    runs = []
    for number, training in enumerate(CANDIDATES):
        recipe = tiny_recipe_yaml(
            tmp_path / f"recipe-{number}.yaml",
            small_esco,
            tiny_bert,
            training=training,
            search={"n_trials": 0},
            # Judged by the primary metric alone (4 test queries; see conftest), but a candidate
            # must beat the champion by more than float noise.
            promotion={"min_delta": 0.001},
        )
        log = open(tmp_path / f"run-{number}.log", "w")
        runs.append(
            (
                subprocess.Popen(
                    [str(BIN / "python"), str(REPO / "flows" / "train_esco.py"), str(recipe)],
                    cwd=tmp_path,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        )

    def all_waiting_for_the_slot():
        assert all(process.poll() is None for process, _ in runs), "a run ended before it could promote"
        return len(client.search_model_versions(f"name = '{NAME}-candidates'")) == 1 + len(CANDIDATES)

    wait_until(all_waiting_for_the_slot, "the four runs to register and wait for the slot", 600)
    time.sleep(5)  # past registering, into the promote task
    processes[0].send_signal(signal.SIGKILL)
    processes[0].wait(timeout=30)
    time.sleep(OUTAGE_SECONDS)
    processes[0] = start_prefect_server(env, tmp_path / "server.log")
    holder.stdin.close()  # the slot is released: the runs take it one at a time
    assert holder.wait(timeout=180) == 0
    for number, (process, log) in enumerate(runs):
        assert process.wait(timeout=900) == 0, (tmp_path / f"run-{number}.log").read_text()[-5000:]
        log.close()

    versions = {int(v.version): v for v in client.search_model_versions(f"name = '{NAME}-candidates'")}
    assert sorted(versions) == [1, 2, 3, 4, 5]  # none lost
    candidates = {v: versions[v] for v in (2, 3, 4, 5)}
    for version in candidates.values():  # every decision recorded, with its numbers
        assert version.tags["skillops.decision"] in {"promoted", "not promoted"}
        assert json.loads(version.tags["skillops.decision_numbers"])["reference_name"] == "champion"
    score = {v: float(version.tags["test_map"]) for v, version in candidates.items()}
    # The client, not mlflow.search_runs: an earlier test in this process may have set mlflow's
    # global tracking URI to its own store, and the global setting wins over the environment.
    runs = client.search_runs([client.get_experiment_by_name(NAME).experiment_id])
    pipeline = [run.info for run in runs if run.data.tags.get("skillops.kind") == "pipeline"]
    assert len(pipeline) == 4 and {run.status for run in pipeline} == {"FINISHED"}
    assert max(run.start_time for run in pipeline) < min(run.end_time for run in pipeline)  # they did overlap
    previous = next(run.data.metrics["base_map"] for run in runs if "base_map" in run.data.metrics)
    score[1] = previous  # candidate 1 holds the base model's weights

    # The served model holds the champions only: each a copy of a candidate the gate passed.
    copy_of = served_candidates(client, NAME)
    champion = copy_of[str(client.get_registered_model(NAME).aliases["champion"])]
    beat_previous = [v for v in candidates if score[v] > previous + 0.001]
    assert beat_previous, "no candidate beat the untrained model: the test proves nothing"
    assert champion == max(beat_previous, key=score.get)

    # The alias moved only forward, each time to a version that beat the champion it replaced.
    moves = gate.local().history(NAME)[1:]  # after the seed's
    chain = ["1"] + [m["to"] for m in moves]
    assert [m["from"] for m in moves] == chain[:-1] and copy_of[chain[-1]] == champion
    assert all(score[copy_of[m["to"]]] > score[copy_of[m["from"]]] for m in moves)
    promoted = {v for v, version in candidates.items() if version.tags["skillops.decision"] == "promoted"}
    assert promoted == {copy_of[m["to"]] for m in moves} == set(copy_of.values()) - {1}
    print("scores", score, "moves", [(m["from"], m["to"]) for m in moves])

    # The promotions were serialised by a strict Prefect global concurrency limit of 1.
    with urllib.request.urlopen(
        f"{env['PREFECT_API_URL']}/v2/concurrency_limits/skillops-promote-{NAME}", timeout=10
    ) as response:
        limit = json.loads(response.read())
    assert limit["limit"] == 1 and limit["active_slots"] == 0
