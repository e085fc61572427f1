"""A team's stack on a network, as three kinds of machine see it.

Machine A runs `make stack-up TEAM=1 HOST=127.0.0.2` (127.0.0.2 stands in for the team's network
address: nothing listens for other machines on 127.0.0.1): PostgreSQL, the Prefect server and the
MLflow tracking server behind TLS and accounts, and a worker. Machine B is another folder with its
own HOME and its own clone; it holds only account folders that the stack's admin made with
`skillops users add` (the CA certificate, the URLs, its credentials file) and reads nothing of A's.

Without credentials, or with another CA, or in plain HTTP, nothing answers; PostgreSQL refuses a
login without password and every database but Optuna's from the network. A reader on B lists,
evaluates and serves the champion but cannot move or delete anything. Machine A dies (its worker's
processes SIGKILLed) mid-training: the heartbeat automation marks its flow run CRASHED without anyone
starting a run; retried, the run is taken by B's worker and resumes from A's last checkpoint, kept
in the tracking server's artifact store, and promotes. A run from B whose overrides weaken the
model's policy registers and is refused, naming the field. A maintainer rolls back; `history` names
who moved the alias each time. No secret shows in any command line, printed line, file, tag or log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from helpers import BIN, REPO, SEED_CHAMPION, free_port, served_candidates, tiny_recipe_yaml, wait_until

pytestmark = pytest.mark.faults  # machine A's worker is killed mid-training

NAME = "tiny-esco"
HOST = "127.0.0.2"
STRONG = {"training.max_steps": 80, "training.learning_rate": 2e-3}  # reliably beats the untrained model
# Checkpoints every 20 steps; long enough that the kill lands mid-training.
LONG = {"training.max_steps": 300, "training.checkpoint_every_steps": 20, "training.learning_rate": 1e-3}


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

    def deployment_run(self, env, recipe, overrides):
        started = self.run(
            BIN / "prefect", "deployment", "run", "train-esco/weekly",
            "--param", f"recipe={recipe}", "--param", f"overrides={json.dumps(overrides)}", env=env,
        )  # fmt: skip
        return re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)


def _team_repository(target: Path) -> Path:
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


def _call(url, ca=None, body=None, user=None, method=None, headers=None):
    """(status, text) of one HTTPS request, as a client that verifies with `ca` sends it."""
    context = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
    headers = {"Content-Type": "application/json", **(headers or {})}
    if user:
        import base64

        headers["Authorization"] = "Basic " + base64.b64encode(user.encode()).decode()
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except urllib.error.URLError as error:  # nothing listens (yet)
        return 0, str(error.reason)


def _prefect(env, path, body=None):
    """A Prefect API call with the credentials of `env`'s account (and, for a write, the CSRF
    token that Prefect's protection asks for, fetched as its own client fetches it)."""
    api, ca, auth = env["PREFECT_API_URL"], env["PREFECT_API_SSL_CERT_FILE"], env["PREFECT_API_AUTH_STRING"]
    headers = {}
    if body is not None:
        status, text = _call(f"{api}/csrf-token?client=skillops-tests", ca, user=auth)
        assert status == 200, (status, text)
        headers = {"Prefect-Csrf-Token": json.loads(text)["token"], "Prefect-Csrf-Client": "skillops-tests"}
    status, text = _call(api + path, ca, body, auth, headers=headers)
    assert status == 200, (status, text)
    return json.loads(text)


def _mlflow_client(env, monkeypatch):
    """This process's MLflow client, as the account of `env`."""
    import mlflow

    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_SERVER_CERT_PATH"):
        monkeypatch.setenv(key, env[key])
    return mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"], env["MLFLOW_TRACKING_URI"])


def test_a_team_stack_that_other_machines_reach_over_tls_and_only_the_gate_changes(
    tmp_path, small_esco, tiny_bert, monkeypatch
):
    transcript: list[str] = []
    repository = _team_repository(tmp_path / "team-repository")
    a = Machine(tmp_path / "machine-a", repository, transcript)
    b = Machine(tmp_path / "machine-b", repository, transcript)
    # The data and base model stand in for a bucket and the hub: both machines read them.
    (tmp_path / "shared").mkdir()
    recipe = tiny_recipe_yaml(tmp_path / "shared" / "recipe.yaml", small_esco, tiny_bert, search={"n_trials": 0})
    # Outside pytest's private tmp folder: PostgreSQL runs as the `postgres` user, who must enter it.
    servers = Path(tempfile.mkdtemp(prefix="skillops-team-stack-"))
    servers.chmod(0o711)
    ports = {
        name: free_port()
        for name in ("PREFECT_PORT", "MLFLOW_PORT", "PG_PORT", "PREFECT_BACKEND_PORT", "MLFLOW_BACKEND_PORT")
    }
    receiver_port = free_port()
    stack = {
        "TEAM": "1",
        "HOST": HOST,
        "NETWORK": "127.0.0.0/8",
        "STACK_DIR": str(servers),
        # The downstream indexer's receiver, on the server machine's loopback (plain HTTP there).
        "WEBHOOK_URL": f"http://127.0.0.1:{receiver_port}/",
        **{k: str(v) for k, v in ports.items()},
    }
    mlflow_url, prefect_url = f"https://{HOST}:{ports['MLFLOW_PORT']}", f"https://{HOST}:{ports['PREFECT_PORT']}/api"
    b_stack = {"TEAM": "1", "STACK_DIR": str(b.root / "stack")}
    receiver = None
    try:
        # `make stack-up TEAM=1 HOST=127.0.0.2` is this script with those settings (make installs first).
        up = a.run("scripts/stack.sh", "up", env=stack, timeout=600)
        assert f"MLflow UI:   {mlflow_url}" in up.stdout and f"postgresql running on {HOST} port" in up.stdout
        ca = servers / "tls" / "ca.crt"
        heard = a.root / "receiver.log"
        receiver = subprocess.Popen(
            [str(BIN / "skillops"), "webhooks", "listen", "--port", str(receiver_port),
             "--secret-file", str(servers / "secrets" / "webhook")],
            stdout=open(heard, "w"), stderr=subprocess.STDOUT, env=a.env,
        )  # fmt: skip
        wait_until(lambda: "Listening on" in heard.read_text(), "the webhook receiver", 60)

        # The admin (the stack's owner, on A) makes the accounts; B gets their folders, nothing more.
        admin = a.account(servers / "accounts" / "admin")
        for account, role in (("reader-b", "reader"), ("maintainer-b", "maintainer"), ("worker-b", "pipeline")):
            made = a.run(BIN / "skillops", "users", "add", account, "--role", role, "--stack-dir", servers, env=admin)
            assert "credentials mode 600" in made.stdout
            shutil.copytree(servers / "accounts" / account, b.home / account)
            assert (b.home / account / "credentials").stat().st_mode & 0o077 == 0
        reader, maintainer, worker_b = (b.account(b.home / name) for name in ("reader-b", "maintainer-b", "worker-b"))
        assert reader["MLFLOW_TRACKING_URI"] == mlflow_url and "PREFECT_API_AUTH_STRING" not in reader
        pipeline_a = a.account(next((servers / "accounts").glob("worker-*")))

        # --- 1. Closed to whoever has no credentials, another CA, or plain HTTP -------------------
        anonymous = [
            f"{mlflow_url}/api/2.0/mlflow/runs/search",
            f"{mlflow_url}/api/2.0/mlflow/registered-models/alias?name={NAME}&alias=champion",
            f"{mlflow_url}/api/2.0/mlflow-artifacts/artifacts/1/anything/MLmodel",
            f"{prefect_url}/deployments/name/train-esco/weekly",
        ]
        for url in anonymous:
            body = {"experiment_ids": ["0"]} if url.endswith("search") else None
            assert _call(url, ca, body)[0] == 401, url
        assert (
            _call(
                f"{mlflow_url}/api/2.0/mlflow/registered-models/alias",
                ca,
                {"name": NAME, "alias": "champion", "version": "1"},
                method="POST",
            )[0]
            == 401
        )
        # A write to Prefect's API without credentials: its CSRF check answers (403) before its auth check would.
        deployment = _prefect(worker_b, "/deployments/name/train-esco/weekly")
        refused, _ = _call(f"{prefect_url}/deployments/{deployment['id']}/create_flow_run", ca, {})
        assert refused in (401, 403)
        wrong, _ = _call(f"{prefect_url}/deployments/name/train-esco/weekly", ca, user="skillops:guessed")
        assert wrong == 401
        plain = subprocess.run(
            ["curl", "-s", f"http://{HOST}:{ports['MLFLOW_PORT']}/api/2.0/mlflow/experiments/search?max_results=5"],
            capture_output=True,
            text=True,
        )
        assert "plain HTTP request was sent to HTTPS port" in plain.stdout and "experiments" not in plain.stdout
        nothing_on_loopback = subprocess.run(
            ["curl", "-sk", f"https://127.0.0.1:{ports['MLFLOW_PORT']}/health"], capture_output=True
        )
        assert nothing_on_loopback.returncode != 0  # the stack is reached at its network address only
        other_ca = tmp_path / "other-ca"
        subprocess.run(
            ["bash", str(REPO / "scripts" / "tls.sh"), str(other_ca), "127.0.0.2"], check=True, capture_output=True
        )
        untrusted = b.run(
            BIN / "skillops",
            "models",
            recipe,
            # No retries: a certificate refused is not an outage to wait out.
            env={
                **reader,
                "MLFLOW_TRACKING_SERVER_CERT_PATH": str(other_ca / "ca.crt"),
                "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
            },
            check=False,
            timeout=300,
        )
        assert untrusted.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in untrusted.output
        psql = ["psql", "-w", "-tAc", "select 1"]
        database = f"host={HOST} port={ports['PG_PORT']} sslmode=verify-full sslrootcert={ca}"
        no_password = b.run(
            *psql, f"{database} dbname=optuna user=skillops_optuna", check=False, env={"PGPASSFILE": "/nonexistent"}
        )
        assert no_password.returncode != 0 and "no password supplied" in no_password.output
        not_from_network = b.run(*psql, f"{database} dbname=prefect user=skillops_prefect", check=False, env=worker_b)
        assert not_from_network.returncode != 0 and "no pg_hba.conf entry" in not_from_network.output
        without_tls = b.run(
            *psql,
            f"host={HOST} port={ports['PG_PORT']} sslmode=disable dbname=optuna user=skillops_optuna",
            check=False,
            env=worker_b,
        )
        assert without_tls.returncode != 0 and "no encryption" in without_tls.output
        assert b.run(*psql, f"{database} dbname=optuna user=skillops_optuna", env=worker_b).stdout.strip() == "1"

        # --- 2. The pipeline: the model before skillops, then a first retrain through A's worker ---
        a.run(BIN / "python", "-c", SEED_CHAMPION, tiny_bert, NAME, env=pipeline_a)
        first = b.deployment_run(maintainer, recipe, STRONG)  # the model's own policy: it promotes
        wait_until(
            lambda: _prefect(worker_b, f"/flow_runs/{first}")["state_type"] == "COMPLETED",
            "the first run",
            600,
            lambda: (servers / "worker.log").read_text()[-3000:],
        )
        client = _mlflow_client(reader, monkeypatch)
        assert client.get_registered_model(NAME).aliases["champion"] == "2"
        # Downstream is told, by a signed delivery; a forged one is refused.
        wait_until(lambda: "champion of tiny-esco is now version 2" in heard.read_text(), "the webhook delivery", 120)
        told = heard.read_text().count("is now version")  # the seed's move to 1, the first run's to 2
        forged = _call(
            f"http://127.0.0.1:{receiver_port}/",
            body={"data": {"name": NAME, "alias": "champion", "version": "1"}},
            headers={"X-MLflow-Delivery-Id": "x", "X-MLflow-Timestamp": "1", "X-MLflow-Signature": "v1,Zm9yZ2Vk"},
        )
        assert forged[0] == 401 and "refused a delivery: the signature does not match" in heard.read_text()
        assert told == 2 and heard.read_text().count("is now version") == told
        # What the promotion changes for indexes: the champion's embeddings of the skills, and the churn.
        (promoted,) = client.search_runs(
            [client.get_experiment_by_name(NAME).experiment_id], f"tags.skillops.prefect_flow_run_id = '{first}'"
        )
        assert [a.path for a in client.list_artifacts(promoted.info.run_id, "index")] == ["index/embeddings.parquet"]
        assert 0 <= promoted.data.metrics["index_changed_share"] <= 1 and promoted.data.metrics["index_documents"] > 20
        decision_artifact = _prefect(worker_b, "/artifacts/train-esco-decision/latest")
        assert "Index churn, version 1 -> 2" in decision_artifact["data"]

        # --- 3. A reader on B: sees and serves the champion, moves or deletes nothing --------------
        models = b.run(BIN / "skillops", "models", recipe, env=reader).stdout
        assert "tiny-esco: the served model" in models and "worker-" in models
        assert "promotion v1 -> v2 by worker-" in b.run(BIN / "skillops", "history", recipe, env=reader).stdout
        assert (
            "test_map:"
            in b.run(BIN / "skillops", "evaluate", recipe, "--model", f"models:/{NAME}@champion", env=reader).stdout
        )
        port = free_port()
        log = b.root / "serve.log"
        served = subprocess.Popen(
            [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port)],
            cwd=b.checkout, env={**b.env, **reader}, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            wait_until(
                lambda: (
                    _call(f"http://127.0.0.1:{port}/ping")[0] == 200
                    if served.poll() is None
                    else pytest.fail(log.read_text()[-3000:])
                ),
                "mlflow models serve",
                180,
            )
            status, answer = _call(f"http://127.0.0.1:{port}/invocations", body={"inputs": ["data analyst"]})
            assert status == 200 and np.asarray(json.loads(answer)["predictions"]).shape == (1, 32)
        finally:
            os.killpg(served.pid, signal.SIGTERM)
            served.wait(timeout=30)
        from mlflow.exceptions import MlflowException

        candidate_run = client.get_model_version(f"{NAME}-candidates", "2").run_id
        for attempt in (
            lambda: client.set_registered_model_alias(NAME, "champion", "1"),
            lambda: client.delete_registered_model_alias(NAME, "champion"),
            lambda: client.create_model_version(NAME, f"runs:/{candidate_run}/model", candidate_run),
            lambda: client.delete_model_version(NAME, "1"),
            lambda: client.create_registered_model("squatted"),
        ):
            with pytest.raises(MlflowException, match="403"):
                attempt()
        assert client.get_registered_model(NAME).aliases["champion"] == "2"

        # --- 4. Machine A dies mid-training; its flow run is marked CRASHED by the heartbeat watch ---
        long_run = b.deployment_run(maintainer, recipe, LONG)

        def checkpoint_in_store():
            runs = client.search_runs(
                [client.get_experiment_by_name(NAME).experiment_id], "attributes.status = 'RUNNING'"
            )
            for run in runs:
                if any(
                    x.path.endswith("skillops-complete.json")
                    for c in client.list_artifacts(run.info.run_id, "attempt/train/checkpoints")
                    for x in client.list_artifacts(run.info.run_id, c.path)
                ):
                    return run
            return None

        killed = wait_until(
            checkpoint_in_store,
            "a checkpoint of the long run in the store",
            600,
            lambda: (servers / "worker.log").read_text()[-3000:],
        )
        worker_pid = int((servers / "worker.pid").read_text())
        flow_pid = int(killed.data.tags["skillops.pid"])
        for group in {os.getpgid(worker_pid), os.getpgid(flow_pid)}:
            os.killpg(group, signal.SIGKILL)
        shutil.move(servers / "outputs", tmp_path / "a-outputs-gone")  # nothing of A's disk is read again
        crashed = wait_until(
            lambda: (
                _prefect(maintainer, f"/flow_runs/{long_run}")["state_type"] == "CRASHED"
                and _prefect(maintainer, f"/flow_runs/{long_run}")
            ),
            "the heartbeat automation to mark the run CRASHED",
            420,
        )
        assert "No heartbeat for" in crashed["state"]["message"]

        # --- 5. B's worker joins with only its account; the retried run resumes from A's checkpoint --
        joined = b.run("scripts/stack.sh", "up", env={**worker_b, **b_stack}, timeout=300)
        assert "worker started" in joined.stdout and "postgresql" not in joined.stdout
        b.run(BIN / "prefect", "flow-run", "retry", long_run, env=maintainer)
        wait_until(
            lambda: _prefect(maintainer, f"/flow_runs/{long_run}")["state_type"] == "COMPLETED",
            "the retried run on B",
            600,
            lambda: (b.root / "stack" / "worker.log").read_text()[-3000:],
        )
        worker_log = (b.root / "stack" / "worker.log").read_text()
        resumed = re.findall(r"Resuming training from step (\d+)", worker_log)
        assert resumed, worker_log[-3000:]
        assert client.get_run(killed.info.run_id).info.status == "FAILED"
        assert (
            "an earlier attempt of Prefect flow run" in client.get_run(killed.info.run_id).data.tags["skillops.failure"]
        )
        (retried,) = client.search_runs(
            [killed.info.experiment_id],
            f"tags.skillops.prefect_flow_run_id = '{long_run}' and attributes.status = 'FINISHED'",
        )
        assert retried.data.tags["skillops.restored_from"].startswith(f"run {killed.info.run_id}")
        assert retried.data.metrics["resumed_from_step"] == int(resumed[0]) >= 20  # A's checkpoint, at least its first
        assert (b.root / "stack" / "outputs" / retried.info.run_id).is_dir()  # B did the work
        assert retried.data.tags["skillops.decision"] in ("promoted", "not promoted")
        candidates = len(client.search_model_versions(f"name = '{NAME}-candidates'"))

        # --- 6. A run from B whose overrides weaken the model's policy registers, never promotes --
        weak = b.deployment_run(maintainer, recipe, {**STRONG, "training.seed": 7, "promotion.golden_tolerance": 1.0})
        wait_until(
            lambda: _prefect(maintainer, f"/flow_runs/{weak}")["state_type"] == "COMPLETED",
            "the weakened run",
            600,
            lambda: (b.root / "stack" / "worker.log").read_text()[-3000:],
        )
        (refused_run,) = client.search_runs(
            [killed.info.experiment_id], f"tags.skillops.prefect_flow_run_id = '{weak}'"
        )
        assert refused_run.data.tags["skillops.decision"] == "not promoted"
        assert (
            "promotion.golden_tolerance: 1.0 (the model's: 0.01)" in refused_run.data.tags["skillops.decision_reason"]
        )
        assert len(client.search_model_versions(f"name = '{NAME}-candidates'")) == candidates + 1  # registered
        champion = str(client.get_registered_model(NAME).aliases["champion"])
        copied = served_candidates(client, NAME)
        assert int(refused_run.data.tags["skillops.model_version"]) not in copied.values()  # never served

        # --- 7. A maintainer rolls back; history names who moved the alias each time -------------
        assert (
            f"champion moved back from version {champion}"
            in b.run(BIN / "skillops", "rollback", recipe, "--reason", "team test", env=maintainer).stdout
        )
        history = b.run(BIN / "skillops", "history", recipe, env=reader).stdout.splitlines()
        movers = [re.search(r" by (\S+)", line).group(1) for line in history]
        retried_promoted = retried.data.tags["skillops.decision"] == "promoted"
        assert movers == [pipeline_a["MLFLOW_TRACKING_USERNAME"]] * 2 + ["worker-b"] * retried_promoted + [
            "maintainer-b"
        ]

        # --- 8. No secret anywhere: command lines, printed lines, files, MLflow, Prefect ----------
        secrets = [p.read_text().strip() for p in (servers / "secrets").iterdir()]
        for credentials in (servers / "accounts").glob("*/credentials"):
            secrets += re.findall(r"(?:PASSWORD|AUTH_STRING)='(?:skillops:)?([^']+)'", credentials.read_text())
        assert len(secrets) >= 12 and all(len(s) >= 16 for s in secrets)
        command_lines = [p.read_bytes() for p in Path("/proc").glob("[0-9]*/cmdline") if p.exists()]
        assert not [c for c in command_lines if any(s.encode() in c for s in secrets)]
        assert not [t for t in transcript if any(s in t for s in secrets)]
        private = {"credentials", "pgpass"}
        leaked = [
            path for root in (tmp_path, servers) for path in root.rglob("*")
            if path.is_file() and path.name not in private and "secrets" not in path.parts
            and servers / "postgres" not in path.parents and any(s.encode() in path.read_bytes() for s in secrets)
        ]  # fmt: skip
        assert not leaked
        everything = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert not any(s in json.dumps([[r.data.tags, r.data.params] for r in everything]) for s in secrets)
        for model in (NAME, f"{NAME}-candidates"):
            tags = [v.tags for v in client.search_model_versions(f"name = '{model}'")]
            assert not any(s in json.dumps(tags) for s in secrets)
        prefect_records = [
            _prefect(maintainer, "/logs/filter", {"limit": 200}),
            _prefect(maintainer, "/artifacts/filter", {"limit": 200}),
        ]
        assert prefect_records[0] and not any(s in json.dumps(prefect_records) for s in secrets)
    finally:
        if receiver is not None:
            receiver.terminate()
            receiver.wait(timeout=30)
        for machine, env in ((b, {**b_stack}), (a, stack)):
            machine.run("scripts/stack.sh", "down", env=env, check=False, timeout=180)
        stopped = not (servers / "postgres" / "postmaster.pid").exists()
        shutil.rmtree(servers, ignore_errors=True)
    assert stopped
