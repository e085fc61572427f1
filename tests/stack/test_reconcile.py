"""Runs left RUNNING by a flow run that died are closed by the next start on any machine that
shares the Prefect server: the flow run's state on the server says so, not a local pid."""

from skillops import tracking


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
        elsewhere = {"skillops.host": "gpu-worker-2", "skillops.pid": "4242", tracking.PREFECT_API_TAG: api}
        dead_run = tracking.start_run("team", "dead", {}, {**elsewhere, tracking.FLOW_RUN_TAG: str(crashed.id)})
        live_run = tracking.start_run("team", "live", {}, {**elsewhere, tracking.FLOW_RUN_TAG: str(alive.id)})

        assert tracking.fail_stale_runs("team", api, flow_run_states) == [dead_run]

    client = tracking.client()
    dead = client.get_run(dead_run)
    assert dead.info.status == "FAILED"
    assert f"its Prefect flow run {crashed.id} is CRASHED on {api}" in dead.data.tags["skillops.failure"]
    assert client.get_run(live_run).info.status == "RUNNING"
    # Without the server's word (another Prefect server, or none) a foreign run is left alone.
    assert tracking.fail_stale_runs("team", "http://127.0.0.1:1/api", flow_run_states) == []
    assert tracking.fail_stale_runs("team") == []
