"""Runs left RUNNING by a flow run that died are closed by the next start on any machine that
shares the Prefect server: the flow run's state on the server says so, not a local pid."""

import time

import pytest

from skillops.tracking import runs


def test_a_run_whose_flow_run_crashed_is_marked_failed_from_another_machine(prefect_server, mlflow_store):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Crashed, Running

    from orchestration import flow_run_states, shared_prefect_api

    env, _, _ = prefect_server

    @flow(name="stand-in")
    def stand_in():
        pass

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        api = shared_prefect_api()
        assert api == env["PREFECT_API_URL"]
        with get_client(sync_client=True) as client:
            crashed = client.create_flow_run(stand_in, state=Running())
            client.set_flow_run_state(crashed.id, Crashed(message="worker lost"), force=True)
            alive = client.create_flow_run(stand_in, state=Running())

        # Two pipeline runs started on "another machine": its pid means nothing here.
        elsewhere = {"skillops.host": "gpu-worker-2", "skillops.pid": "4242", runs.PREFECT_API_TAG: api}
        dead_run = runs.start_run("team", "dead", {}, {**elsewhere, runs.FLOW_RUN_TAG: str(crashed.id)})
        live_run = runs.start_run("team", "live", {}, {**elsewhere, runs.FLOW_RUN_TAG: str(alive.id)})

        assert runs.fail_stale_runs("team", api, flow_run_states) == [dead_run]

    client = runs.client()
    dead = client.get_run(dead_run)
    assert dead.info.status == "FAILED"
    assert f"its Prefect flow run {crashed.id} is CRASHED on {api}" in dead.data.tags["skillops.failure"]
    assert client.get_run(live_run).info.status == "RUNNING"
    # Without the server's word (another Prefect server, or none) a foreign run is left alone.
    assert runs.fail_stale_runs("team", "http://127.0.0.1:1/api", flow_run_states) == []
    assert runs.fail_stale_runs("team") == []


def test_a_live_run_crashed_by_a_stall_is_never_trained_twice(prefect_server, mlflow_store, monkeypatch):
    """A stalled server let the automation mark a live flow run CRASHED. Its MLflow run still says
    it is alive: the next start anywhere leaves it RUNNING, and a retry of that flow run stops
    before training. An attempt that fell silent is waited for, then taken for dead."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Crashed, Running

    from orchestration import flow_run_states
    from skillops.errors import StillRunningError

    monkeypatch.setenv("SKILLOPS_RUN_ALIVE_SECONDS", "2")  # alive within 6 s; production: 20 s, 60 s
    env, _, _ = prefect_server

    @flow(name="stand-in")
    def stand_in():
        pass

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        api = env["PREFECT_API_URL"]
        with get_client(sync_client=True) as client:
            ids = []
            for _ in range(2):
                crashed = client.create_flow_run(stand_in, state=Running())
                client.set_flow_run_state(crashed.id, Crashed(message="no heartbeat for 0:02:00"), force=True)
                ids.append(str(crashed.id))
        stalled_flow_run, dead_flow_run = ids
        elsewhere = {"skillops.host": "gpu-worker-2", "skillops.pid": "4242", runs.PREFECT_API_TAG: api}
        stalled = runs.start_run("team", "stalled", {}, {**elsewhere, runs.FLOW_RUN_TAG: stalled_flow_run})
        runs.keep_alive(stalled)  # beats, as the live process on gpu-worker-2 does
        dead = runs.start_run("team", "dead", {}, {**elsewhere, runs.FLOW_RUN_TAG: dead_flow_run})
        runs.set_tags(dead, {runs.ALIVE_TAG: f"{time.time() - 600:.0f}"})  # its last word, 10 min ago

        # Another flow run starting: the live one is left alone, the silent one is failed.
        assert runs.fail_stale_runs("team", api, flow_run_states) == [dead]
        with pytest.raises(StillRunningError, match=f"flow run {stalled_flow_run} was retried while its earlier"):
            runs.fail_stale_runs("team", api, flow_run_states, current_flow_run=stalled_flow_run)
    client = runs.client()
    assert client.get_run(stalled).info.status == "RUNNING"
    assert client.get_run(dead).info.status == "FAILED"

    # A retry of a silent attempt waits a window for it to speak, then takes it for dead.
    silent = runs.start_run("team", "silent", {}, {**elsewhere, runs.FLOW_RUN_TAG: dead_flow_run})
    runs.set_tags(silent, {runs.ALIVE_TAG: f"{time.time() - 600:.0f}"})
    began = time.monotonic()
    assert runs.fail_stale_runs("team", current_flow_run=dead_flow_run) == [silent]
    assert time.monotonic() - began >= 6  # it waited for a beat that never came
    assert "an earlier attempt of Prefect flow run" in client.get_run(silent).data.tags["skillops.failure"]
    runs.end_run(stalled)
