"""The main job with the real all-MiniLM-L6-v2: its int8 variant is built, scored by the gate on the
test and golden sets beside fp32, served by `mlflow models serve`, and its embeddings rank the test
queries' documents as the fp32 model's do."""

import json
import os
import signal
import subprocess

import numpy as np
import pytest

from helpers import BIN, free_port, tiny_recipe_yaml, wait_until
from skillops.tracking import registry, runs
from train_esco import train_esco

pytestmark = pytest.mark.usefixtures("prefect_harness")
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def _serve(port, log):
    return subprocess.Popen(
        [str(BIN / "mlflow"), "models", "serve", "-m", "models:/served@champion", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
        stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def _embed(port, texts):
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        json.dumps({"inputs": texts}).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return np.asarray(json.loads(response.read())["predictions"], dtype=np.float32)


def test_the_int8_champion_is_judged_and_served_with_the_fp32_models_top_documents(small_esco, mlflow_store, tmp_path):
    recipe = tiny_recipe_yaml(
        tmp_path / "recipe.yaml",
        small_esco,
        MINILM,
        name="served",
        registered_model_name="served",
        data={"split": {"validation": 0.15, "test": 0.4}},
        training={"max_steps": 10, "learning_rate": 2e-5, "batch_size": 16},
        search={"n_trials": 0},
        evaluation={"golden": [{"name": "descriptions", "path": "data/golden/esco-ict-descriptions.csv"}]},
    )
    result = train_esco(recipe=str(recipe))
    version = runs.client().get_model_version("served-candidates", result["version"])
    assert version.tags["skillops.served_variant"] == "int8", version.tags["skillops.variant_checks"]
    checks = {c["variant"]: c for c in json.loads(version.tags["skillops.variant_checks"])}
    assert set(checks["int8"]["primary"]) == {"test", "golden-descriptions"}  # judged on both, as served
    assert set(checks) == {"onnx", "int8", "int8_blocks"} and not checks["int8_blocks"]["served"]
    run = runs.client().get_run(result["run_id"])
    assert run.data.metrics["int8_map"] == pytest.approx(run.data.metrics["test_map"])  # the gate's candidate
    report = (tmp_path / "outputs" / result["run_id"] / "evaluation.md").read_text()
    assert "Served as: int8" in report

    test_set = json.loads((tmp_path / "outputs" / result["run_id"] / "data" / "test.json").read_text())
    texts = sorted({t for s in test_set for t in (s["query"], *s["positive"], *s["negative"])})
    uri = f"models:/served-candidates/{result['version']}"
    fp32_vectors = registry.load(uri).encode(texts, normalize_embeddings=True)
    # What the gate scored: the int8 variant, encoding the texts in the same batches as the server.
    as_served = registry.load(uri, as_served=True).encode(texts)
    port = free_port()
    server = _serve(port, tmp_path / "serve.log")
    try:
        wait_until(lambda: server.poll() is not None or _ping(port), "mlflow models serve", 180)
        assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        served = _embed(port, texts)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    np.testing.assert_allclose(served, as_served, atol=1e-5)  # the server runs the variant the gate judged
    served /= np.linalg.norm(served, axis=1, keepdims=True)
    assert np.abs(served - fp32_vectors).max() > 1e-3  # ... which is not the fp32 model
    row = {text: i for i, text in enumerate(texts)}

    def top_document(vectors, sample):
        candidates = [*sample["positive"], *sample["negative"]]
        scores = [vectors[row[c]] @ vectors[row[sample["query"]]] for c in candidates]
        return candidates[int(np.argmax(scores))]

    same = [top_document(served, s) == top_document(fp32_vectors, s) for s in test_set]
    assert len(same) >= 8 and sum(same) / len(same) >= 0.95, same


def _ping(port):
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5):
            return True
    except OSError:
        return False
