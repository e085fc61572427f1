"""The judge of a flow run that Prefect found silent, before anyone calls it crashed.

Prefect's heartbeat automation (flows/orchestration.py) counts a flow run's heartbeats as its
server takes them in. With the server's database stalled, the heartbeats still arrive but wait in
the server's queue; once the database goes on, the automation may look at the run before the
queue is drained and find it silent, though it never stopped (a 45 s stall crashed a live run
under a 60 s window). On a team stack the automation therefore only calls this judge (a webhook
to the promotion authority's service, on the server machine): it waits one heartbeat period for
Prefect to store what it has received, and marks the run CRASHED only when no heartbeat from the
last window is there.

Plain HTTP to Prefect's REST API on 127.0.0.1, with the stack's Prefect credential as the service
read it at its start: the Prefect server started with the same one, and both take a replaced one
(`skillops users remove`) when the stack restarts.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

logger = logging.getLogger("skillops.stack.silence")

HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
FLOW_RUN_RESOURCE = "prefect.flow-run."
# Prefect's event persister writes what it received every few seconds.
STORED_WITHIN_SECONDS = 10
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")


def crash_message(window: timedelta) -> str:
    """The CRASHED state's message (the tests and the docs quote its start)."""
    return (
        f"No heartbeat for {window}: the flow run's worker or machine stopped. `prefect flow-run retry <id>` runs "
        "it again on any worker of the pool; it resumes from its last checkpoint."
    )


@dataclass(frozen=True)
class PrefectApi:
    """Prefect's REST API as the stack's own servers reach it (http://127.0.0.1:<port>/api)."""

    url: str
    auth: str = field(repr=False)  # the secret part of PREFECT_SERVER_API_AUTH_STRING

    @classmethod
    def reading(cls, url: str, auth_file: Path) -> PrefectApi:
        return cls(url, auth_file.read_text("utf-8").strip())

    def session(self):
        """A requests session for one judgment: the credential, and the CSRF token that the stack's
        Prefect server asks every write for, fetched once."""
        import requests

        session = requests.Session()
        session.headers["Authorization"] = "Basic " + base64.b64encode(f"skillops:{self.auth}".encode()).decode()
        token = session.get(f"{self.url}/csrf-token?client=skillops-silence", timeout=10)
        token.raise_for_status()
        session.headers.update({"Prefect-Csrf-Token": token.json()["token"], "Prefect-Csrf-Client": "skillops-silence"})
        return session

    def call(self, session, method: str, path: str, body: dict | None = None) -> dict:
        answer = session.request(method, self.url + path, json=body, timeout=30)
        answer.raise_for_status()
        return answer.json() if answer.content else {}


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat()


def _heard_since(api: PrefectApi, session, flow_run_id: str, since: float) -> bool:
    found = api.call(
        session,
        "POST",
        "/events/filter",
        {
            "filter": {
                "occurred": {"since": _iso(since), "until": _iso(time.time() + 3600)},
                "event": {"name": [HEARTBEAT_EVENT]},
                "resource": {"id": [FLOW_RUN_RESOURCE + flow_run_id]},
            },
            "limit": 1,
        },
    )
    return bool(found.get("events"))


def judge(api: PrefectApi, resource: str, window_seconds: float, heartbeat_seconds: float) -> str:
    """Mark the flow run of `resource` (prefect.flow-run.<id>) CRASHED if Prefect holds no
    heartbeat of it from the last `window_seconds`, once it has had a heartbeat period and the
    time to store what it received. Returns what it found (the service logs it)."""
    if not resource.startswith(FLOW_RUN_RESOURCE):
        raise ValueError(f"not a flow run: {resource!r}")
    flow_run_id = resource.removeprefix(FLOW_RUN_RESOURCE)
    asked, window = time.time(), timedelta(seconds=window_seconds)
    deadline = time.monotonic() + heartbeat_seconds + STORED_WITHIN_SECONDS
    with api.session() as session:
        while not _heard_since(api, session, flow_run_id, asked - window_seconds):
            if time.monotonic() > deadline:
                break
            time.sleep(2)
        else:
            return f"flow run {flow_run_id} is alive: Prefect holds a heartbeat of it from the last {window}"
        state = api.call(session, "GET", f"/flow_runs/{flow_run_id}")["state"]
        if state is None or state["type"] in FINAL_STATES:
            return f"flow run {flow_run_id} is silent and already {state['type'] if state else 'without a state'}"
        api.call(
            session,
            "POST",
            f"/flow_runs/{flow_run_id}/set_state",
            {"state": {"type": "CRASHED", "message": crash_message(window)}, "force": False},
        )
    return f"flow run {flow_run_id} is silent for {window}: marked CRASHED"


def request_fields(body: bytes) -> tuple[str, float, float]:
    """The webhook's JSON body (flows/orchestration.py writes its template): the flow run's
    resource id, the window and the heartbeat period in seconds."""
    fields = json.loads(body)
    return str(fields["resource"]), float(fields["window_seconds"]), float(fields["heartbeat_seconds"])
