"""ESCO in its official CSV download layout, and the occupation -> skills task of model card 000.

The layout: `occupations_<lang>.csv`, `skills_<lang>.csv` and `occupationSkillRelations_<lang>.csv`,
with `altLabels` newline-separated inside one cell. ESCO is (c) European Union, CC BY 4.0.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from skillops.config import DataConfig

OCCUPATIONS = "occupations"
SKILLS = "skills"
RELATIONS = "relations"

REQUIRED_COLUMNS = {
    OCCUPATIONS: ("conceptUri", "preferredLabel", "altLabels"),
    SKILLS: ("conceptUri", "preferredLabel"),
    RELATIONS: ("occupationUri", "skillUri"),
}


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, the column and the fix."""


def esco_files(directory: Path, language: str = "en") -> dict[str, Path]:
    return {
        OCCUPATIONS: directory / f"occupations_{language}.csv",
        SKILLS: directory / f"skills_{language}.csv",
        RELATIONS: directory / f"occupationSkillRelations_{language}.csv",
    }


def read_csv(path: Path) -> pd.DataFrame:
    """Every cell as text, empty cells as "" (never NaN), with errors that name the file."""
    if not path.is_file():
        raise DataError(
            f"{path}: file not found. An ESCO folder needs occupations_<lang>.csv, skills_<lang>.csv "
            "and occupationSkillRelations_<lang>.csv (the official ESCO CSV download layout)."
        )
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: not UTF-8 text ({error.reason} at byte {error.start}). Re-export it as UTF-8."
        ) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; it needs a header row and data rows.") from None
    except pd.errors.ParserError as error:
        raise DataError(f"{path}: not a readable CSV file ({error}).") from None


def load_esco(directory: Path, language: str = "en") -> dict[str, pd.DataFrame]:
    return {table: read_csv(path) for table, path in esco_files(directory, language).items()}


def fingerprint_files(paths: list[Path], extra: str = "") -> str:
    """A short content hash: the same bytes and settings give the same fingerprint anywhere."""
    digest = hashlib.sha256(extra.encode())
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def split_labels(cell: str) -> list[str]:
    return [label.strip() for label in cell.splitlines() if label.strip()]


def occupation_anchor(preferred: str, alt_labels: str, max_alt_labels: int | None) -> str:
    """Preferred label then alternative labels, space-joined as card 000's anchors join forms."""
    alternatives = [label for label in split_labels(alt_labels) if label != preferred.strip()]
    if max_alt_labels is not None:
        alternatives = alternatives[:max_alt_labels]
    return " ".join([preferred.strip(), *alternatives])


def split_occupations(uris: list[str], validation: float, test: float, seed: int) -> dict[str, list[str]]:
    """Seeded split by occupation: each occupation lands in exactly one of train/validation/test."""
    order = sorted(uris)
    np.random.default_rng(seed).shuffle(order)
    n_validation = max(1, round(len(order) * validation))
    n_test = max(1, round(len(order) * test))
    if n_validation + n_test >= len(order):
        raise DataError(
            f"Only {len(order)} occupations have skills: too few to split into train, validation "
            "and test. Use a larger ESCO extract."
        )
    return {
        "test": sorted(order[:n_test]),
        "validation": sorted(order[n_test : n_test + n_validation]),
        "train": sorted(order[n_test + n_validation :]),
    }


@dataclass(frozen=True)
class EscoTask:
    """Training pairs and reranking samples, split by occupation."""

    train_pairs: pd.DataFrame  # columns: anchor, positive
    samples: dict[str, list[dict]]  # "validation"/"test" -> [{query, positive, negative}]
    split: dict[str, list[str]]  # split name -> occupation URIs

    @property
    def counts(self) -> dict[str, int]:
        return {
            "train_pairs": len(self.train_pairs),
            **{f"{part}_occupations": len(uris) for part, uris in self.split.items()},
        }


def build_task(tables: dict[str, pd.DataFrame], config: DataConfig) -> EscoTask:
    occupations = tables[OCCUPATIONS].set_index("conceptUri")
    skill_labels = tables[SKILLS].set_index("conceptUri")["preferredLabel"].str.strip()
    relations = tables[RELATIONS][["occupationUri", "skillUri"]].drop_duplicates()
    skills_of = relations.groupby("occupationUri")["skillUri"].apply(sorted).to_dict()

    anchors = {
        uri: occupation_anchor(row.preferredLabel, row.altLabels, config.max_alt_labels)
        for uri, row in occupations.loc[list(skills_of)].iterrows()
    }
    split = split_occupations(
        list(anchors), config.split.validation, config.split.test, config.split.seed
    )

    train_pairs = pd.DataFrame(
        [
            {"anchor": anchors[uri], "positive": skill_labels[skill]}
            for uri in split["train"]
            for skill in skills_of[uri]
        ]
    ).drop_duplicates(ignore_index=True)

    all_skills = np.array(sorted(skill_labels.index))
    rng = np.random.default_rng(config.split.seed)
    samples: dict[str, list[dict]] = {}
    for part in ("validation", "test"):
        samples[part] = []
        for uri in split[part]:
            linked = set(skills_of[uri])
            candidates = np.array([skill for skill in all_skills if skill not in linked])
            chosen = rng.choice(candidates, size=min(config.eval_negatives, len(candidates)), replace=False)
            samples[part].append(
                {
                    "occupation": uri,
                    "query": anchors[uri],
                    "positive": [skill_labels[skill] for skill in skills_of[uri]],
                    "negative": [skill_labels[skill] for skill in sorted(chosen)],
                }
            )
    return EscoTask(train_pairs=train_pairs, samples=samples, split=split)


@dataclass(frozen=True)
class PreparedPaths:
    """Where a prepared task lives on disk; what flows pass between tasks instead of DataFrames."""

    directory: Path

    @property
    def train_pairs(self) -> Path:
        return self.directory / "train_pairs.parquet"

    def samples(self, part: str) -> Path:
        return self.directory / f"{part}_samples.json"

    @property
    def manifest(self) -> Path:
        return self.directory / "manifest.json"


def write_task(task: EscoTask, directory: Path, manifest: dict) -> PreparedPaths:
    paths = PreparedPaths(directory)
    directory.mkdir(parents=True, exist_ok=True)
    task.train_pairs.to_parquet(paths.train_pairs, index=False)
    for part, samples in task.samples.items():
        paths.samples(part).write_text(json.dumps(samples, ensure_ascii=False, indent=1), "utf-8")
    paths.manifest.write_text(
        json.dumps({**manifest, "counts": task.counts, "split": task.split}, indent=1), "utf-8"
    )
    return paths


def read_samples(path: Path) -> list[dict]:
    return json.loads(path.read_text("utf-8"))
