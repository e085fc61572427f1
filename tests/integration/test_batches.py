"""In-batch negatives that are really negatives: on the bundled ESCO sample, sentence-transformers'
NO_DUPLICATES batches hold skills of the very occupation they are negatives of; the taxonomy-aware
sampler's hold none, in one process's batches and across two processes' (a step's whole batch),
with mined negatives too, and every row still trains once an epoch."""

import pandas as pd
import pytest
import torch
from datasets import Dataset
from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

from skillops import preparation
from skillops.batches import false_negative_share, false_negative_shares, taxonomy_aware_batches
from skillops.config import load_recipe


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
