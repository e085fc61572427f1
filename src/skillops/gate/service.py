"""The promotion authority's HTTP service, on a team's stack's server machine, behind the stack's
nginx at https://<host>:<MLflow port>/gate/ (nginx also sends it /graphql, see `graphql_queries`).

    python -m skillops.gate.service --port 15100     # scripts/stack.sh starts it (TEAM=1)

Callers send their own MLflow account (HTTP basic auth, as to the tracking server); the service
asks the tracking server who they are and which of skillops' roles they hold, so a wrong password
counts towards the same limit on guesses (`stack.throttle`). Then:

| route | who | what |
|---|---|---|
| GET  /gate/models/{name} | any account | the policy, its changes, the champion's moves |
| POST /gate/experiments/{name}/open | pipeline | a recipe's experiment, where the pipeline's role may create runs |
| POST /gate/models/{name}/open | pipeline | the model's first policy, from the run's recipe at its commit |
| POST /gate/models/{name}/judge | pipeline | judge a candidate; promote it if it passes |
| POST /gate/models/{name}/rollback | maintainer | move the champion back (to a version that was champion) |
| POST /gate/models/{name}/policy | maintainer | change fields of the policy, or take a recipe's |
| POST /gate/silence | Prefect's heartbeat automation (a token; from this machine only) | judge a silent flow run (`skillops.stack.silence`) |

The service acts with its own account (MLFLOW_TRACKING_USERNAME / _PASSWORD in its environment,
from the stack's secrets; a workspace admin of the tracking server, which it reaches on
127.0.0.1): it alone may write the served models. Its record and holdings are in
SKILLOPS_GATE_DATABASE (the stack's PostgreSQL).
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skillops.errors import AccessError, PolicyError, SkillopsError
from skillops.stack import silence as silence_judge

logger = logging.getLogger("skillops.gate.service")

PIPELINE, MAINTAINER = "pipeline", "maintainer"
ROLE_PREFIX = "skillops-"  # the MLflow role of skillops' role `r` is skillops-r (skillops.stack.accounts)

# What each kind of refusal answers (the caller's client turns the name back into the error).
STATUS = {
    "AccessError": 403,
    "PolicyError": 409,
    "RollbackError": 409,
    "PromotionError": 409,
    "RecipeError": 422,
    "DataError": 422,
    "DataValidationError": 422,
    "ModelNotFoundError": 404,
}


@dataclass(frozen=True)
class Caller:
    name: str
    roles: frozenset[str]
    admin: bool

    def require(self, role: str, action: str) -> None:
        if not (self.admin or role in self.roles):
            raise AccessError(
                f"Account {self.name} ({', '.join(sorted(self.roles)) or 'no skillops role'}) may not {action}: "
                f"that takes the {role} role."
            )


class Gate:
    """The service's state: its record, its holdings, a lock per model, where it works."""

    def __init__(self, database: str, workdir: Path, git_url: str | None, backend: str) -> None:
        import sqlalchemy as sa

        from skillops.gate.holdings import Holdings
        from skillops.gate.judging import Sources
        from skillops.gate.record import SqlRecord

        engine = sa.create_engine(database, pool_pre_ping=True)
        self.record, self.holdings = SqlRecord(engine), Holdings(engine)
        self.workdir, self.backend = workdir, backend.rstrip("/")
        self.sources = Sources(git_url, workdir)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def authority(self, caller: Caller, serve=None):
        from skillops.gate.authority import Authority

        return Authority(self.record, caller.name, self.lock, **({"serve": serve} if serve else {}))

    # --- who is asking ---------------------------------------------------------------------------

    def caller(self, authorization: str | None, address: str) -> Caller:
        """The account of this request's credentials, and its skillops roles, as the tracking
        server knows them (wrong credentials count towards its limit on guesses)."""
        import requests

        if not authorization:
            raise _Refused(401, "Give your account's credentials (HTTP basic auth).")
        headers = {"Authorization": authorization, "X-Forwarded-For": address}
        who = requests.get(f"{self.backend}/api/2.0/mlflow/users/current", headers=headers, timeout=30)
        if who.status_code != 200:
            raise _Refused(who.status_code, "The tracking server did not accept these credentials.")
        user = who.json()["user"]
        grants = requests.get(
            f"{self.backend}/api/3.0/mlflow/users/current/permissions", headers=headers, timeout=30
        ).json()
        roles = {
            row["role_name"].removeprefix(ROLE_PREFIX)
            for row in grants.get("permissions", [])
            if row["role_name"].startswith(ROLE_PREFIX)
        }
        return Caller(user["username"], frozenset(roles), bool(user.get("is_admin") or grants.get("is_admin")))

    # --- what it does ----------------------------------------------------------------------------

    def describe(self, name: str) -> dict[str, Any]:
        from skillops.tracking import registry

        try:
            policy = self.record.policy(name)
            problem = None
        except PolicyError as error:
            policy, problem = None, str(error)
        return {
            "policy": None if policy is None else policy.model_dump(mode="json"),
            "problem": problem,
            "changes": self.record.policy_changes(name),
            "history": self.record.moves(name),
            "champion": registry.champion_version(name),
        }

    def open_experiment(self, caller: Caller, name: str) -> dict[str, Any]:
        """A recipe's experiment, where the pipeline's role may then create runs (EDIT on it
        alone): every run opens its experiment first. Made here unless it exists."""
        from skillops.gate.judging import EXPERIMENT
        from skillops.stack import accounts
        from skillops.tracking import runs

        caller.require(PIPELINE, "create runs")
        if name == EXPERIMENT:
            raise AccessError(
                f"The experiment {EXPERIMENT!r} is the promotion authority's own; name the recipe otherwise."
            )
        experiment_id = runs.experiment_id(name)
        accounts.grant_experiment(_admin_client(), experiment_id)
        return {"experiment_id": experiment_id}

    def open(self, caller: Caller, name: str, recipe_source: str, ref: str | None) -> dict[str, Any]:
        """The model's first policy, from the asking run's recipe at its commit: its evaluation
        sets built and frozen here, the served model and its candidates model made by this
        service (the pipeline's role may then register candidates, nothing more). A model that
        has a policy keeps it."""
        from skillops.gate.judging import frozen_sets
        from skillops.judging.promotion import ModelPolicy
        from skillops.tracking import registry

        caller.require(PIPELINE, "register candidates")
        with self.lock(name):
            stored = self.record.policy(name)
            if stored is not None:
                return {"policy": stored.model_dump(mode="json"), "opened": False}
            recipe = self.sources.recipe(recipe_source, ref)
            if self.holdings.frozen(name) is None:  # not half-opened by an earlier request of this service
                squatted = [model for model in (name, registry.candidates(name)) if _exists(model)]
                if squatted:
                    raise AccessError(
                        f"{squatted} already exist but were not made by the promotion authority (it has no record of "
                        f"{name!r}): some account made them by hand. The stack's admin deletes them (they are not "
                        "served by the gate), then run again."
                    )
                snapshot, sets = frozen_sets(recipe)
                self.holdings.freeze(name, snapshot, recipe, sets)
            _ensure_candidates_model(name)
        why = f"first policy of the model: recipe {recipe_source} at {ref or 'the shared file'}, as written"
        policy = self.authority(caller).first_policy(name, ModelPolicy.of_recipe(recipe), why)
        return {"policy": policy.model_dump(mode="json"), "opened": True}

    def judge(self, caller: Caller, name: str, candidate: str, run_policy: dict | None) -> dict[str, Any]:
        import json

        from skillops.gate import judging
        from skillops.judging.promotion import ModelPolicy
        from skillops.tracking import registry, runs

        caller.require(PIPELINE, "ask for a candidate to be judged")
        policy = self.record.policy(name)
        if policy is None:
            self.authority(caller).require_policy(name)  # raises, naming the repair
        evidence = judging.FrozenEvidence(self.holdings, name, candidate, policy, self.workdir)
        authority = self.authority(caller, serve=lambda model, version: judging.serve(model, version, evidence))
        decision = authority.judge(
            name, candidate, evidence, None if run_policy is None else ModelPolicy.model_validate(run_policy)
        )
        client = runs.client()
        checks = json.dumps([check.model_dump() for check in evidence.checks])
        for key, value in {
            "skillops.served_variant": evidence.served_variant,
            "skillops.variant_checks": checks,
        }.items():
            client.set_model_version_tag(registry.candidates(name), candidate, key, value)
        return {"decision": decision.model_dump(mode="json"), "served_variant": evidence.served_variant}

    def rollback(self, caller: Caller, name: str, why: str, to: str | None) -> dict[str, Any]:
        caller.require(MAINTAINER, "roll a champion back")
        moved_from, moved_to = self.authority(caller).rollback(name, why, to)
        return {"from": moved_from, "to": moved_to}

    def change_policy(
        self, caller: Caller, name: str, why: str, fields: dict | None, recipe_source: str | None, ref: str | None
    ) -> dict[str, Any]:
        """A maintainer's change of the policy; from a recipe, the model's evaluation sets are
        frozen again from it and the champion scored on them at once, so that the next decision
        compares candidate and champion on the new sets."""
        from skillops.gate import judging

        caller.require(MAINTAINER, "change a policy")
        recipe = self.sources.recipe(recipe_source, ref) if recipe_source else None
        if recipe is not None:
            snapshot, sets = judging.frozen_sets(recipe)
            self.holdings.freeze(name, snapshot, recipe, sets)
        authority = self.authority(caller)
        change = authority.change_policy(name, why, fields, recipe)
        rescored = None
        champion = authority.champion(name)
        if recipe is not None and champion is not None:
            evidence = judging.FrozenEvidence(self.holdings, name, "", authority.require_policy(name), self.workdir)
            scores, _ = evidence.reference(champion)
            metric = authority.require_policy(name).primary_metric
            rescored = {part: values.metric(metric) for part, values in scores.items()}
        return {"change": change, "champion_rescored": rescored}


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _exists(model: str) -> bool:
    from mlflow.exceptions import MlflowException

    from skillops.tracking.runs import client

    try:
        client().get_registered_model(model)
    except MlflowException:
        return False
    return True


def _admin_client():
    """The tracking server's account API, as the service's account (a workspace admin)."""
    import warnings

    from skillops.tracking.runs import tracking_uri

    with warnings.catch_warnings():  # the server's own modules warn about their imports; not ours
        warnings.simplefilter("ignore")
        from mlflow.server import get_app_client

        return get_app_client("basic-auth", tracking_uri=tracking_uri())


def _ensure_candidates_model(name: str) -> None:
    """`<name>-candidates`, made by the service, where the pipeline's role may register versions
    (EDIT, granted on it alone) but not delete them."""
    import contextlib

    from mlflow.exceptions import MlflowException

    from skillops.stack import accounts
    from skillops.tracking import registry
    from skillops.tracking.runs import client

    with contextlib.suppress(MlflowException):
        client().create_registered_model(registry.candidates(name), description=f"Candidates of {name}")
    accounts.grant_candidates(_admin_client(), registry.candidates(name))


def graphql_queries(body: dict[str, Any]) -> bool:
    """Whether a GraphQL request only reads: every operation of its document is a query. The MLflow
    UI sends only queries (run pages, metric charts); anything else is refused before MLflow."""
    from graphql import OperationDefinitionNode, OperationType, parse
    from graphql.error import GraphQLSyntaxError

    try:
        document = parse(str(body.get("query", "")))
    except GraphQLSyntaxError:
        return False
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    return bool(operations) and all(op.operation == OperationType.QUERY for op in operations)


def create_app(gate: Gate, silence: SilenceWebhook | None = None):
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def address(request: Request) -> str:
        return request.headers.get("X-Forwarded-For", request.client.host if request.client else "unknown")

    def endpoint(action):
        async def handle(request: Request) -> Response:
            started, who = time.monotonic(), "-"
            try:
                caller = await run_in_threadpool(gate.caller, request.headers.get("Authorization"), address(request))
                who = caller.name
                body = await request.json() if request.method == "POST" else {}
                name = request.path_params.get("name", "")
                answer = JSONResponse(await run_in_threadpool(action, caller, name, body))
            except _Refused as refused:
                headers = {"WWW-Authenticate": 'Basic realm="skillops gate"'} if refused.status == 401 else {}
                answer = JSONResponse({"error": "AccessError", "message": str(refused)}, refused.status, headers)
            except SkillopsError as error:
                kind = type(error).__name__
                answer = JSONResponse({"error": kind, "message": str(error)}, STATUS.get(kind, 400))
            except Exception:
                logger.exception("The promotion authority failed on %s %s", request.method, request.url.path)
                message = "The promotion authority failed; its log on the server machine says why."
                answer = JSONResponse({"error": "PromotionError", "message": message}, 500)
            # Who asked for what, and how long it took: the authority's own access log.
            seconds = time.monotonic() - started
            logger.info("%s %s by %s: %s in %.1f s", request.method, request.url.path, who, answer.status_code, seconds)
            return answer

        return handle

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def silent_flow_run(request: Request) -> Response:
        if silence is None or not silence.admits(request.headers.get("Authorization", "")):
            return JSONResponse({"error": "AccessError", "message": "not the stack's Prefect server"}, 401)
        try:
            fields = silence_judge.request_fields(await request.body())
        except (ValueError, KeyError, TypeError) as error:
            return JSONResponse({"error": "ValueError", "message": f"not a silent flow run's webhook: {error}"}, 422)
        # The judge waits a heartbeat period; Prefect's webhook call does not.
        threading.Thread(target=silence.judge, args=fields, name="skillops-silence", daemon=True).start()
        return JSONResponse({"status": "judging"}, 202)

    async def graphql(request: Request) -> Response:
        import httpx

        body = await request.body()
        import json

        try:
            parsed = json.loads(body or b"{}")
        except ValueError:
            parsed = {}
        if not isinstance(parsed, dict) or not graphql_queries(parsed):
            return JSONResponse({"error": "only GraphQL queries are served here"}, 403)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type", "cookie")}
        headers["X-Forwarded-For"] = address(request)
        async with httpx.AsyncClient(timeout=60) as http:
            answer = await http.post(f"{gate.backend}/graphql", content=body, headers=headers)
        return Response(answer.content, answer.status_code, media_type=answer.headers.get("content-type"))

    routes = [
        Route("/gate/health", health),
        Route("/gate/models/{name}", endpoint(lambda caller, name, body: gate.describe(name))),
        Route(
            "/gate/experiments/{name}/open",
            endpoint(lambda caller, name, body: gate.open_experiment(caller, name)),
            methods=["POST"],
        ),
        Route(
            "/gate/models/{name}/open",
            endpoint(lambda caller, name, body: gate.open(caller, name, body["recipe"], body.get("ref"))),
            methods=["POST"],
        ),
        Route(
            "/gate/models/{name}/judge",
            endpoint(
                lambda caller, name, body: gate.judge(caller, name, str(body["candidate"]), body.get("run_policy"))
            ),
            methods=["POST"],
        ),
        Route(
            "/gate/models/{name}/rollback",
            endpoint(lambda caller, name, body: gate.rollback(caller, name, body.get("why", ""), body.get("to"))),
            methods=["POST"],
        ),
        Route(
            "/gate/models/{name}/policy",
            endpoint(
                lambda caller, name, body: gate.change_policy(
                    caller, name, body.get("why", ""), body.get("fields"), body.get("recipe"), body.get("ref")
                )
            ),
            methods=["POST"],
        ),
        Route("/graphql", graphql, methods=["POST"]),
        # Called by the Prefect server's heartbeat automation on this machine; nginx answers 404 to
        # other machines.
        Route("/gate/silence", silent_flow_run, methods=["POST"]),
    ]
    return Starlette(routes=routes)


@dataclass(frozen=True)
class SilenceWebhook:
    """The heartbeat automation's webhook: admitted by the token in the stack's secrets, then
    `skillops.stack.silence.judge` on the Prefect server behind it."""

    prefect: silence_judge.PrefectApi
    token_file: Path

    def admits(self, authorization: str) -> bool:
        import hmac

        token = self.token_file.read_text("utf-8").strip()
        return bool(token) and hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode())

    def judge(self, resource: str, window_seconds: float, heartbeat_seconds: float) -> None:
        logger.info("Prefect found %s silent for %.0f s: judging it", resource, window_seconds)
        try:
            logger.info("%s", silence_judge.judge(self.prefect, resource, window_seconds, heartbeat_seconds))
        except Exception:
            logger.exception("Could not judge the silent flow run %s; it is left as it is", resource)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from skillops.settings import settings
    from skillops.tracking.runs import tracking_uri

    parser = argparse.ArgumentParser(description="The promotion authority's service (scripts/stack.sh starts it).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workdir", required=True, help="where it downloads models and keeps its frozen sets' files")
    parser.add_argument(
        "--prefect-api", help="the Prefect server's API on this machine, for the silent flow runs' judge"
    )
    parser.add_argument("--secrets", help="the stack's secrets folder (prefect-auth, silence-webhook)")
    arguments = parser.parse_args(argv)
    current = settings()
    if not current.gate_database:
        raise SystemExit("SKILLOPS_GATE_DATABASE is not set: the promotion authority keeps its record there.")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    workdir = Path(arguments.workdir)
    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    gate = Gate(current.gate_database, workdir, current.git_url, tracking_uri())
    from skillops.gate.judging import EXPERIMENT
    from skillops.tracking import runs

    runs.experiment_id(EXPERIMENT)  # its own, made before any other account could take the name
    silence = None
    if arguments.prefect_api and arguments.secrets:
        secrets = Path(arguments.secrets)
        silence = SilenceWebhook(
            silence_judge.PrefectApi.reading(arguments.prefect_api, secrets / "prefect-auth"),
            secrets / "silence-webhook",
        )
    uvicorn.run(create_app(gate, silence), host=arguments.host, port=arguments.port, log_level="warning")


if __name__ == "__main__":
    main()
