"""What keeping the checkpoints in the run's artifact store costs the training: the same training
with and without the mirror (`skillops.training.checkpoints.Mirror`) uploading each finished checkpoint to
a real `mlflow server` on this machine, printed as a ratio, with each upload's seconds and size.

    .venv/bin/python bench/checkpoint_upload.py [recipe] [--every N] [--steps N]

The training is the recipe's (all-MiniLM-L6-v2 on the bundled ESCO sample by default), a
checkpoint every N steps (model, optimizer and scheduler state, as the trainer writes them).
Writes bench/results/checkpoint_upload.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "checkpoint_upload.json"


def _server(folder: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with open(folder / "server.log", "w") as log:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
             "--artifacts-destination", (folder / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false"},
        )  # fmt: skip
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")


def main(recipe_name: str, every: int, steps: int) -> dict:
    from skillops.config import load_recipe
    from skillops.inputs import preparation
    from skillops.tracking import runs
    from skillops.training import checkpoints
    from skillops.training.trainer import TrainingSpec, train_model

    recipe = load_recipe(recipe_name)
    with tempfile.TemporaryDirectory(prefix="bench-checkpoints-") as tmp:
        tmp = Path(tmp)
        server, uri = _server(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = uri
        try:
            paths = preparation.write_task(preparation.build_task(recipe), tmp / "data", {})
            config = recipe.training.model_copy(update={"max_steps": steps, "checkpoint_every_steps": every})
            results = {}
            for arm in ("local only", "mirrored"):
                attempt = tmp / arm.replace(" ", "-")
                spec = TrainingSpec.for_recipe(recipe, paths.train, attempt / "train", config, label=arm)
                run_id = runs.start_run(recipe.name, f"bench {arm}", {})
                started = time.perf_counter()
                if arm == "mirrored":
                    with checkpoints.Mirror(run_id, attempt) as mirror:
                        train_model(spec)
                    uploads = mirror.seconds
                else:
                    train_model(spec)
                    uploads = []
                results[arm] = {"seconds": time.perf_counter() - started, "uploads": uploads}
                print(f"{arm}: {results[arm]['seconds']:.1f} s, uploads {[round(s, 1) for s in uploads]}", flush=True)
            stored = [p for p in (tmp / "artifacts").rglob("*") if p.is_file()]
            checkpoint_bytes = sum(p.stat().st_size for p in stored) / max(1, len(results["mirrored"]["uploads"]))
        finally:
            server.terminate()
            server.wait(timeout=30)
    ratio = results["mirrored"]["seconds"] / results["local only"]["seconds"]
    result = {
        "recipe": recipe_name,
        "steps": steps,
        "checkpoint_every": every,
        **results,
        "ratio": ratio,
        "stored_bytes_per_checkpoint": checkpoint_bytes,
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, no GPU; mlflow server on the same machine",
    }
    print(
        f"training with the mirror / without: {ratio:.2f}x ({results['mirrored']['seconds']:.1f} s vs "
        f"{results['local only']['seconds']:.1f} s); {len(results['mirrored']['uploads'])} uploads of "
        f"{checkpoint_bytes / 1e6:.0f} MB in the store, each {min(results['mirrored']['uploads'], default=0):.1f}-"
        f"{max(results['mirrored']['uploads'], default=0):.1f} s in the uploading thread"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1), "utf-8")
    return result


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", nargs="?", default="esco-occupation-skills")
    parser.add_argument("--every", type=int, default=10, help="steps between checkpoints")
    parser.add_argument("--steps", type=int, default=42, help="training steps (one epoch of the bundled sample)")
    arguments = parser.parse_args()
    main(arguments.recipe, arguments.every, arguments.steps)
