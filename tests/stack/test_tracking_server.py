"""Against a real `mlflow server` with artifact proxying, runs keep their artifacts where the server says."""

import logging
import os
import subprocess

import mlflow

from helpers import BIN, free_port, wait_for_http
from skillops import tracking


def test_with_a_tracking_server_artifacts_go_where_the_server_says(tmp_path, monkeypatch, caplog):
    """Against `mlflow server` with artifact proxying, a new experiment takes the server's
    mlflow-artifacts:/ location (files land in its --artifacts-destination, not on the client's
    disk), and an old experiment pinned to a client folder is named in a warning with the fix."""
    port = free_port()
    served = tmp_path / "served-artifacts"
    log = tmp_path / "server.log"
    env = {**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false"}
    with open(log, "w") as output:
        server = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
             "--artifacts-destination", served.as_uri(), "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", server, log, "MLflow server")
        monkeypatch.delenv("SKILLOPS_ARTIFACT_ROOT", raising=False)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        monkeypatch.chdir(tmp_path)
        client = tracking.client()

        experiment = client.get_experiment(tracking.experiment_id("shared"))
        assert experiment.artifact_location.startswith("mlflow-artifacts:/")
        run_id = tracking.start_run("shared", "r", {})
        (tmp_path / "report.md").write_text("scores")
        tracking.log_artifact(run_id, tmp_path / "report.md", "report")
        assert [p.name for p in served.rglob("report.md")] == ["report.md"]
        assert not (tmp_path / "mlruns").exists()
        assert tracking.ui_command("shared").startswith(f"open http://127.0.0.1:{port}/#/experiments/")

        client.create_experiment("pinned", artifact_location=(tmp_path / "local").as_uri())
        with caplog.at_level(logging.WARNING, logger="skillops.tracking"):
            tracking.experiment_id("pinned")
        (warning,) = [r.getMessage() for r in caplog.records if "pinned" in r.getMessage()]
        assert "other machines cannot read" in warning and "Fix: rename that experiment" in warning
    finally:
        server.terminate()
        server.wait(timeout=30)
        mlflow.set_tracking_uri(None)
