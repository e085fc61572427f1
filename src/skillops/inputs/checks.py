"""Data checks that a Great Expectations suite alone does not express, written once.

They compare rows with each other or with the evaluation sets: leakage between training and
evaluation, duplicates that differ only in case, spacing or Unicode form, an anchor that is its own
positive, a positive listed as a negative, texts longer than the model reads, and held-out queries
that the base model sees as near duplicates of training queries. Each returns `Failure`s; the recipe's `validation` policy decides which of
them stop the run (error), are reported (warn) or are skipped (off).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Any

import pandas as pd
from pydantic import BaseModel

MAX_EXAMPLES = 5


class Failure(BaseModel):
    file: str
    column: str
    rule: str
    expectation: str
    fix: str
    unexpected: int | None = None
    total: int | None = None
    examples: list[Any] = []
    lines: list[int] = []  # 1-based line numbers in a text file (a CSV's header is line 1)
    rows: list[int] = []  # 0-based row numbers, for files without lines (Parquet, datasets)
    unit: str = "rows"  # what `unexpected` and `total` count

    def describe(self) -> str:
        where = f"{self.file}: column {self.column!r}" if self.column else f"{self.file}"
        text = f"{where}: rule '{self.rule}' ({self.expectation}) failed"
        if self.unexpected is not None:
            text += f" for {self.unexpected} of {self.total} {self.unit}"
        if self.lines:
            text += f", e.g. lines {self.lines}"
        if self.rows:
            text += f", e.g. rows {self.rows}"
        if self.examples:
            text += f": {self.examples}"
        return f"{text}. Fix: {self.fix}."


def normalise(text: str) -> str:
    """Case, spacing and Unicode form folded: "Data  Analyst", "data analyst" and "ｄata analyst" match."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().casefold()


def located(indexes: list[int], first_line: int | None) -> dict[str, list[int]]:
    """Row indexes as a file's line numbers (`first_line` is row 0's line) or, for files without
    lines (Parquet, datasets), as row numbers: the `lines`/`rows` fields of a Failure."""
    shown = indexes[:MAX_EXAMPLES]
    if first_line is None:
        return {"lines": [], "rows": shown}
    return {"lines": [i + first_line for i in shown], "rows": []}


def _failure(
    file: str,
    column: str,
    rule: str,
    fix: str,
    rows: list[int],
    total: int,
    examples: list[Any],
    first_line: int | None,
) -> Failure:
    return Failure(
        file=file,
        column=column,
        rule=rule,
        expectation="skillops check",
        fix=fix,
        unexpected=len(rows),
        total=total,
        examples=examples[:MAX_EXAMPLES],
        **located(rows, first_line),
    )


def non_text_values(frame: pd.DataFrame, columns: list[str], file: str, first_line: int | None) -> list[Failure]:
    """Text columns holding numbers, lists or nulls (a Parquet column of the wrong type)."""
    failures = []
    for column in columns:
        bad = frame.index[~frame[column].map(lambda value: isinstance(value, str))].tolist()
        if bad:
            failures.append(
                _failure(
                    file,
                    column,
                    "value is text",
                    f"store '{column}' as strings (e.g. cast the column to string before saving)",
                    bad,
                    len(frame),
                    [repr(frame.at[i, column]) for i in bad[:MAX_EXAMPLES]],
                    first_line,
                )
            )
    return failures


def duplicates_after_normalising(
    frame: pd.DataFrame, columns: list[str], file: str, first_line: int | None
) -> list[Failure]:
    """Rows equal to an earlier row once case, spacing and Unicode form are folded."""
    keys = frame[columns].map(normalise)
    repeated = keys.duplicated(keep="first")
    exact = frame[columns].duplicated(keep="first")
    rows = frame.index[repeated & ~exact].tolist()  # exact repeats are the suite's to report
    if not rows:
        return []
    return [
        _failure(
            file,
            ", ".join(columns),
            "rows are unique after normalising case, spacing and Unicode",
            "merge the rows that differ only in case or spacing: in a batch they are counted as negatives of each other",
            rows,
            len(frame),
            [" | ".join(frame.loc[i, columns]) for i in rows],
            first_line,
        )
    ]


def anchor_equals_positive(
    frame: pd.DataFrame, query: str, document: str, file: str, first_line: int | None
) -> list[Failure]:
    same = frame[query].map(normalise) == frame[document].map(normalise)
    rows = frame.index[same].tolist()
    if not rows:
        return []
    return [
        _failure(
            file,
            f"{query}, {document}",
            f"{query} differs from {document}",
            "drop these rows: a text paired with itself teaches nothing and inflates scores",
            rows,
            len(frame),
            frame.loc[rows, query].tolist(),
            first_line,
        )
    ]


def positive_in_negatives(frame: pd.DataFrame, file: str, first_line: int | None) -> list[Failure]:
    negatives = [c for c in frame.columns if c.startswith("negative_")]
    if not negatives:
        return []
    positive = frame["positive"].map(normalise)
    hit = pd.concat([frame[c].map(normalise) == positive for c in negatives], axis=1).any(axis=1)
    rows = frame.index[hit].tolist()
    if not rows:
        return []
    return [
        _failure(
            file,
            "positive, " + ", ".join(negatives),
            "a row's positive is not also one of its negatives",
            "remove the positive from the row's negatives (or re-mine them)",
            rows,
            len(frame),
            frame.loc[rows, "positive"].tolist(),
            first_line,
        )
    ]


def query_column(frame: pd.DataFrame) -> str:
    """The column that holds a table's queries: sentence1 for scored pairs, anchor otherwise."""
    return "sentence1" if "sentence1" in frame.columns else "anchor"


def eval_queries(eval_set: Any, evaluator: str) -> list[str]:
    if evaluator == "reranking":
        return [sample["query"] for sample in eval_set]
    if evaluator == "information_retrieval":
        return list(eval_set["queries"].values())
    return list(eval_set["sentence1"])


def leakage(train: pd.DataFrame, eval_sets: dict[str, Any], evaluator: str, files: dict[str, str]) -> list[Failure]:
    """A held-out query that training also sees (after normalising): every metric would be inflated.
    `files` names each eval set's file (a golden set's is the user's own)."""
    column = query_column(train)
    trained = set(train[column].map(normalise))
    failures = []
    for part, eval_set in eval_sets.items():
        leaked = [query for query in eval_queries(eval_set, evaluator) if normalise(query) in trained]
        if leaked:
            golden = part.startswith("golden-")
            failures.append(
                Failure(
                    file=files[part],
                    column=column,
                    rule=f"no {part} query is also a training {column}",
                    expectation="skillops check: leakage",
                    fix="remove these queries from the golden set, or the rows that hold them from the training data"
                    if golden
                    else f"write each {column} the same way everywhere (case, spacing) so the split keeps its rows together, or remove the repeats",
                    unexpected=len(leaked),
                    total=len(eval_queries(eval_set, evaluator)),
                    unit="queries",
                    examples=leaked[:MAX_EXAMPLES],
                )
            )
    return failures


NEAR_BLOCK = 512  # rows compared at once: a 100,000-text table holds 200 MB of similarities, not 40 GB


def near_duplicate_pairs(model, texts: list[str], threshold: float) -> list[tuple[int, int]]:
    """Pairs of `texts` (as indexes, the first the smaller) whose base-model embeddings are at
    cosine >= `threshold`: what the near-duplicate check would report if the split parted them."""
    import numpy as np

    vectors = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    pairs = []
    for start in range(0, len(texts), NEAR_BLOCK):  # a block of rows at a time: bounded memory
        similarity = vectors[start : start + NEAR_BLOCK] @ vectors.T
        rows, columns = np.nonzero(similarity >= threshold)
        pairs += [(start + i, j) for i, j in zip(rows.tolist(), columns.tolist(), strict=True) if start + i < j]
    return pairs


def near_duplicates(
    model, trained: list[str], held_out: dict[str, list[str]], threshold: float, files: dict[str, str], column: str
) -> list[Failure]:
    """Held-out queries whose base-model embedding is nearly a training query's (cosine >=
    `threshold`) without being the same text: variants an exact check misses ("ICT" vs
    "information technology", gendered forms). Exact matches are the leakage check's."""
    import numpy as np

    training = sorted(set(trained))
    if not training:
        return []
    train_vectors = model.encode(training, normalize_embeddings=True, convert_to_numpy=True)
    failures = []
    for part, queries in held_out.items():
        distinct = sorted(set(queries))
        similarity = model.encode(distinct, normalize_embeddings=True, convert_to_numpy=True) @ train_vectors.T
        nearest, best = similarity.argmax(axis=1), similarity.max(axis=1)
        found = sorted(
            (
                (float(best[i]), distinct[i], training[nearest[i]])
                for i in np.flatnonzero(best >= threshold)
                if normalise(distinct[i]) != normalise(training[nearest[i]])
            ),
            reverse=True,
        )
        if found:
            failures.append(
                Failure(
                    file=files[part],
                    column=column,
                    rule=f"no {part} query is a near duplicate of a training {column} (cosine >= {threshold})",
                    expectation="skillops check: near-duplicate leakage",
                    fix="move each pair to the same side of the split (one group), drop one of them, or raise "
                    "validation.near_duplicate_threshold if they are different questions",
                    unexpected=len(found),
                    total=len(distinct),
                    unit="queries",
                    examples=[
                        f"{query!r} ~ {neighbour!r} ({score:.3f})" for score, query, neighbour in found[:MAX_EXAMPLES]
                    ],
                )
            )
    return failures


def too_long(texts: Iterable[str], tokenizer, max_seq_length: int, column: str, file: str) -> list[Failure]:
    """Distinct texts the model would cut at `max_seq_length` tokens (special tokens included)."""
    distinct = list(dict.fromkeys(texts))
    if not distinct:
        return []
    lengths = [len(ids) for ids in tokenizer(distinct, add_special_tokens=True, truncation=False)["input_ids"]]
    cut = [text for text, length in zip(distinct, lengths, strict=True) if length > max_seq_length]
    if not cut:
        return []
    return [
        Failure(
            file=file,
            column=column,
            rule=f"text fits in training.max_seq_length = {max_seq_length} tokens",
            expectation="skillops check: length",
            fix=f"raise training.max_seq_length (longest: {max(lengths)} tokens) or accept that the end of these texts is cut",
            unexpected=len(cut),
            total=len(distinct),
            unit="distinct texts",
            examples=[text[:60] + "..." for text in cut[:MAX_EXAMPLES]],
        )
    ]
