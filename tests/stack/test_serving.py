"""The champion served by `mlflow models serve` answers with the local model's embeddings,
e5-style prompts included, on 127.0.0.1."""

import json
import os
import subprocess
import urllib.request

import numpy as np

from helpers import BIN, free_port, seed_champion, wait_for_http
from skillops.tracking import runs
from skillops.training.modeling import load_model

NAME = "tiny-serving"
TEXTS = ["data analyst", "manage ICT security", "develop web applications in JavaScript"]


def _post(url: str, body: dict) -> np.ndarray:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return np.asarray(json.loads(response.read())["predictions"], dtype=np.float32)


def test_mlflow_models_serve_answers_with_the_champions_embeddings(tiny_bert, mlflow_store, tmp_path):
    model = load_model(str(tiny_bert))
    model.prompts = {"query": "query: ", "document": "passage: "}  # as a recipe with prompts saves it
    model.save(str(tmp_path / "prompted"))
    seed_champion(tmp_path / "prompted", NAME)

    port = free_port()
    server = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/{NAME}@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        # MLflow starts `uvicorn` by name: the environment's bin folder must be on PATH.
        env={
            **os.environ,
            "MLFLOW_TRACKING_URI": runs.tracking_uri(),
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        },
        stdout=open(tmp_path / "serve.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", server, tmp_path / "serve.log", "mlflow models serve")
        url = f"http://127.0.0.1:{port}/invocations"
        local = load_model(str(tmp_path / "prompted"))
        for prompt_name in ("query", "document"):
            served = _post(url, {"inputs": TEXTS, "params": {"prompt_name": prompt_name}})
            expected = local.encode(TEXTS, prompt_name=prompt_name)
            assert served.shape == expected.shape
            assert np.allclose(served, expected, atol=1e-5)
        # Without a prompt name the texts are encoded as they are, which is a different embedding.
        plain = _post(url, {"inputs": TEXTS})
        assert np.allclose(plain, local.encode(TEXTS), atol=1e-5)
        assert not np.allclose(plain, local.encode(TEXTS, prompt_name="query"), atol=1e-3)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
