"""The GPU check (bench/gpu.py) runs in the fast tier on CPU with tiny models."""

import json
import os
import subprocess

import gpu  # bench/gpu.py (bench/ is on pytest's path: scripts, not a package)

from helpers import BIN, REPO


def test_the_gpu_check_runs_skillops_own_code_on_cpu_without_mlflow_or_prefect(tmp_path):
    """`bench/gpu.py --device cpu --tiny`: every part of the GPU check (training in each precision,
    the XLM-R-large-shaped losses, the sampler, scoring, export) on tiny models, with MLflow,
    Prefect and Optuna unimportable; each part's row is in the JSON."""
    result = subprocess.run(
        [
            str(BIN / "python"),
            str(REPO / "bench" / "gpu.py"),
            "--device",
            "cpu",
            "--tiny",
            "--out",
            str(tmp_path / "gpu.json"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    parts = json.loads((tmp_path / "gpu.json").read_text("utf-8"))["parts"]
    assert list(parts) == list(gpu.PARTS)
    assert parts["minilm"]["fp32"]["samples_per_second"] > 0 and 0 <= parts["minilm"]["fp32"]["golden_map"] <= 1
    assert parts["xlmr-large"]["vocabulary"] == 250002
    assert parts["xlmr-large"]["cached_mnrl_mb32_ga2"]["tokens_per_second"] > 0
    assert parts["sampler"]["taxonomy_aware"]["steps_per_second"] > 0 and parts["sampler"]["sampler_ms_per_batch"] > 0
    assert parts["scoring"]["documents"] == 2000 and parts["scoring"]["bf16"]["documents_per_second"] > 0
    assert 0 <= parts["export"]["int8_same_top1_share"] <= 1 and parts["export"]["queries"] > 0
    assert "export" in result.stdout  # the table
