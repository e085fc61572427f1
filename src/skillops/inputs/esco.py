"""ESCO in its official CSV download layout, and the occupation -> skills pairs of model card 000.

The layout: `occupations_<lang>.csv`, `skills_<lang>.csv` and `occupationSkillRelations_<lang>.csv`,
with `altLabels` newline-separated inside one cell. ESCO is (c) European Union, CC BY 4.0.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from skillops.config import DataConfig
from skillops.inputs.tables import read_csv

OCCUPATIONS = "occupations"
SKILLS = "skills"
RELATIONS = "relations"

REQUIRED_COLUMNS = {
    OCCUPATIONS: ("conceptUri", "preferredLabel", "altLabels"),
    SKILLS: ("conceptUri", "preferredLabel"),
    RELATIONS: ("occupationUri", "skillUri"),
}


def release(config: DataConfig) -> str:
    """The ESCO release of the data: as the recipe states it, else as the download's folder name
    does (the official downloads are "ESCO dataset - v1.2.0 - classification - en - csv")."""
    if config.esco_version:
        return config.esco_version
    for name in (config.location.name, config.location.parent.name):
        found = re.search(r"\bv(\d+\.\d+(?:\.\d+)?)\b", name)
        if found:
            return f"v{found.group(1)}"
    return "not stated (set data.esco_version)"


def esco_files(directory: Path, language: str = "en") -> dict[str, Path]:
    return {
        OCCUPATIONS: directory / f"occupations_{language}.csv",
        SKILLS: directory / f"skills_{language}.csv",
        RELATIONS: directory / f"occupationSkillRelations_{language}.csv",
    }


# What a missing file's error suggests: the folder is probably not an ESCO download.
ESCO_LAYOUT_FIX = (
    "an ESCO folder needs occupations_<lang>.csv, skills_<lang>.csv and occupationSkillRelations_<lang>.csv "
    "(the official ESCO CSV download layout)"
)


def load_esco(directory: Path, language: str = "en") -> dict[str, pd.DataFrame]:
    return {table: read_csv(path, ESCO_LAYOUT_FIX) for table, path in esco_files(directory, language).items()}


def split_labels(cell: str) -> list[str]:
    return [label.strip() for label in cell.splitlines() if label.strip()]


def occupation_anchor(preferred: str, alt_labels: str, max_alt_labels: int | None) -> str:
    """Preferred label then alternative labels, space-joined as card 000's anchors join forms."""
    alternatives = [label for label in split_labels(alt_labels) if label != preferred.strip()]
    if max_alt_labels is not None:
        alternatives = alternatives[:max_alt_labels]
    return " ".join([preferred.strip(), *alternatives])


# How much a linked skill matters to its occupation, for graded metrics (NDCG): ESCO's full
# downloads fill `relationType`; an empty one (the bundled sample) counts as optional.
RELATION_GRADES = {"essential": 2, "optional": 1}


def occupation_skills(
    tables: dict[str, pd.DataFrame], config: DataConfig
) -> tuple[dict[str, str], dict[str, list[str]], list[str], dict[str, dict[str, int]]]:
    """Occupation anchors and their skill labels, keyed by occupation URI, every skill label, and
    each occupation's skills' grades (`RELATION_GRADES`; 1 where the relation type is empty).

    Only occupations that link to at least one skill are kept: one with none has nothing to train
    on or to rank.
    """
    occupations = tables[OCCUPATIONS].set_index("conceptUri")
    skill_labels = tables[SKILLS].set_index("conceptUri")["preferredLabel"].str.strip()
    relations = tables[RELATIONS]
    kinds = relations["relationType"] if "relationType" in relations else pd.Series("", index=relations.index)
    relations = relations.assign(grade=kinds.str.strip().str.lower().map(RELATION_GRADES).fillna(1).astype(int))
    # A skill linked twice (as essential and as optional) keeps its higher grade.
    relations = relations.groupby(["occupationUri", "skillUri"], as_index=False)["grade"].max()
    skills_of = relations.groupby("occupationUri")["skillUri"].apply(sorted).to_dict()
    anchors = {
        uri: occupation_anchor(row.preferredLabel, row.altLabels, config.max_alt_labels)
        for uri, row in occupations.loc[list(skills_of)].iterrows()
    }
    positives = {uri: [skill_labels[skill] for skill in skills] for uri, skills in skills_of.items()}
    grades: dict[str, dict[str, int]] = {}
    for row in relations.itertuples(index=False):
        label = skill_labels[row.skillUri]
        grades.setdefault(row.occupationUri, {})[label] = max(
            row.grade, grades.get(row.occupationUri, {}).get(label, 0)
        )
    return anchors, positives, sorted(set(skill_labels)), grades
