"""A recipe's data turned into what training and evaluation read: a training table and frozen
validation/test evaluation sets, split so that no query (occupation, anchor) is on two sides.

On disk (what flows pass around instead of DataFrames):

    train.parquet      pairs (anchor, positive), triplets (+ negative_1..n) or scored pairs
    validation.json    the evaluation set the tuner and the training curves score on
    test.json          the frozen set the promotion gate scores base, candidate and champion on
    documents.parquet  the document side (id, text): what downstream indexes embed
    manifest.json      fingerprints, counts and the split
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from skillops.config import SLICE_COLUMN, DataConfig, GoldenSet, Recipe
from skillops.errors import DataError
from skillops.inputs import checks, esco
from skillops.inputs.tables import read_table

logger = logging.getLogger(__name__)

EVAL_PARTS = ("validation", "test")


@dataclass(frozen=True)
class PreparedPaths:
    directory: Path

    @property
    def train(self) -> Path:
        return self.directory / "train.parquet"

    def eval_set(self, part: str) -> Path:
        return self.directory / f"{part}.json"

    @property
    def documents(self) -> Path:
        return self.directory / "documents.parquet"

    @property
    def manifest(self) -> Path:
        return self.directory / "manifest.json"


class PreparedData(BaseModel):
    """What `prepare` built, as the later stages need it: the folder and its fingerprints."""

    directory: Path
    data_fingerprint: str  # the raw input files and the task settings
    eval_fingerprint: str  # the frozen test samples the promotion gate scores on
    counts: dict[str, int]

    @property
    def paths(self) -> PreparedPaths:
        return PreparedPaths(self.directory)


@dataclass(frozen=True)
class Task:
    train: pd.DataFrame
    eval_sets: dict[str, Any]  # "validation"/"test" -> the evaluator's input, JSON-serialisable
    split: dict[str, list[str]]  # part -> the groups (occupation URIs, anchors) in it
    documents: pd.DataFrame  # (id, text): the document side a downstream index holds

    @property
    def counts(self) -> dict[str, int]:
        return {"train_rows": len(self.train), **{f"{part}_groups": len(keys) for part, keys in self.split.items()}}


def split_groups(
    keys: list[str], validation: float, test: float, seed: int, near: list[tuple[str, str]] = ()
) -> dict[str, list[str]]:
    """Seeded split of groups: each group (with all its rows) lands in exactly one part. Keys that
    `near` joins (near duplicates, as the base model sees them) land together, in the part of
    whichever of them the seeded order placed first; a key no pair names stays where it was."""
    order = sorted(set(keys))
    np.random.default_rng(seed).shuffle(order)
    n_validation = max(1, round(len(order) * validation))
    n_test = max(1, round(len(order) * test))
    if n_validation + n_test >= len(order):
        raise DataError(
            f"Only {len(order)} distinct queries (occupations or anchors): too few to split into "
            "train, validation and test. Use more data."
        )
    planned = {"test": n_test, "validation": n_validation, "train": len(order) - n_test - n_validation}
    position = {key: i for i, key in enumerate(order)}

    def part_at(i: int) -> str:
        return "test" if i < n_test else "validation" if i < n_test + n_validation else "train"

    first = _first_of_each_group(position, near)
    part_of = {key: part_at(position[first[key]]) for key in order}
    sizes = {part: sum(1 for p in part_of.values() if p == part) for part in planned}
    if any(sizes[part] < max(1, planned[part] // 2) for part in planned):
        # An untrained or random base model sees most texts as alike: grouping would empty a part.
        logger.warning(
            "Near duplicates not kept together: the base model joins them into groups that would leave %s. "
            "Split without grouping; raise validation.near_duplicate_threshold if the model is right.",
            ", ".join(f"{part} {sizes[part]} of a planned {planned[part]}" for part in planned),
        )
        part_of = {key: part_at(position[key]) for key in order}
    moved = sum(1 for key in order if part_of[key] != part_at(position[key]))
    if moved:
        logger.info("Kept near duplicates on one side of the split: %d moved to their neighbours' part", moved)
    return {part: sorted(key for key in order if part_of[key] == part) for part in ("train", "validation", "test")}


def _first_of_each_group(position: dict[str, int], near: list[tuple[str, str]]) -> dict[str, str]:
    """Each key's group (the keys `near` joins, directly or through others) named by its member
    with the lowest `position` (its place in the split's seeded order)."""
    first = {key: key for key in position}

    def root(key: str) -> str:
        while first[key] != key:
            first[key] = first[first[key]]
            key = first[key]
        return key

    for a, b in near:
        ra, rb = root(a), root(b)
        if ra != rb:
            keep, join = (ra, rb) if position[ra] < position[rb] else (rb, ra)
            first[join] = keep
    return {key: root(key) for key in position}


def _near_duplicates(recipe: Recipe, keys: list[str], texts: list[str]) -> list[tuple[str, str]]:
    """The pairs of keys whose texts the recipe's base model sees as near duplicates, at the
    threshold the near-duplicate check uses; none when that check is off or the model is not here
    (the check then says so)."""
    if recipe.validation.near_duplicates == "off":
        return []
    from skillops.training.modeling import load_model

    try:
        model = load_model(recipe.base_model, recipe.training.max_seq_length)
    except (OSError, ValueError):
        return []
    pairs = checks.near_duplicate_pairs(model, texts, recipe.validation.near_duplicate_threshold)
    return [(keys[i], keys[j]) for i, j in pairs]


def reranking_set(
    queries: dict[str, list[str]], pool: list[str], negatives: int, rng, slices: dict[str, str]
) -> list[dict]:
    """RerankingEvaluator samples: each query's positives among `negatives` texts drawn from the pool."""
    samples = []
    for query, positives in queries.items():
        relevant = set(positives)
        candidates = [text for text in pool if text not in relevant]
        chosen = rng.choice(len(candidates), size=min(negatives, len(candidates)), replace=False)
        sample = {"query": query, "positive": positives, "negative": [candidates[i] for i in sorted(chosen)]}
        samples.append({**sample, "slice": slices[query]} if query in slices else sample)
    return samples


def retrieval_set(
    queries: dict[str, list[str]],
    pool: list[str],
    slices: dict[str, str],
    grades: dict[str, dict[str, int]] | None = None,
    short_list: int | None = None,
    rng=None,
) -> dict:
    """InformationRetrievalEvaluator input: every query against the whole pool of documents.

    `grades`: query -> relevant text -> its grade, stored only where a grade is not 1 (NDCG weighs
    essential skills above optional ones). `short_list`: that many non-relevant documents drawn per
    query (with `rng`) and frozen with the set, for card 000's short-list MAP beside the whole
    ranking."""
    doc_ids = {text: f"d{i}" for i, text in enumerate(pool)}
    query_ids = {query: f"q{i}" for i, query in enumerate(queries)}
    eval_set = {
        "queries": {query_id: query for query, query_id in query_ids.items()},
        "corpus": {doc_id: text for text, doc_id in doc_ids.items()},
        "relevant_docs": {
            query_ids[query]: sorted(doc_ids[text] for text in positives) for query, positives in queries.items()
        },
    }
    graded = {
        query_ids[query]: {doc_ids[text]: grade for text, grade in sorted(by_text.items()) if grade != 1}
        for query, by_text in (grades or {}).items()
        if query in query_ids
    }
    if any(graded.values()):
        eval_set["relevance"] = {query: by_doc for query, by_doc in graded.items() if by_doc}
    if short_list:
        eval_set["short_list"] = {
            query_ids[query]: [doc_ids[text] for text in sample["negative"]]
            for query, sample in zip(queries, reranking_set(queries, pool, short_list, rng, {}), strict=True)
        }
    if slices:
        eval_set["query_slices"] = {query_ids[query]: slices[query] for query in queries}
    return eval_set


def _ranking_eval_set(
    queries: dict[str, list[str]],
    pool: list[str],
    recipe: Recipe,
    slices: dict[str, str],
    rng,
    grades: dict[str, dict[str, int]] | None = None,
) -> Any:
    if recipe.evaluation.evaluator == "reranking":
        return reranking_set(queries, pool, recipe.data.eval_negatives, rng, slices)
    return retrieval_set(queries, pool, slices, grades, recipe.evaluation.short_list_negatives, rng)


def _ranking_eval_sets(
    queries_by_part: dict[str, dict[str, list[str]]],
    pool: list[str],
    recipe: Recipe,
    slices: dict[str, str],
    grades: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    rng = np.random.default_rng(recipe.data.split.seed)
    return {part: _ranking_eval_set(queries_by_part[part], pool, recipe, slices, rng, grades) for part in EVAL_PARTS}


def golden_part(name: str) -> str:
    """The eval set name (and file stem) of a golden set, next to validation and test."""
    return f"golden-{name}"


def golden_sources(recipe: Recipe) -> dict[str, str]:
    """Eval set name -> the user's golden file, for messages that point at what to fix."""
    return {golden_part(g.name): f"{g.location} (golden set {g.name!r})" for g in recipe.evaluation.golden}


def _golden_eval_set(recipe: Recipe, golden: GoldenSet, vocabulary: list[str] | None) -> Any:
    """A golden file as an eval set of the recipe's evaluator, from that file's own queries and
    relevant documents. Ranked against `vocabulary` when the recipe has one (an ESCO recipe's
    information retrieval: every skill of the download, frozen with the set), else against the
    file's own documents, so that it stays the same whatever the data refresh holds."""
    frame = read_table(recipe.golden_data(golden)).frame
    slices = (
        frame.groupby(_query_column(recipe), sort=False)[SLICE_COLUMN].first().to_dict()
        if SLICE_COLUMN in frame
        else {}
    )
    if recipe.data.shape == "scored_pairs":
        return frame[["sentence1", "sentence2", "score", *([SLICE_COLUMN] if slices else [])]].to_dict(orient="list")
    negative_columns = [c for c in frame.columns if c.startswith("negative_")]
    pool = sorted(set(frame["positive"]).union(*(set(frame[c]) for c in negative_columns)))
    if vocabulary is not None and recipe.evaluation.evaluator == "information_retrieval":
        pool = sorted(set(vocabulary).union(pool))  # a relevant text the download lacks is still ranked
    queries = {anchor: sorted(set(rows["positive"])) for anchor, rows in frame.groupby("anchor", sort=True)}
    return _ranking_eval_set(queries, pool, recipe, slices, np.random.default_rng(recipe.data.split.seed))


def _query_column(recipe: Recipe) -> str:
    return "sentence1" if recipe.data.shape == "scored_pairs" else "anchor"


def _esco_task(recipe: Recipe) -> Task:
    data = recipe.data
    tables = esco.load_esco(data.location, data.language)
    anchors, positives, skill_labels, grades = esco.occupation_skills(tables, data)
    near = _near_duplicates(recipe, list(anchors), list(anchors.values()))
    split = split_groups(list(anchors), data.split.validation, data.split.test, data.split.seed, near)
    train = pd.DataFrame(
        [{"anchor": anchors[uri], "positive": label} for uri in split["train"] for label in positives[uri]]
    ).drop_duplicates(ignore_index=True)
    queries = {part: {anchors[uri]: positives[uri] for uri in split[part]} for part in EVAL_PARTS}
    graded = {anchors[uri]: by_label for uri, by_label in grades.items() if uri in anchors}
    skills = tables[esco.SKILLS]
    documents = pd.DataFrame({"id": skills["conceptUri"], "text": skills["preferredLabel"].str.strip()})
    return Task(train, _ranking_eval_sets(queries, skill_labels, recipe, {}, graded), split, documents)


def _table_task(recipe: Recipe) -> Task:
    data = recipe.data
    frame = read_table(data).frame
    group = _query_column(recipe)
    queries = sorted(set(frame[group]))
    near = _near_duplicates(recipe, queries, queries)
    split = split_groups(frame[group].tolist(), data.split.validation, data.split.test, data.split.seed, near)
    part_of = {key: part for part, keys in split.items() for key in keys}
    parts = {part: frame[frame[group].map(part_of) == part] for part in ("train", *EVAL_PARTS)}
    # Slice labels judge candidates, they do not train them. A query's slice is its first row's.
    slices = frame.groupby(group, sort=False)[SLICE_COLUMN].first().to_dict() if SLICE_COLUMN in frame else {}
    train = parts["train"].drop(columns=SLICE_COLUMN, errors="ignore").reset_index(drop=True)
    if data.shape == "scored_pairs":
        kept = ["sentence1", "sentence2", "score", *([SLICE_COLUMN] if slices else [])]
        eval_sets = {part: parts[part][kept].to_dict(orient="list") for part in EVAL_PARTS}
        return Task(train, eval_sets, split, _documents(frame["sentence2"]))
    # Documents: every positive and negative text of the data set, so held-out queries are ranked
    # against the same collection whichever part they are in.
    negative_columns = [c for c in frame.columns if c.startswith("negative_")]
    pool = sorted(set(frame["positive"]).union(*(set(frame[c]) for c in negative_columns)))
    queries = {
        part: {anchor: sorted(set(rows["positive"])) for anchor, rows in parts[part].groupby("anchor", sort=True)}
        for part in EVAL_PARTS
    }
    return Task(train, _ranking_eval_sets(queries, pool, recipe, slices), split, _documents(pool))


def build_task(recipe: Recipe) -> Task:
    """The split and its eval sets, plus one eval set per golden set of the recipe."""
    task = _esco_task(recipe) if recipe.data.format == "esco" else _table_task(recipe)
    # An ESCO recipe's golden sets rank the same vocabulary as its test set: the download's skills.
    vocabulary = task.documents["text"].tolist() if recipe.data.format == "esco" else None
    golden = {golden_part(g.name): _golden_eval_set(recipe, g, vocabulary) for g in recipe.evaluation.golden}
    return Task(task.train, {**task.eval_sets, **golden}, task.split, task.documents)


def _documents(texts) -> pd.DataFrame:
    """Each distinct document text once, with an id that is the same on every machine."""
    unique = sorted(set(texts))
    return pd.DataFrame({"id": [hashlib.sha256(t.encode()).hexdigest()[:16] for t in unique], "text": unique})


def fingerprint_files(paths: list[Path], extra: str = "") -> str:
    """A short content hash: the same bytes and settings give the same fingerprint anywhere."""
    digest = hashlib.sha256(extra.encode())
    for path in sorted(paths):
        digest.update(path.name.encode())
        # A missing file is for validation to report, with its fix; here it is just a state.
        digest.update(path.read_bytes() if path.is_file() else b"\0missing")
    return digest.hexdigest()[:16]


def source_files(data: DataConfig) -> list[Path]:
    """The files a recipe's data comes from (for its fingerprint); empty for a hub dataset."""
    if data.format == "esco":
        return list(esco.esco_files(data.location, data.language).values())
    path = data.location
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path] if path.is_file() else []


def with_mined_negatives(task: Task, recipe: Recipe) -> Task:
    """The task with hard negatives in its training rows when the recipe asks for them.

    An ESCO recipe mines among the taxonomy's documents (every skill of the download: what its
    queries are ranked against); table data among its training documents, as sentence-transformers
    does by default."""
    if recipe.data.mine_negatives is None:
        return task
    corpus = task.documents["text"].tolist() if recipe.data.format == "esco" else None
    return Task(mine_negatives(task.train, recipe, corpus), task.eval_sets, task.split, task.documents)


def mine_negatives(train: pd.DataFrame, recipe: Recipe, corpus: list[str] | None = None) -> pd.DataFrame:
    """Hard negatives for (anchor, positive) rows: (anchor, positive, negative_1..n), with
    sentence-transformers' own miner and the base model. Rows without enough negatives are dropped.

    The miner treats every row of an anchor as one of its positives and never offers any of them
    as that anchor's negative (an occupation's skills are all its rows). It picks negatives once
    per anchor; here an anchor's rows share its candidates out, so the 20 rows of an occupation
    train against up to 20 different skills rather than the same one 20 times."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    from skillops.training.modeling import load_model

    mining = recipe.data.mine_negatives
    rows_per_anchor = int(train.groupby("anchor").size().max())
    window = (mining.range_max or len(corpus or train)) - mining.range_min
    candidates_per_anchor = max(mining.num_negatives, min(window, mining.num_negatives * rows_per_anchor))
    mined = mine_hard_negatives(
        Dataset.from_pandas(train[["anchor", "positive"]], preserve_index=False),
        load_model(recipe.base_model, recipe.training.max_seq_length),
        anchor_column_name="anchor",
        positive_column_name="positive",
        corpus=corpus,
        num_negatives=candidates_per_anchor,
        range_min=mining.range_min,
        range_max=mining.range_max,
        relative_margin=mining.relative_margin,
        sampling_strategy=mining.sampling_strategy,
        query_prompt=recipe.prompts.query or None,
        corpus_prompt=recipe.prompts.document or None,
        output_format="labeled-pair",  # each anchor's positives (1), then its candidates best first (0)
        batch_size=recipe.evaluation.batch_size,
        verbose=False,
    ).to_pandas()
    candidates = mined[mined["label"] == 0].groupby("anchor", sort=False)["positive"].apply(list).to_dict()
    rows = []
    for anchor, group in train.groupby("anchor", sort=False):
        pool = candidates.get(anchor, [])
        if len(pool) < mining.num_negatives:
            continue
        for number, positive in enumerate(group["positive"]):
            first = number * mining.num_negatives
            picked = [pool[(first + k) % len(pool)] for k in range(mining.num_negatives)]
            rows.append(
                {"anchor": anchor, "positive": positive, **{f"negative_{k + 1}": n for k, n in enumerate(picked)}}
            )
    if not rows:
        raise DataError(
            f"Mining found no {mining.num_negatives} hard negatives for any of the {len(train)} training pairs; lower "
            "data.mine_negatives.num_negatives or raise range_max. Where an anchor has many positives (an ESCO "
            "occupation's skills), set data.mine_negatives.relative_margin: null: the margin is measured from the "
            "anchor's least similar positive, which leaves almost nothing below it."
        )
    logger.info(
        "Mined %d negatives each for %d of %d training pairs, from up to %d candidates per anchor",
        mining.num_negatives,
        len(rows),
        len(train),
        candidates_per_anchor,
    )
    return pd.DataFrame(rows)


def write_task(task: Task, directory: Path, manifest: dict) -> PreparedPaths:
    paths = PreparedPaths(directory)
    directory.mkdir(parents=True, exist_ok=True)
    task.train.to_parquet(paths.train, index=False)
    task.documents.to_parquet(paths.documents, index=False)
    for part, eval_set in task.eval_sets.items():
        paths.eval_set(part).write_text(json.dumps(eval_set, ensure_ascii=False, indent=1), "utf-8")
    paths.manifest.write_text(json.dumps({**manifest, "counts": task.counts, "split": task.split}, indent=1), "utf-8")
    return paths


def eval_set_frame(eval_set: Any, evaluator: str) -> pd.DataFrame:
    """An eval set as one row per query (or pair), for tables and MLflow's dataset view."""
    if evaluator == "reranking":
        return pd.DataFrame(
            [{"query": s["query"], "positives": len(s["positive"]), "negatives": len(s["negative"])} for s in eval_set]
        )
    if evaluator == "information_retrieval":
        return pd.DataFrame(
            [
                {"query_id": query_id, "query": text, "relevant": len(eval_set["relevant_docs"].get(query_id, []))}
                for query_id, text in eval_set["queries"].items()
            ]
        )
    return pd.DataFrame(eval_set)


def read_eval_set(path: Path) -> Any:
    return json.loads(path.read_text("utf-8"))
