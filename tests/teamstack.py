"""A team's stack on a network, as its machines see it: the pieces the tests of tests/team/ share.

Machine A runs `make stack-up TEAM=1 HOST=127.0.0.2` (127.0.0.2 stands in for the team's network
address: nothing listens for other machines on 127.0.0.1): PostgreSQL, the Prefect server, the
MLflow tracking server and the promotion authority behind nginx's TLS and accounts, and a worker.
Machine B is another folder with its own HOME and its own clone; it holds only account folders that
the stack's admin made with `skillops users add` and reads nothing of A's.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import shutil
import ssl
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from helpers import BIN, REPO, free_port, tiny_recipe_yaml, wait_until

HOST = "127.0.0.2"
STRONG = {"training.max_steps": 80, "training.learning_rate": 2e-3}  # reliably beats the untrained model


class Machine:
    """A folder standing in for a machine: its own HOME, its own clone, the environment its
    account's env file gives (sourced, as a user would)."""

    def __init__(self, root: Path, repository: Path, transcript: list[str]):
        self.root, self.transcript = root, transcript
        self.home, self.checkout = root / "home", root / "skillops"
        self.home.mkdir(parents=True)
        subprocess.run(["git", "clone", "-q", str(repository), str(self.checkout)], check=True)
        self.env = {
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(self.home),
            "HF_HUB_OFFLINE": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "MLFLOW_ENABLE_TELEMETRY": "false",
            "GX_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            # A minute where production waits two: a run silent for two heartbeats (Prefect's
            # shortest period, 30 s) is CRASHED, not four.
            "SKILLOPS_MISSED_HEARTBEATS": "2",
            "VENV": str(BIN.parent),
        }

    def account(self, folder: Path) -> dict:
        """The environment `source <folder>/env` gives: addresses, the CA, the account's credentials."""
        dumped = subprocess.run(
            ["bash", "-c", f'source "{folder}/env" && env -0'], env=self.env, capture_output=True, check=True
        ).stdout
        return dict(item.split("=", 1) for item in dumped.decode().split("\0") if "=" in item)

    def run(self, *command, env=None, check=True, timeout=900, cwd=None):
        result = subprocess.run(
            [str(part) for part in command],
            cwd=cwd or self.checkout,
            env={k: v for k, v in {**self.env, **(env or {})}.items() if v is not None},  # None: unset
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        result.output = result.stdout + result.stderr
        self.transcript.append(result.output)
        if check:
            assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        return result

    def deployment_run(self, env, recipe, overrides=None) -> str:
        started = self.run(
            BIN / "prefect", "deployment", "run", "train-esco/weekly",
            "--param", f"recipe={recipe}", "--param", f"overrides={json.dumps(overrides or {})}", env=env,
        )  # fmt: skip
        return re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)


def team_repository(target: Path) -> Path:
    """The team's git repository: this working tree as one commit (what CI tests is what workers clone)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    identity = ["-c", "user.name=skillops tests", "-c", "user.email=tests@skillops.invalid"]
    for command in (["init", "-q", "-b", "main"], ["add", "-A"], [*identity, "commit", "-q", "-m", "team repository"]):
        subprocess.run(["git", *command], cwd=target, check=True)
    return target


def call(url, ca=None, body=None, user=None, method=None, headers=None, source="127.0.0.1", raw=None):
    """(status, text) of one HTTPS (or HTTP) request, from the address `source`, as a client that
    verifies with `ca` sends it; 0 when nothing answers."""
    parts = urlsplit(url)
    headers = {"Content-Type": "application/json", **(headers or {})}
    if user:
        headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
        connection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=60, context=context, source_address=(source, 0)
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60, source_address=(source, 0))
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request(method or ("POST" if data is not None else "GET"), path, body=data, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read().decode(errors="replace")
    except (OSError, ssl.SSLError) as error:
        return 0, str(error)
    finally:
        connection.close()


def prefect(env, path, body=None, expect=200, method=None):
    """A Prefect API call with the credentials of `env`'s account (and, for a write, the CSRF
    token that Prefect's protection asks for, fetched as its own client fetches it)."""
    api, ca, auth = env["PREFECT_API_URL"], env["PREFECT_API_SSL_CERT_FILE"], env["PREFECT_API_AUTH_STRING"]
    headers = {}
    if body is not None or method not in (None, "GET"):
        status, text = call(f"{api}/csrf-token?client=skillops-tests", ca, user=auth)
        assert status == 200, (status, text)
        headers = {"Prefect-Csrf-Token": json.loads(text)["token"], "Prefect-Csrf-Client": "skillops-tests"}
    status, text = call(api + path, ca, body, auth, headers=headers, method=method)
    if expect is None:
        return status, text
    assert status == expect, (status, text)
    return json.loads(text) if text else None


class Team:
    """The running stack: its machines, its accounts' environments and how to reach it."""

    def __init__(self, tmp: Path, servers: Path, transcript: list[str], small_esco: Path, tiny_bert: Path):
        self.tmp, self.servers, self.transcript = tmp, servers, transcript
        self.small_esco, self.tiny_bert = small_esco, tiny_bert
        repository = team_repository(tmp / "team-repository")
        self.a = Machine(tmp / "machine-a", repository, transcript)
        self.b = Machine(tmp / "machine-b", repository, transcript)
        (tmp / "shared").mkdir()  # the data and base model stand in for a bucket and the hub: both machines read them
        self.ports = {
            name: free_port()
            for name in (
                "PREFECT_PORT",
                "MLFLOW_PORT",
                "PG_PORT",
                "PREFECT_BACKEND_PORT",
                "MLFLOW_BACKEND_PORT",
                "GATE_BACKEND_PORT",
            )
        }
        self.receiver_port = free_port()
        self.stack = {
            "TEAM": "1",
            "HOST": HOST,
            "NETWORK": "127.0.0.0/8",
            "STACK_DIR": str(servers),
            # The downstream indexer's receiver, on the server machine's loopback (plain HTTP there).
            "WEBHOOK_URL": f"http://127.0.0.1:{self.receiver_port}/",
            **{k: str(v) for k, v in self.ports.items()},
        }
        self.b_stack = {"TEAM": "1", "STACK_DIR": str(self.b.root / "stack")}
        self.mlflow_url = f"https://{HOST}:{self.ports['MLFLOW_PORT']}"
        self.prefect_url = f"https://{HOST}:{self.ports['PREFECT_PORT']}/api"
        self.ca = servers / "tls" / "ca.crt"
        self.accounts: dict[str, dict] = {}
        self.heard = self.a.root / "receiver.log"
        self.receiver = None

    def recipe(self, name: str, **sections) -> Path:
        """A recipe of its own model for one test, on the shared data and base model."""
        return tiny_recipe_yaml(
            self.tmp / "shared" / f"{name}.yaml",
            self.small_esco,
            self.tiny_bert,
            name=name,
            registered_model_name=name,
            search={"n_trials": 0},
            **sections,
        )

    def up(self) -> None:
        up = self.a.run("scripts/stack.sh", "up", env=self.stack, timeout=600)
        assert f"MLflow UI:   {self.mlflow_url}" in up.stdout and f"postgresql running on {HOST} port" in up.stdout
        self.receiver = subprocess.Popen(
            [str(BIN / "skillops"), "webhooks", "listen", "--port", str(self.receiver_port),
             "--secret-file", str(self.servers / "secrets" / "webhook")],
            stdout=open(self.heard, "w"), stderr=subprocess.STDOUT, env=self.a.env,
        )  # fmt: skip
        wait_until(lambda: "Listening on" in self.heard.read_text(), "the webhook receiver", 60)
        # The admin (the stack's owner, on A) makes the accounts; B gets their folders, nothing more.
        self.accounts["admin"] = self.a.account(self.servers / "accounts" / "admin")
        self.accounts["pipeline-a"] = self.a.account(next((self.servers / "accounts").glob("worker-*")))
        for account, role in (("reader-b", "reader"), ("maintainer-b", "maintainer"), ("worker-b", "pipeline")):
            made = self.a.run(
                BIN / "skillops", "users", "add", account, "--role", role, "--stack-dir", self.servers,
                env=self.accounts["admin"],
            )  # fmt: skip
            assert "credentials mode 600" in made.stdout
            shutil.copytree(self.servers / "accounts" / account, self.b.home / account)
            self.accounts[account] = self.b.account(self.b.home / account)
        # B's worker joins the pool with only its account.
        joined = self.b.run("scripts/stack.sh", "up", env={**self.accounts["worker-b"], **self.b_stack}, timeout=300)
        assert "worker started" in joined.stdout and "postgresql" not in joined.stdout

    def down(self) -> bool:
        """Stop everything; True when PostgreSQL is stopped."""
        if self.receiver is not None:
            self.receiver.terminate()
            self.receiver.wait(timeout=30)
        for machine, env in ((self.b, self.b_stack), (self.a, self.stack)):
            machine.run("scripts/stack.sh", "down", env=env, check=False, timeout=180)
        return not (self.servers / "postgres" / "postmaster.pid").exists()

    CREDENTIALS = ("MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")

    def mlflow(self, account: str):
        """An MLflow client that calls as `account` (MLflow reads the credentials from this
        process's environment at each request: they stay set until another account's client is
        made; `as_account` puts the earlier ones back)."""
        import mlflow

        env = self.accounts[account]
        os.environ.update({key: env[key] for key in self.CREDENTIALS})
        return mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"], env["MLFLOW_TRACKING_URI"])

    @contextlib.contextmanager
    def as_account(self, account: str):
        """An MLflow client as `account` for the block, the environment's credentials put back after."""
        saved = {key: os.environ.get(key) for key in self.CREDENTIALS}
        try:
            yield self.mlflow(account)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def user(self, account: str) -> str:
        """`name:password` of an account, for HTTP basic auth."""
        env = self.accounts[account]
        return f"{env['MLFLOW_TRACKING_USERNAME']}:{env['MLFLOW_TRACKING_PASSWORD']}"

    def flow_run(self, flow_run_id: str) -> dict:
        return prefect(self.accounts["maintainer-b"], f"/flow_runs/{flow_run_id}")

    def wait_for(self, flow_run_id: str, state: str, what: str, timeout: float = 600) -> dict:
        def logs():
            return "\n".join(
                (path.read_text()[-2500:] if path.exists() else "")
                for path in (
                    self.servers / "worker.log",
                    self.b.root / "stack" / "worker.log",
                    self.servers / "gate.log",
                )
            )

        def reached():
            run = self.flow_run(flow_run_id)
            if run["state_type"] in ("FAILED", "CRASHED", "CANCELLED") and run["state_type"] != state:
                raise AssertionError(f"{what}: {run['state_type']}: {run['state']['message']}\n{logs()}")
            return run["state_type"] == state and run

        return wait_until(reached, what, timeout, logs)

    def checkpointed_run(self, name: str):
        """The RUNNING MLflow run of model `name` once a complete checkpoint of it is in the store
        (it is training, and a retry could resume from it); waits up to 10 minutes."""
        client = self.mlflow("reader-b")

        def checkpointed():
            experiment = client.get_experiment_by_name(name)
            runs = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'") if experiment else []
            for run in runs:
                for checkpoint in client.list_artifacts(run.info.run_id, "attempt/train/checkpoints"):
                    if any(
                        x.path.endswith("skillops-complete.json")
                        for x in client.list_artifacts(run.info.run_id, checkpoint.path)
                    ):
                        return run
            return None

        return wait_until(checkpointed, f"a checkpoint of {name}'s run in the store", 600)

    def promoted_model(self, name: str) -> str:
        """A model of its own whose first retrain (from B, by a maintainer's deployment run) was
        judged by the authority and promoted; returns the flow run id."""
        first = self.b.deployment_run(self.accounts["maintainer-b"], self.recipe(name), STRONG)
        self.wait_for(first, "COMPLETED", f"the first run of {name}")
        return first

    def state_of(self, name: str) -> dict:
        """What an attack must leave as it was: the served model's champion, versions, name,
        the policy and the authority's record."""
        with self.as_account("admin") as client:
            model = client.get_registered_model(name)
            versions = client.search_model_versions(f"name = '{name}'")
        gate = call(f"{self.mlflow_url}/gate/models/{name}", self.ca, user=self.user("reader-b"))
        assert gate[0] == 200, gate
        record = json.loads(gate[1])
        return {
            "champion": model.aliases.get("champion"),
            "versions": sorted((v.version, v.run_id, v.source) for v in versions),
            "tags": dict(model.tags),
            "policy": record["policy"],
            "changes": len(record["changes"]),
            "moves": len(record["history"]),
        }
