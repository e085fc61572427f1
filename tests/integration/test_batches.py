"""In-batch negatives that are really negatives: on the bundled ESCO sample, sentence-transformers'
NO_DUPLICATES batches hold skills of the very occupation they are negatives of; the taxonomy-aware
sampler's hold none, in one process's batches and across two processes' (a step's whole batch),
with mined negatives too, and every row still trains once an epoch."""

import logging
import math

import pandas as pd
import pytest
import torch
from datasets import Dataset
from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

from skillops.config import load_recipe
from skillops.inputs import preparation
from skillops.training.batches import false_negative_share, false_negative_shares, taxonomy_aware_batches


@pytest.fixture(scope="module")
def bundled_pairs() -> Dataset:
    task = preparation.build_task(load_recipe("esco-occupation-skills"))
    return Dataset.from_pandas(task.train, preserve_index=False)


@pytest.mark.parametrize("world", [1, 2])
def test_the_bundled_sample_has_false_negatives_without_the_sampler_and_none_with_it(bundled_pairs, world):
    plain = list(NoDuplicatesBatchSampler(bundled_pairs, 32, False, generator=torch.Generator(), seed=42))
    aware = list(taxonomy_aware_batches(bundled_pairs, 32, False, generator=torch.Generator(), seed=42, world=world))
    assert false_negative_share(plain, bundled_pairs, world) > 0.02  # about 4.7% of the negatives (issue 25)
    assert false_negative_share(aware, bundled_pairs, world) == 0
    rows = [row for batch in aware for row in batch]
    assert len(rows) == len(set(rows)) and len(rows) >= 0.99 * len(bundled_pairs)  # every pair once an epoch
    # (with several processes, the last rows that conflict with one another wait for the next epoch)
    for batch in aware:  # no text twice in a batch, as NO_DUPLICATES promises
        values = [v for row in batch for v in bundled_pairs[row].values()]
        assert len(values) == len(set(values))
    assert len(aware) == len(taxonomy_aware_batches(bundled_pairs, 32, False, seed=42, world=world))  # len tells
    steps = [aware[i : i + world] for i in range(0, len(aware), world)]
    assert all(len({len(batch) for batch in step}) == 1 for step in steps[:-1])  # equal per process, each step


def test_a_mined_negative_that_is_another_anchors_positive_is_kept_apart():
    """Row 1's negative is row 0's anchor's other skill: NO_DUPLICATES lets them share a batch."""
    triplets = Dataset.from_pandas(
        pd.DataFrame(
            {
                "anchor": ["data analyst", "data analyst", "nurse", "baker"],
                "positive": ["use SQL", "statistics", "care for patients", "bake bread"],
                "negative_1": ["bake bread", "care for patients", "statistics", "use SQL"],
            }
        )
    )
    batches = list(taxonomy_aware_batches(triplets, 2, False, generator=torch.Generator(), seed=0, world=1))
    assert false_negative_share(batches, triplets) == 0
    assert sorted(row for batch in batches for row in batch) == [0, 1, 2, 3]


def test_the_run_logs_the_share_with_and_without_the_sampler(bundled_pairs):
    on = false_negative_shares(bundled_pairs, 32, 1, taxonomy_aware=True, seed=42)
    off = false_negative_shares(bundled_pairs, 32, 1, taxonomy_aware=False, seed=42)
    assert on["false_in_batch_negatives_share"] == 0
    assert on["false_in_batch_negatives_share_no_duplicates"] == off["false_in_batch_negatives_share"] > 0.02


def test_mined_esco_negatives_are_never_a_skill_of_the_occupation():
    """Mined from the whole vocabulary with the base model: no negative is any skill the ESCO
    relations link to the row's occupation (the miner excludes every row of an anchor, not only the
    row's own positive), and an occupation's rows share its candidates out instead of repeating one."""
    from skillops.config import MiningConfig
    from skillops.inputs import esco

    recipe = load_recipe("esco-occupation-skills")
    mining = MiningConfig(num_negatives=2, range_min=0, range_max=30, relative_margin=None)
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update={"mine_negatives": mining})})
    task = preparation.build_task(recipe)
    mined = preparation.with_mined_negatives(task, recipe).train

    anchors, skills, vocabulary, _ = esco.occupation_skills(esco.load_esco(recipe.data.location), recipe.data)
    skills_of = {anchors[uri]: set(labels) for uri, labels in skills.items()}
    negatives = mined[["negative_1", "negative_2"]]
    assert len(mined) == len(task.train)  # no margin: every pair has its negatives
    for row, pair in zip(negatives.itertuples(index=False), mined.itertuples(index=False), strict=True):
        assert not set(row) & skills_of[pair.anchor], pair.anchor
        assert len(set(row)) == 2
    assert set(negatives.stack()) <= set(vocabulary)
    assert set(negatives.stack()) - set(task.train["positive"])  # from the taxonomy, not only training skills
    for _, rows in mined.groupby("anchor"):  # 30 candidates, 2 a row: up to 15 rows without a repeat
        assert rows["negative_1"].head(15).nunique() == min(15, len(rows))


@pytest.mark.parametrize("epochs", [1.0, 0.6])
def test_the_planned_steps_are_the_steps_the_trainer_takes(tiny_bert, tmp_path, caplog, epochs):
    """Six anchors of four positives each: a batch of 8 holds at most one row of each anchor, so
    an epoch is more batches than 24 rows / 8; the log and the eval points count what the trainer
    takes, a part of an epoch rounded up as the trainer rounds it."""
    from skillops.config import LossConfig, Prompts, TrainingConfig
    from skillops.training.trainer import TrainingSpec, plan_steps, train_model

    pairs = pd.DataFrame(
        {
            "anchor": [f"occupation {a}" for a in range(6) for _ in range(4)],
            "positive": [f"skill {a}-{s}" for a in range(6) for s in range(4)],
        }
    )
    pairs.to_parquet(tmp_path / "train.parquet")
    config = TrainingConfig(batch_size=8, epochs=epochs, max_seq_length=16)
    plan = plan_steps(Dataset.from_pandas(pairs), config, LossConfig(name="mnrl"))
    assert plan.sampler == "taxonomy-aware" and plan.steps_per_epoch >= 4 > -(-24 // 8)
    with caplog.at_level(logging.INFO, logger="skillops.training.trainer"):
        result = train_model(
            TrainingSpec(
                base_model=str(tiny_bert),
                train_path=tmp_path / "train.parquet",
                config=config,
                loss=LossConfig(name="mnrl"),
                prompts=Prompts(),
                output_dir=tmp_path / "out",
            )
        )
    assert result.steps == math.ceil(plan.steps_per_epoch * epochs)
    assert f"on 24 rows for {result.steps} steps (taxonomy-aware batches, {plan.steps_per_epoch} steps per epoch)" in (
        caplog.text
    )
