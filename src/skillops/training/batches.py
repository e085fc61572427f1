"""Which rows train together: the batch samplers skillops gives sentence-transformers' trainer.

In-batch-negative losses (MNRL, CachedMNRL) take every other row's documents in a batch as
negatives of each anchor. sentence-transformers' NO_DUPLICATES sampler keeps identical texts apart,
but in many-to-many data (an ESCO skill belongs to many occupations, an IR query has several
relevant documents, a mined negative of one row can be a positive of another's anchor) a batch
still holds documents that are known positives of another row's anchor: false negatives. The
taxonomy-aware sampler knows every anchor's positives (all rows with that anchor: for ESCO the
relations, for IR data the relevance judgments) and keeps those rows apart too, in each step's
whole batch: with several processes, the union of their batches (`gather_across_devices` scores
each query against all of them).

Losses that score each pair alone (cosine similarity) get batches of pairs of about the same
length instead, which pads less.
"""

from __future__ import annotations

import os
from collections import defaultdict

ANCHOR = "anchor"  # the query column of pairs and triplets; the second column is its positive


def _world_size() -> int:
    """Processes that train together (each takes one of every `world` consecutive batches)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def _rows(dataset, valid_label_columns) -> tuple[list[str], list[set[str]], dict[str, set[str]]]:
    """Each row's anchor and documents, and each anchor's known positives."""
    columns = [c for c in dataset.column_names if c not in (valid_label_columns or []) and c != "dataset_name"]
    anchors = list(dataset[columns[0]])
    documents = [set() for _ in anchors]
    for column in columns[1:]:
        for row, value in enumerate(dataset[column]):
            documents[row].update(value if isinstance(value, list) else [value])
    positives: dict[str, set[str]] = defaultdict(set)
    for anchor, positive in zip(anchors, dataset[columns[1]], strict=True):
        positives[anchor].add(positive)
    return anchors, documents, positives


def false_negative_share(batches: list[list[int]], dataset, world: int = 1, valid_label_columns=None) -> float:
    """Of the in-batch negatives the loss sees (each anchor against the other rows' documents in a
    step's batch: `world` consecutive batches), the share that are known positives of that anchor."""
    anchors, documents, positives = _rows(dataset, valid_label_columns)
    false = total = 0
    for start in range(0, len(batches), world):
        step = [row for batch in batches[start : start + world] for row in batch]
        for row in step:
            for other in step:
                if other != row:
                    total += len(documents[other])
                    false += len(documents[other] & positives[anchors[row]])
    return false / total if total else 0.0


def false_negative_shares(dataset, batch_size: int, world: int, taxonomy_aware: bool, seed: int) -> dict[str, float]:
    """How many in-batch negatives of one epoch are known positives of their anchor: in the
    batches a training with these settings uses (`false_in_batch_negatives_share`), and in
    sentence-transformers' NO_DUPLICATES batches (`..._no_duplicates`, what the switch fixes)."""
    import torch
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

    plain = list(NoDuplicatesBatchSampler(dataset, batch_size, False, generator=torch.Generator(), seed=seed))
    aware = list(
        taxonomy_aware_batches(dataset, batch_size, False, generator=torch.Generator(), seed=seed, world=world)
    )
    without = false_negative_share(plain, dataset, world)
    return {
        "false_in_batch_negatives_share": false_negative_share(aware, dataset, world) if taxonomy_aware else without,
        "false_in_batch_negatives_share_no_duplicates": without,
    }


def taxonomy_aware_batches(
    dataset,
    batch_size: int,
    drop_last: bool,
    valid_label_columns=None,
    generator=None,
    seed: int = 0,
    world: int | None = None,
):
    """Batches without duplicate texts and without a known positive of one row's anchor among
    another row's documents, across each step's whole batch of `world` processes (default: those
    training now). Takes sentence-transformers' batch sampler arguments (the trainer calls it with them)."""
    import torch
    from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

    anchors, documents, positives = _rows(dataset, valid_label_columns)
    texts = [docs | {anchor} for anchor, docs in zip(anchors, documents, strict=True)]
    known = [positives[anchor] for anchor in anchors]
    world = world or _world_size()

    class TaxonomyAwareBatchSampler(NoDuplicatesBatchSampler):
        """NO_DUPLICATES' deferral (a row that does not fit waits for a later batch) with the
        known positives of every anchor kept apart too. One pass builds each step's whole batch
        (up to batch_size x processes rows, a multiple of the processes) and hands it out as that
        many consecutive batches of equal size, one per process. Rows that fit nowhere early wait
        for the end of the epoch, so later batches are smaller: their number is what `len` says."""

        _length: int | None = None

        def _iter_one_pass(self, get_sample_values=None, has_overlap=None):
            order = torch.randperm(len(anchors), generator=self.generator).tolist()
            step_size = self.batch_size * world
            while order:
                step, step_texts, step_documents, step_known, deferred = [], set(), set(), set(), []
                for position, row in enumerate(order):
                    if len(step) == step_size:
                        deferred += order[position:]  # the rows not looked at keep their place
                        break
                    if not (
                        texts[row].isdisjoint(step_texts)
                        and documents[row].isdisjoint(step_known)
                        and known[row].isdisjoint(step_documents)
                    ):
                        deferred.append(row)  # waits for a later step, ahead of the rows after it
                        continue
                    step.append(row)
                    step_texts |= texts[row]
                    step_documents |= documents[row]
                    step_known |= known[row]
                if len(step) < world:
                    # The rows left conflict with one another: no step can give every process one.
                    # (The last few rows of an epoch, with several processes only.)
                    return
                keep = len(step) - len(step) % world  # every process gets a batch of the same size
                step, order = step[:keep], step[keep:] + deferred
                size = -(-len(step) // world)
                for start in range(0, len(step), size):
                    batch = step[start : start + size]
                    if len(batch) == self.batch_size or not self.drop_last:
                        yield batch

        def __len__(self) -> int:
            # What a pass yields (the trainer sizes its learning-rate schedule by it), for epoch 0.
            if self._length is None:
                generator = torch.Generator().manual_seed(self.seed)
                saved, self.generator = self.generator, generator
                self._length = sum(1 for _ in self._iter_one_pass())
                self.generator = saved
            return self._length

    return TaxonomyAwareBatchSampler(dataset, batch_size, drop_last, valid_label_columns, generator, seed)


def length_grouped_batches(dataset, batch_size: int, drop_last: bool, valid_label_columns=None, generator=None, seed=0):
    """Batches of pairs of about the same length, in a random order: each batch is padded to its
    longest text, so grouping cuts the padding the model computes on. Only for losses that score
    each pair on its own (cosine similarity): with in-batch negatives, grouping by length would
    choose each query's negatives by their length. Takes sentence-transformers' batch sampler
    arguments (the trainer calls it with them)."""
    import torch
    from sentence_transformers.base.sampler import DefaultBatchSampler

    texts = [list(dataset[c]) for c in dataset.column_names if c not in (valid_label_columns or [])]
    lengths = [sum(len(column[row]) for column in texts) for row in range(len(dataset))]

    class LengthGroupedBatchSampler(DefaultBatchSampler):
        # Sorted within windows of this many batches: random enough across the epoch, grouped within.
        WINDOW_BATCHES = 50

        def __iter__(self):
            shuffle = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(lengths), generator=shuffle).tolist()
            window = self.batch_size * self.WINDOW_BATCHES
            batches = []
            for start in range(0, len(order), window):
                grouped = sorted(order[start : start + window], key=lengths.__getitem__)
                batches += [grouped[i : i + self.batch_size] for i in range(0, len(grouped), self.batch_size)]
            if self.drop_last:
                batches = [batch for batch in batches if len(batch) == self.batch_size]
            yield from (batches[i] for i in torch.randperm(len(batches), generator=shuffle).tolist())

        def __len__(self) -> int:
            full, rest = divmod(len(lengths), self.batch_size)
            return full if self.drop_last or not rest else full + 1

    return LengthGroupedBatchSampler(dataset, batch_size, drop_last, valid_label_columns, generator, seed)
