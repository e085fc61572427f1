"""The worker of skillops' pools: Prefect's process worker, which refuses to start a flow run
that would run anything but skillops' flows from the team's repository.

Prefect has one credential and no roles: whoever holds it can set a flow run's `command`, `env`
or `working_dir` job variables, edit the pool's job template, or make a deployment whose pull
steps clone another repository or run a shell; a plain process worker then runs that with its
environment, the machine's MLflow credential included. This worker starts a flow run only when
its deployment clones SKILLOPS_GIT_URL (this machine's setting, not the deployment's) with
Prefect's git_clone step alone, its entrypoint is one of skillops' flows, and nothing overrides
the command, the environment or the working folder. A refused run is marked CRASHED, saying why.

    python flows/worker.py --pool skillops [--limit 1]     # scripts/stack.sh starts it (TEAM=1)
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from prefect.workers.process import ProcessWorker

ENTRYPOINTS = {"flows/train_esco.py:train_esco", "flows/train_esco.py:tune_trials"}
GIT_CLONE = "prefect.deployments.steps.git_clone"
LOCKED = ("command", "env", "working_dir")  # job variables no flow run may set here


class Refused(RuntimeError):
    """A flow run this worker will not start; the message says what it asked for."""


def refusal(deployment, flow_run, pool_template: dict, repository: str | None) -> str | None:
    """Why the flow run may not start here (None: it may)."""
    if deployment is None:
        return "it belongs to no deployment (skillops' workers run only skillops' deployments)"
    if deployment.entrypoint not in ENTRYPOINTS:
        return f"its entrypoint {deployment.entrypoint!r} is not one of skillops' flows {sorted(ENTRYPOINTS)}"
    steps = [next(iter(step)) for step in deployment.pull_steps or []]
    if steps != [GIT_CLONE]:
        return f"its pull steps are {steps}, not the one git_clone of the team's repository"
    cloned = deployment.pull_steps[0][GIT_CLONE].get("repository")
    if repository is None or cloned != repository:
        return f"it clones {cloned!r}, not this machine's SKILLOPS_GIT_URL ({repository!r})"
    asked = {**(deployment.job_variables or {}), **(flow_run.job_variables or {})}
    if set(asked) & set(LOCKED):
        return f"it sets the job variables {sorted(set(asked) & set(LOCKED))}"
    unlocked = set(pool_template.get("job_configuration", {})) & set(LOCKED)
    if unlocked:
        return f"the pool's job template sets {sorted(unlocked)} (make stack-up locks it again)"
    return None


with warnings.catch_warnings():
    # Prefect registers worker classes by pool type; this one takes the process pool's place in
    # this process on purpose, and Prefect warns that it does.
    warnings.filterwarnings("ignore", message=".*matches existing registered type")

    class SkillopsWorker(ProcessWorker):
        type = "process"

        async def run(self, flow_run, configuration, task_status=None):
            deployment = await self.client.read_deployment(flow_run.deployment_id) if flow_run.deployment_id else None
            template = self.work_pool.base_job_template if self.work_pool else {}
            why = refusal(deployment, flow_run, template, os.environ.get("SKILLOPS_GIT_URL"))
            if why is not None:
                raise Refused(f"skillops' worker refused flow run {flow_run.name!r}: {why}.")
            return await super().run(flow_run, configuration, task_status)


def locked_job_template() -> dict:
    """The process pool's default job template without the variables a flow run could use to
    run something else (LOCKED); any other variable a flow run names is refused (422)."""
    template = ProcessWorker.get_default_base_job_template()
    for name in LOCKED:
        template["job_configuration"].pop(name, None)
        template["variables"]["properties"].pop(name, None)
    template["variables"]["additionalProperties"] = False
    return template


def main(argv: list[str] | None = None) -> int:
    import json

    import anyio

    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--pool", help="the work pool to take flow runs from")
    cli.add_argument("--limit", type=int, default=None, help="flow runs at a time on this machine")
    cli.add_argument("--job-template", action="store_true", help="print the pool's locked job template and exit")
    arguments = cli.parse_args(argv)
    if arguments.job_template:
        print(json.dumps(locked_job_template(), indent=1))
        return 0
    if not arguments.pool:
        cli.error("give --pool")

    anyio.run(SkillopsWorker(work_pool_name=arguments.pool, limit=arguments.limit).start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
