"""Prefect's side of the train-esco flow, in one place: which Prefect server a run reports to,
the states of its flow runs, trial workers as deployment runs, the promotion slot, and the
automation that notices dead workers.

`train_esco.py` orders the stages and calls `skillops.stages`; what only Prefect can answer or
provide lives here, so the library never imports Prefect.

    python flows/orchestration.py watch-heartbeats [--judge URL TOKEN_FILE]
        # the dead-worker automation (make stack-up runs it; on a team stack, with its judge)
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import prefect
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.runtime import deployment as prefect_deployment
from prefect.runtime import flow_run as prefect_flow_run
from prefect.settings import get_current_settings
from prefect.states import Cancelled

from skillops.config import Recipe
from skillops.context import FlowRun
from skillops.errors import RecipeError
from skillops.settings import settings
from skillops.stack import silence
from skillops.training.tuning_workers import StudyTicket
from skillops.uris import safe_uri

# The deployment (in prefect.yaml and prefect.team.yaml) whose runs are trial workers of the pool.
TRIALS_DEPLOYMENT = "tune-trials/pool"
# Prefect's documented answer to a worker that dies with its flow run: every flow run of a
# deployment sends heartbeat events (PREFECT_FLOWS_HEARTBEAT_FREQUENCY), and an automation marks one
# CRASHED once they stop: after SKILLOPS_MISSED_HEARTBEATS (4) of them, so that a restart of the
# Prefect server of up to a minute (no heartbeat arrives meanwhile) does not crash the runs it
# interrupted. On a team stack it asks the stack's judge first (skillops.stack.silence).
HEARTBEAT_AUTOMATION = "skillops: crash flow runs whose worker stopped"
# The Prefect block that holds the judge's address and token (a team stack's, skillops.stack.silence).
SILENCE_WEBHOOK = "skillops-silent-flow-run-judge"


def shared_prefect_api() -> str | None:
    """The Prefect server this run reports to, when it is one that outlives the run (not the
    temporary server of a plain `python flows/train_esco.py`)."""
    api = get_current_settings().api.url
    return safe_uri(api) if api else None


def this_flow_run() -> FlowRun | None:
    """The flow run of the calling task, when it is on a shared Prefect server."""
    api = shared_prefect_api()
    if api is None:
        return None
    deployment = f"{prefect_flow_run.flow_name}/{prefect_deployment.name}" if prefect_deployment.id else None
    return FlowRun(id=str(prefect_flow_run.id), api=api, name=prefect_flow_run.name, deployment=deployment)


def flow_run_states(flow_run_ids: list[str]) -> dict[str, str]:
    """Flow run id -> its state type (CRASHED, FAILED, RUNNING, ...) on this Prefect server."""
    states = {}
    with get_client(sync_client=True) as client:
        for flow_run_id in flow_run_ids:
            try:
                state = client.read_flow_run(UUID(flow_run_id)).state
            except ObjectNotFound:
                continue
            if state is not None:
                states[flow_run_id] = state.type.value
    return states


class PoolTrialWorkers:
    """Trial workers as runs of the tune-trials deployment: any worker of the pool may take one,
    on any machine. Their trials report to the study, so the run does not wait on the flow runs
    themselves; those no worker took by the time the study is done are cancelled."""

    def __init__(self, ticket: StudyTicket, count: int) -> None:
        parameters = {"ticket": ticket.model_dump(mode="json")}
        self.flow_run_ids = [
            run_deployment(
                TRIALS_DEPLOYMENT,
                parameters=parameters,
                timeout=0,  # started, not awaited: this run tunes alongside them
                flow_run_name=f"tune-trials {ticket.study_name} {number}/{count}",
            ).id
            for number in range(1, count + 1)
        ]

    def wait(self) -> None:
        """Nothing to wait for here: the search waits for the study's running trials by heartbeat."""

    def stop(self) -> None:
        untaken = 0
        with get_client(sync_client=True) as client:
            for flow_run_id in self.flow_run_ids:
                state = client.read_flow_run(flow_run_id).state
                if state is not None and state.is_scheduled():
                    client.set_flow_run_state(flow_run_id, Cancelled(message="the study has its trials"), force=True)
                    untaken += 1
        if untaken:
            print(f"{untaken} of {len(self.flow_run_ids)} tune-trials runs were not taken by any worker: cancelled")


def require_trial_pool(recipe: Recipe) -> None:
    """With `search.workers: pool`, a shared Prefect server and the tune-trials deployment, before any compute."""
    search = recipe.search
    if search.parallel == 1 or search.workers != "pool":
        return
    if shared_prefect_api() is None:
        raise RecipeError(
            "search.workers = pool, but this run has no Prefect server that workers share: set PREFECT_API_URL "
            "(`make stack-up` prints it) or use search.workers: local."
        )
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(client.read_deployment_by_name(TRIALS_DEPLOYMENT).work_pool_name)
        except ObjectNotFound:
            raise RecipeError(
                f"search.workers = pool, but the Prefect server has no deployment {TRIALS_DEPLOYMENT}: deploy "
                "prefect.yaml (or prefect.team.yaml) again, e.g. `make stack-up`."
            ) from None
    if pool.concurrency_limit is not None and pool.concurrency_limit < search.parallel:
        raise RecipeError(
            f"search.parallel = {search.parallel} with search.workers = pool, but the work pool {pool.name} runs at "
            f"most {pool.concurrency_limit} flow run(s) at a time, this run included: give search.parallel at most "
            f"{pool.concurrency_limit}, raise the pool's limit (`prefect work-pool set-concurrency-limit`), or use "
            "search.workers: local."
        )


def promotion_slot_name(model_name: str) -> str | None:
    """The lock every machine takes before moving this model's champion: a global concurrency
    limit of the shared Prefect server (None without one: the temporary server is this run's own)."""
    api = shared_prefect_api()
    return f"global concurrency limit skillops-promote-{model_name} on {api}" if api else None


def promotion_slot(model_name: str):
    """A strict Prefect global concurrency limit of 1 per registered model, created on first use:
    runs on any worker that share this Prefect server promote one at a time. (The library re-reads
    the champion before moving the alias.)"""
    name = f"skillops-promote-{model_name}"
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            # Read first: a create that meets an existing limit is answered 409, but the server
            # logs a database traceback for it, on every run after the first.
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
            except ObjectAlreadyExists:
                pass  # a run starting at the same moment made it
    return concurrency(name, occupy=1, strict=True, timeout_seconds=settings().promotion_wait_seconds)


def require_readable_temporary_database() -> None:
    """Without a Prefect server, a run starts Prefect's temporary one on PREFECT_HOME's database. A
    database another project's newer Prefect migrated cannot be read by this one: its server never
    answers, and the cause would show only in that server's log. Named here, with the fix."""
    import re
    import sqlite3

    import prefect.server.database as database

    settings = get_current_settings()
    if settings.api.url:
        return
    url = settings.server.database.connection_url.get_secret_value()
    path = Path(url.split(":///", 1)[1]) if url.startswith("sqlite") and ":///" in url else None
    if path is None or not path.is_file():
        return
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except (sqlite3.Error, TypeError):
        return  # no schema yet: Prefect makes it
    migrations = Path(database.__file__).parent / "_migrations" / "versions" / "sqlite"
    known = {
        m.group(1) for f in migrations.glob("*.py") if (m := re.search(r'^revision = "(\w+)"', f.read_text(), re.M))
    }
    if revision not in known:
        raise RecipeError(
            f"Prefect's database {path} is at revision {revision!r}, which this Prefect ({prefect.__version__}) does "
            "not know: a newer Prefect (another project's) migrated it, and this one's temporary server cannot "
            "start on it. Fix: give this project a Prefect home of its own (`make train` uses .prefect/ in the "
            "checkout: PREFECT_HOME=$PWD/.prefect), or move that file away."
        )


def _heartbeat_seconds() -> int | None:
    return get_current_settings().flows.heartbeat_frequency


def watch_heartbeats(judge: tuple[str, Path] | None = None) -> str:
    """The dead-worker automation on this Prefect server, made unless it is there as asked; its
    window is SKILLOPS_MISSED_HEARTBEATS of this machine's heartbeat period. With `judge` (the URL
    of the stack's silent-flow-run judge and the file of its token, `skillops.stack.silence`), the
    automation asks the judge, which marks a run CRASHED only when Prefect holds none of its
    heartbeats from the window; without one (a stack of one machine) it marks the run itself."""
    from prefect.automations import Automation
    from prefect.blocks.webhook import Webhook
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import CallWebhook, ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    seconds = _heartbeat_seconds()
    if not seconds:
        raise RecipeError(
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY is off: flow runs send no heartbeats to watch; set it (30 or more)."
        )
    window = timedelta(seconds=seconds * settings().missed_heartbeats)
    if judge:
        url, token_file = judge
        webhook = Webhook(url=url, headers={"Authorization": f"Bearer {token_file.read_text('utf-8').strip()}"})
        action = CallWebhook(
            block_document_id=webhook.save(SILENCE_WEBHOOK, overwrite=True),
            payload=json.dumps(
                {
                    "resource": "{{ event.resource.id }}",
                    "window_seconds": window.total_seconds(),
                    "heartbeat_seconds": seconds,
                }
            ),
        )
    else:
        action = ChangeFlowRunState(state=StateType.CRASHED, message=silence.crash_message(window))
    try:
        found = Automation.read(name=HEARTBEAT_AUTOMATION)
        # A machine that joins the stack takes the automation as its server machine made it.
        if judge is None or (found.actions == [action] and found.trigger.within == window):
            return f"{HEARTBEAT_AUTOMATION!r} is there (window {found.trigger.within})"
        found.delete()  # made before the stack had a judge, or for another judge or window: made anew
    except ValueError:
        pass  # not made yet
    Automation(
        name=HEARTBEAT_AUTOMATION,
        description=f"Flow runs send a heartbeat every {seconds} s; one silent for {window} lost its worker.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=window,
        ),
        actions=[action],
    ).create()
    return f"made {HEARTBEAT_AUTOMATION!r} (window {window}" + (", judged by the stack's service)" if judge else ")")


def require_heartbeat_watch() -> None:
    """A deployment run on a shared server is watched for a dead worker, and sends heartbeats often
    enough for the watch: refused before any compute otherwise, naming what to set."""
    from prefect.automations import Automation

    if shared_prefect_api() is None or not prefect_deployment.id:
        return  # a run by hand: its own terminal shows whether it died
    try:
        found = Automation.read(name=HEARTBEAT_AUTOMATION)
    except ValueError:
        raise RecipeError(
            f"The Prefect server {shared_prefect_api()} has no automation {HEARTBEAT_AUTOMATION!r}: a flow run "
            "whose worker dies would stay RUNNING forever. Run `python flows/orchestration.py watch-heartbeats` "
            "(make stack-up does) and start the run again."
        ) from None
    seconds = _heartbeat_seconds()
    if (
        not found.enabled
        or not seconds
        or seconds * settings().missed_heartbeats > found.trigger.within.total_seconds()
    ):
        raise RecipeError(
            f"This worker sends a heartbeat every {seconds} s (PREFECT_FLOWS_HEARTBEAT_FREQUENCY), but "
            f"{HEARTBEAT_AUTOMATION!r} crashes a flow run after {found.trigger.within} of silence"
            + ("" if found.enabled else " and is paused")
            + ": give this worker the stack's PREFECT_FLOWS_HEARTBEAT_FREQUENCY (make stack-up sets it) and resume it."
        )


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if arguments[:1] != ["watch-heartbeats"] or len(arguments) not in (1, 4) or arguments[1:2] not in ([], ["--judge"]):
        sys.exit("usage: python flows/orchestration.py watch-heartbeats [--judge URL TOKEN_FILE]")
    print(watch_heartbeats((arguments[2], Path(arguments[3])) if len(arguments) == 4 else None))
