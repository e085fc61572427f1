"""PostgreSQL stalled (every process of it stopped with SIGSTOP, as on a disk that hangs): the
servers' health checks answer or fail within 2 s rather than hang, and answer again once it goes on."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from helpers import BIN, parent_pid, wait_until
from teamstack import call, prefect

pytestmark = pytest.mark.faults  # PostgreSQL is stopped and continued
# nginx gives each health check 2 s; the rest is the TLS handshake on a busy machine.
ANSWERED_WITHIN = 5


def _postgres_processes(data: Path) -> list[int]:
    """The postmaster and every process it started."""
    postmaster = int((data / "postmaster.pid").read_text().splitlines()[0])
    children = [
        int(stat.parent.name)
        for stat in Path("/proc").glob("[0-9]*/stat")
        if parent_pid(int(stat.parent.name)) == postmaster
    ]
    return [postmaster, *children]


def test_health_checks_answer_within_two_seconds_while_the_database_is_stalled(team):
    checks = {
        "MLflow": f"{team.mlflow_url}/health",
        "promotion authority": f"{team.mlflow_url}/gate/health",
        "Prefect": f"{team.prefect_url}/health",
    }
    stalled = _postgres_processes(team.servers / "postgres")
    answers = {}
    for pid in stalled:
        os.kill(pid, signal.SIGSTOP)
    try:
        for server, url in checks.items():
            began = time.monotonic()
            status, _ = call(url, team.ca)
            answers[server] = (status, round(time.monotonic() - began, 1))
    finally:
        for pid in stalled:
            os.kill(pid, signal.SIGCONT)
    print(f"health while PostgreSQL is stalled: {answers}")  # (status, seconds): the docs' figures
    assert all(status != 0 and seconds < ANSWERED_WITHIN for status, seconds in answers.values()), answers
    wait_until(lambda: all(call(url, team.ca)[0] == 200 for url in checks.values()), "health once it goes on", 60)


# Checkpointed often, so that the run is seen training soon; long enough (about 150 s of training
# here) to go on through the longer stall.
LONG = {"training.max_steps": 8000, "training.checkpoint_every_steps": 10, "training.learning_rate": 1e-3}
WINDOW = 30 * 2  # Prefect's heartbeat period in the stack, times the tests' SKILLOPS_MISSED_HEARTBEATS


def _states(team, flow_run_id: str) -> list[str]:
    """Every state the flow run has been in, in order."""
    history = prefect(team.accounts["admin"], f"/flow_run_states/?flow_run_id={flow_run_id}")
    return [state["type"] for state in sorted(history, key=lambda state: state["timestamp"])]


def _training(team, name: str, max_steps: int) -> str:
    """A deployment run of its own model, once it is training; returns the flow run's id."""
    overrides = {**LONG, "training.max_steps": max_steps}
    flow_run_id = team.b.deployment_run(team.accounts["maintainer-b"], team.recipe(name), overrides)
    team.checkpointed_run(name)
    return flow_run_id


def _stall_postgres(team, seconds: float) -> None:
    stalled = _postgres_processes(team.servers / "postgres")
    for pid in stalled:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        for pid in stalled:
            os.kill(pid, signal.SIGCONT)


def test_a_stall_shorter_than_the_heartbeat_window_never_crashes_a_live_run(team):
    (automation,) = prefect(team.accounts["admin"], "/automations/filter", {})
    assert [action["type"] for action in automation["actions"]] == ["call-webhook"], automation
    flow_run_id = _training(team, "stalled-db", max_steps=800)
    _stall_postgres(team, WINDOW * 3 / 4)
    team.wait_for(flow_run_id, "COMPLETED", "the stalled run to complete")
    assert "CRASHED" not in _states(team, flow_run_id), _states(team, flow_run_id)


def test_after_a_stall_longer_than_the_window_a_live_run_is_judged_alive_and_trains_once(team):
    name = "long-stall"
    flow_run_id = _training(team, name, max_steps=8000)
    _stall_postgres(team, WINDOW * 5 / 4)
    # The judge answers only the Prefect server's automation: a token, from the server machine alone.
    judge = f"http://127.0.0.1:{team.ports['GATE_BACKEND_PORT']}/gate/silence"
    token = (team.servers / "secrets" / "silence-webhook").read_text().strip()
    asked = {"resource": f"prefect.flow-run.{flow_run_id}", "window_seconds": WINDOW, "heartbeat_seconds": 30}
    assert (
        call(f"{team.mlflow_url}/gate/silence", team.ca, asked, headers={"Authorization": f"Bearer {token}"})[0] == 404
    )
    assert call(judge, body=asked)[0] == 401
    assert call(judge, body=asked, headers={"Authorization": "Bearer " + "0" * len(token)})[0] == 401
    assert call(judge, body=asked, headers={"Authorization": f"Bearer {token}"})[0] == 202
    gate_log = team.servers / "gate.log"
    wait_until(lambda: f"flow run {flow_run_id} is alive" in gate_log.read_text(), "the judge's verdict", 90)
    # A retry while it runs is refused by Prefect; it trains once and completes.
    retry = team.b.run(
        BIN / "prefect", "flow-run", "retry", flow_run_id, env=team.accounts["maintainer-b"], check=False
    )
    assert retry.returncode != 0 and "cannot be retried" in " ".join(retry.output.split()), retry.output
    team.wait_for(flow_run_id, "COMPLETED", "the run stalled longer than the window")
    assert "CRASHED" not in _states(team, flow_run_id), _states(team, flow_run_id)
    client = team.mlflow("reader-b")
    experiment = client.get_experiment_by_name(name).experiment_id
    pipelines = client.search_runs(
        [experiment], f"tags.skillops.kind = 'pipeline' and tags.skillops.prefect_flow_run_id = '{flow_run_id}'"
    )
    assert [run.info.status for run in pipelines] == ["FINISHED"], [(r.info.run_id, r.info.status) for r in pipelines]
