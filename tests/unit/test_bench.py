"""The GPU bench builds the cards' model shapes from their configurations and says when it has
no GPU to measure on (CI has none)."""

import subprocess

import gpu  # bench/gpu.py (bench/ is on pytest's path: scripts, not a package)
import pytest

from helpers import BIN, REPO


@pytest.mark.parametrize(("shape", "parameters"), [("all-MiniLM-L6-v2", 22.7e6), ("all-mpnet-base-v2", 109.5e6)])
def test_the_card_shapes_have_the_published_sizes(shape, parameters):
    built = sum(p.numel() for p in gpu.build(shape).parameters())
    assert built == pytest.approx(parameters, rel=0.01)


def test_without_cuda_the_gpu_bench_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the bench measures instead (run it by hand)")
    result = subprocess.run([str(BIN / "python"), str(REPO / "bench" / "gpu.py")], capture_output=True, text=True)
    assert result.returncode == 0 and "no CUDA" in result.stdout
