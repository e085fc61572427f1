"""The checkpoint mirror keeps the newest complete checkpoint in the run's artifact store while a
trainer saves and rotates checkpoints as fast as it can: it uploads the copies the trainer staged
when it saved each one, never a folder the trainer may delete meanwhile (it used to fail with
`No such file or directory: .../checkpoint-84`)."""

from __future__ import annotations

import logging

from skillops.config import LossConfig, Prompts, TrainingConfig
from skillops.tracking import runs
from skillops.training import checkpoints
from skillops.training.trainer import TrainingSpec, train_model


def test_the_mirror_never_reads_a_checkpoint_the_trainer_rotates_away(
    tiny_bert, mlflow_store, tmp_path, monkeypatch, caplog
):
    import pandas as pd

    pd.DataFrame(
        {"anchor": [f"occupation {i}" for i in range(64)], "positive": [f"skill {i}" for i in range(64)]}
    ).to_parquet(tmp_path / "train.parquet")
    attempt = tmp_path / "attempt"
    spec = TrainingSpec(
        base_model=str(tiny_bert),
        train_path=tmp_path / "train.parquet",
        # A checkpoint at every step, two kept: each is rotated away two steps after it is saved.
        config=TrainingConfig(batch_size=8, max_steps=60, checkpoint_every_steps=1, max_seq_length=32),
        loss=LossConfig(),
        prompts=Prompts(),
        output_dir=attempt / "train",
        stage_checkpoints=True,
    )
    monkeypatch.setenv("SKILLOPS_CHECKPOINT_POLL_SECONDS", "0.05")
    run_id = runs.start_run("mirror", "mirror", {})
    with (
        caplog.at_level(logging.INFO, logger="skillops.training.checkpoints"),
        checkpoints.Mirror(run_id, attempt) as mirror,
    ):
        train_model(spec)
    assert mirror.seconds, "no checkpoint was kept in the store"
    assert not [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    (kept,) = [a.path for a in runs.client().list_artifacts(run_id, "attempt/train/checkpoints")]
    files = {a.path.rsplit("/", 1)[1] for a in runs.client().list_artifacts(run_id, kept)}
    assert {"skillops-complete.json", "trainer_state.json", "model.safetensors"} <= files
    assert not list(attempt.glob("train/staged/*"))  # the mirror's copies are gone with it
