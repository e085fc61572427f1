"""A reader on another machine, with only its account's folder: lists the models and their
history, evaluates and serves the champion, and can move or delete nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import numpy as np
import pytest

from helpers import BIN, free_port, wait_until
from teamstack import call


def test_a_reader_lists_evaluates_and_serves_the_champion_and_moves_nothing(team, served):
    reader = team.accounts["reader-b"]
    recipe = team.recipe(served)
    models = team.b.run(BIN / "skillops", "models", recipe, env=reader).stdout
    assert f"{served}: the served model" in models and "worker-" in models
    assert "promotion v- -> v1 by worker-" in team.b.run(BIN / "skillops", "history", recipe, env=reader).stdout
    evaluated = team.b.run(BIN / "skillops", "evaluate", recipe, "--model", f"models:/{served}@champion", env=reader)
    assert "test_map:" in evaluated.stdout
    port = free_port()
    log = team.b.root / "serve.log"
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{served}@champion", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=team.b.checkout, env={**team.b.env, **reader}, stdout=open(log, "w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(
            lambda: (
                call(f"http://127.0.0.1:{port}/ping")[0] == 200
                if server.poll() is None
                else pytest.fail(log.read_text()[-3000:])
            ),
            "mlflow models serve",
            180,
        )
        status, answer = call(f"http://127.0.0.1:{port}/invocations", body={"inputs": ["data analyst"]})
        assert status == 200 and np.asarray(json.loads(answer)["predictions"]).shape == (1, 32)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    from mlflow.exceptions import MlflowException

    client = team.mlflow("reader-b")
    before = team.state_of(served)
    candidate_run = client.get_model_version(f"{served}-candidates", "1").run_id
    for attempt in (
        lambda: client.set_registered_model_alias(served, "champion", "1"),
        lambda: client.delete_registered_model_alias(served, "champion"),
        lambda: client.create_model_version(served, f"runs:/{candidate_run}/model", candidate_run),
        lambda: client.delete_model_version(served, "1"),
        lambda: client.create_registered_model("squatted"),
    ):
        with pytest.raises(MlflowException, match="403"):
            attempt()
    assert team.state_of(served) == before
