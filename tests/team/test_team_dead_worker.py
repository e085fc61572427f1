"""A machine dies mid-training (its worker and the training SIGKILLed): the heartbeat automation
marks the flow run CRASHED without anyone starting a run; retried, the run is taken by the other
machine's worker and resumes from the dead one's last checkpoint, kept in the tracking server's
artifact store. The dead machine's worker is started again, as its owner would."""

from __future__ import annotations

import os
import re
import shutil
import signal

import pytest

from helpers import BIN, parent_pid

pytestmark = pytest.mark.faults  # a worker and its training are killed

# Checkpoints every 10 steps (the tiny model trains about 20 a second here); long enough that the
# kill lands mid-training.
LONG = {"training.max_steps": 800, "training.checkpoint_every_steps": 10, "training.learning_rate": 1e-3}


def test_a_dead_machines_run_is_crashed_by_its_silence_and_resumes_on_another(team):
    name = "dead-worker"
    recipe = team.recipe(name)
    maintainer = team.accounts["maintainer-b"]
    client = team.mlflow("reader-b")
    long_run = team.b.deployment_run(maintainer, recipe, LONG)
    killed = team.checkpointed_run(name)
    flow_pid = int(killed.data.tags["skillops.pid"])
    machines = {
        "a": (team.servers, team.stack),
        "b": (team.b.root / "stack", {**team.accounts["worker-b"], **team.b_stack}),
    }
    dead = next(
        m for m, (state, _) in machines.items() if int((state / "worker.pid").read_text()) == parent_pid(flow_pid)
    )
    alive = "b" if dead == "a" else "a"
    state, env = machines[dead]
    for group in {os.getpgid(int((state / "worker.pid").read_text())), os.getpgid(flow_pid)}:
        os.killpg(group, signal.SIGKILL)
    if (state / "outputs").exists():
        shutil.move(state / "outputs", team.tmp / f"{dead}-outputs-gone")  # nothing of its disk is read again
    crashed = team.wait_for(long_run, "CRASHED", "the heartbeat automation to mark the run CRASHED", 240)
    assert "No heartbeat for" in crashed["state"]["message"]
    # Marked by the stack's judge, which found none of its heartbeats from the window.
    assert f"flow run {long_run} is silent for" in (team.servers / "gate.log").read_text()

    team.b.run(BIN / "prefect", "flow-run", "retry", long_run, env=maintainer)
    team.wait_for(long_run, "COMPLETED", f"the retried run on machine {alive.upper()}")
    survivor = machines[alive][0] / "worker.log"
    resumed = re.findall(r"Resuming training from step (\d+)", survivor.read_text())
    assert resumed, survivor.read_text()[-3000:]
    assert client.get_run(killed.info.run_id).info.status == "FAILED"
    assert "an earlier attempt of Prefect flow run" in client.get_run(killed.info.run_id).data.tags["skillops.failure"]
    (retried,) = client.search_runs(
        [killed.info.experiment_id],
        f"tags.skillops.prefect_flow_run_id = '{long_run}' and attributes.status = 'FINISHED'",
    )
    assert retried.data.tags["skillops.restored_from"].startswith(f"run {killed.info.run_id}")
    assert retried.data.metrics["resumed_from_step"] == int(resumed[-1]) >= 10  # the dead one's checkpoint
    assert retried.data.tags["skillops.decision"] in ("promoted", "not promoted")

    # Its owner starts the dead machine's worker again (the stack is left as the test found it).
    started = (team.a if dead == "a" else team.b).run("scripts/stack.sh", "up", env=env, timeout=300)
    assert "worker started" in started.stdout
