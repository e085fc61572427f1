#!/usr/bin/env bash
# What bench/gpu.py needs on a GPU machine that has PyTorch, transformers, sentence-transformers
# and onnxruntime but nothing else of skillops' and no network, in .whl/ (ignored by git; the
# device tool carries it, 64 MiB at most): pydantic and datasets at this checkout's pins, built for
# that machine's Python, and all-MiniLM-L6-v2 saved with fp16 weights (45 MB: the package's fp32
# weights alone are over the limit; both precisions of the check start from these same weights).
# Then, on the GPU machine (docs/gpu-check.md):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#   python3 bench/gpu.py --minilm .whl/all-MiniLM-L6-v2
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_VERSION=${PYTHON_VERSION:-3.12}  # the GPU image's python3 (2026-11)
pin() { grep -E "^$1==" constraints.txt; }
rm -rf .whl && mkdir -p .whl
.venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl \
  "$(pin pydantic)" "$(pin pydantic_core)" "$(pin annotated-types)" "$(pin typing-inspection)" \
  "$(pin datasets)" "$(pin dill)" "$(pin multiprocess)"
HF_HUB_OFFLINE=1 .venv/bin/python - <<'PY'
import torch
from skillops.training.modeling import load_model, resolve_model
model = load_model(resolve_model("sentence-transformers/all-MiniLM-L6-v2"))
model.to(torch.float16).save(".whl/all-MiniLM-L6-v2")
PY
du -sh .whl
