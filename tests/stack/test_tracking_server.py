"""Against a real `mlflow server` with artifact proxying: runs keep their artifacts where the
server says, and a run rides out the server killed mid-training and started again seconds later,
with the decision an undisturbed run makes; a longer outage stops it with a message that names
the server and the setting, and running it again continues, registering the candidate once; a
registration whose answer is lost on the way makes one version, not two; metrics whose answer
breaks off are sent again and kept once."""

import http.client
import http.server
import json
import logging
import os
import signal
import subprocess
import threading
import time

import mlflow
import pytest

from helpers import BIN, REPO, SEED_CHAMPION, free_port, start_mlflow_server, tiny_recipe_yaml, wait_until
from skillops.tracking import runs

OUTAGE_SECONDS = 5  # a restart of the server that runs ride out (they wait up to SKILLOPS_SERVER_WAIT_SECONDS)


def test_with_a_tracking_server_artifacts_go_where_the_server_says(tmp_path, monkeypatch, caplog):
    """Against `mlflow server` with artifact proxying, a new experiment takes the server's
    mlflow-artifacts:/ location (files land in its --artifacts-destination, not on the client's
    disk), and an old experiment pinned to a client folder is named in a warning with the fix."""
    port = free_port()
    served = tmp_path / "served-artifacts"
    server = start_mlflow_server(tmp_path, port, tmp_path / "server.log")
    try:
        monkeypatch.delenv("SKILLOPS_ARTIFACT_ROOT", raising=False)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        monkeypatch.chdir(tmp_path)
        client = runs.client()

        experiment = client.get_experiment(runs.experiment_id("shared"))
        assert experiment.artifact_location.startswith("mlflow-artifacts:/")
        run_id = runs.start_run("shared", "r", {})
        (tmp_path / "report.md").write_text("scores")
        runs.log_artifact(run_id, tmp_path / "report.md", "report")
        assert [p.name for p in served.rglob("report.md")] == ["report.md"]
        assert not (tmp_path / "mlruns").exists()
        assert runs.ui_command("shared").startswith(f"open http://127.0.0.1:{port}/#/experiments/")

        client.create_experiment("pinned", artifact_location=(tmp_path / "local").as_uri())
        with caplog.at_level(logging.WARNING, logger="skillops.tracking.runs"):
            runs.experiment_id("pinned")
        (warning,) = [r.getMessage() for r in caplog.records if "pinned" in r.getMessage()]
        assert "other machines cannot read" in warning and "Fix: rename that experiment" in warning
    finally:
        server.terminate()
        server.wait(timeout=30)
        mlflow.set_tracking_uri(None)


def _train(env, recipe, log, **extra):
    """`python flows/train_esco.py <recipe> --force` against the servers of `env`, in a process
    group of its own."""
    return subprocess.Popen(
        [str(BIN / "python"), str(REPO / "flows" / "train_esco.py"), str(recipe), "--force"],
        cwd=REPO,
        env={**env, **extra},
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.mark.faults
def test_a_run_rides_out_a_restart_of_the_tracking_server_and_names_a_longer_outage(
    prefect_server, small_esco, tiny_bert
):
    env, _, tmp_path = prefect_server
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {**env, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{env['PATH']}"}
    env.pop("SKILLOPS_OPTUNA_STORAGE", None)
    server = start_mlflow_server(tmp_path, port, tmp_path / "mlflow.log")
    client = mlflow.MlflowClient(uri, uri)
    training = {"max_steps": 150, "checkpoint_every_steps": 20, "learning_rate": 1e-3}
    recipes = {}
    for name in ("quiet", "restart"):  # the same training, judged against the same champion
        recipes[name] = tiny_recipe_yaml(
            tmp_path / f"{name}.yaml", small_esco, tiny_bert, name=name, registered_model_name=name,
            training=training, search={"n_trials": 0},
        )  # fmt: skip
        seeded = subprocess.run(
            [str(BIN / "python"), "-c", SEED_CHAMPION, str(tiny_bert), name],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        assert seeded.returncode == 0, seeded.stderr[-3000:]
    try:
        quiet = _train(env, recipes["quiet"], tmp_path / "quiet.log")
        assert quiet.wait(timeout=600) == 0, (tmp_path / "quiet.log").read_text()[-3000:]

        def in_training(name):
            (experiment,) = [e for e in client.search_experiments() if e.name == name]
            found = client.search_runs(
                [experiment.experiment_id], "tags.skillops.kind = 'pipeline'", order_by=["attributes.start_time DESC"]
            )
            return found and client.list_artifacts(found[0].info.run_id, "attempt/train/checkpoints") and found[0]

        # 1. Killed mid-training and started again seconds later: ridden out.
        disturbed = _train(env, recipes["restart"], tmp_path / "restart.log")
        wait_until(lambda: in_training("restart"), "the restart run to be training", 300)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        time.sleep(OUTAGE_SECONDS)
        server = start_mlflow_server(tmp_path, port, tmp_path / "mlflow.log")
        assert disturbed.wait(timeout=600) == 0, (tmp_path / "restart.log").read_text()[-3000:]

        def decision(name):
            (version,) = client.search_model_versions(
                f"name = '{name}-candidates' and tags.`skillops.recipe` = '{name}'"
            )
            return version.tags["skillops.decision"], json.loads(version.tags["skillops.decision_numbers"])

        assert decision("restart") == decision("quiet")  # the same decision, the same numbers
        assert len(client.search_model_versions("name = 'restart-candidates'")) == 2  # the seed and this one

        # 2. An outage longer than the wait stops the run, naming the server and the setting ...
        longer = _train(env, recipes["restart"], tmp_path / "longer.log", SKILLOPS_SERVER_WAIT_SECONDS="10")
        wait_until(
            lambda: (run := in_training("restart")) and run.info.status == "RUNNING",
            "the next run to be training",
            300,
        )
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        assert longer.wait(timeout=600) != 0
        stopped = (tmp_path / "longer.log").read_text()
        assert f"The MLflow tracking server {uri} did not answer for 10 s (SKILLOPS_SERVER_WAIT_SECONDS)" in stopped, (
            stopped[-3000:]
        )
        # ... and once it answers, running again continues: the attempt's training is not done twice.
        server = start_mlflow_server(tmp_path, port, tmp_path / "mlflow.log")
        again = _train(env, recipes["restart"], tmp_path / "again.log")
        assert again.wait(timeout=600) == 0, (tmp_path / "again.log").read_text()[-3000:]
        versions = client.search_model_versions("name = 'restart-candidates'")
        assert len(versions) == 3  # one more candidate: the interrupted attempt's, once
        # The outage stops the run during training (it resumes from its checkpoint) or after it
        # (the finished model is kept): never a training from step 0 again.
        again_log = (tmp_path / "again.log").read_text()
        assert "Resuming training from step" in again_log or "skillops.training.trainer - Training " not in again_log, (
            again_log[-3000:]
        )
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


class _FaultyProxy(http.server.BaseHTTPRequestHandler):
    """Forwards every request to the tracking server; the first request to `faulty` reaches the
    server and is done there, but its answer is lost (`how = "lost"`: the connection closes
    before any of it) or breaks off (`"broken"`: the status and the start of the body, then the
    connection closes, as when the server is killed while answering)."""

    upstream: str = ""
    faulty: str = ""
    how: str = "lost"
    faults: list[str] = []

    def _forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        connection = http.client.HTTPConnection(self.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        connection.request(self.command, self.path, body=body, headers=headers)
        answer = connection.getresponse()
        payload = answer.read()
        fault = self.path.endswith(self.faulty) and not self.faults
        if fault:
            self.faults.append(self.path)
            self.close_connection = True
            if self.how == "lost":
                return
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        if fault:  # a chunk that promises more bytes than come
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(f"{len(payload) + 2:x}\r\n".encode() + payload)
            return
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    def log_message(self, *args):  # quiet: the test reads the store, not the proxy's log
        pass


@pytest.fixture
def faulty_proxy(tmp_path, monkeypatch):
    """A real `mlflow server` behind a `_FaultyProxy` that the test configures; the tracking URI
    is the proxy's. Yields (handler class, the server's own URL)."""
    port = free_port()
    server = start_mlflow_server(tmp_path, port, tmp_path / "server.log")
    handler = type("Handler", (_FaultyProxy,), {"upstream": f"127.0.0.1:{port}", "faults": []})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{proxy.server_port}")
    monkeypatch.setenv("SKILLOPS_SERVER_WAIT_SECONDS", "20")
    try:
        yield handler, f"http://127.0.0.1:{port}"
    finally:
        proxy.shutdown()
        server.terminate()
        server.wait(timeout=30)
        mlflow.set_tracking_uri(None)


def test_a_registration_whose_answer_is_lost_makes_one_version(faulty_proxy, tiny_bert):
    """MLflow's client re-sends a POST whose answer did not come: the server made the version the
    first time, and a re-sent create would make a second one. skillops sends the create once and
    looks the run's candidate up instead: one version, the one the server made."""
    from skillops.tracking import registry

    handler, direct_url = faulty_proxy
    handler.faulty, handler.how = "/model-versions/create", "lost"
    run_id = runs.start_run("lost-answer", "register", {})
    version = registry.register(tiny_bert, run_id, "lost-answer", {"skillops.run_id": run_id})
    assert handler.faults == ["/api/2.0/mlflow/model-versions/create"]  # the fault happened
    versions = mlflow.MlflowClient(direct_url).search_model_versions("name = 'lost-answer-candidates'")
    assert [(v.version, v.run_id) for v in versions] == [(version, run_id)]


def test_metrics_whose_answer_breaks_off_are_sent_again_and_kept_once(faulty_proxy):
    """The server killed while answering a log-batch: urllib3's retries are over once the answer
    began, and MLflow's client raised "Connection broken: IncompleteRead", which ended the run.
    skillops sends the batch again; the server keeps each metric once."""
    handler, direct_url = faulty_proxy
    handler.faulty, handler.how = "/runs/log-batch", "broken"
    run_id = runs.start_run("broken-answer", "evaluate", {})
    runs.log_metrics(run_id, {"map@10": 0.5, "ndcg@10": 0.25}, prefix="test_")
    assert handler.faults == ["/api/2.0/mlflow/runs/log-batch"]  # the fault happened
    direct = mlflow.MlflowClient(direct_url)
    assert direct.get_run(run_id).data.metrics == {"test_map_at_10": 0.5, "test_ndcg_at_10": 0.25}
    assert len(direct.get_metric_history(run_id, "test_map_at_10")) == 1
