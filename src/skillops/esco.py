"""ESCO in its official CSV download layout, and the occupation -> skills pairs of model card 000.

The layout: `occupations_<lang>.csv`, `skills_<lang>.csv` and `occupationSkillRelations_<lang>.csv`,
with `altLabels` newline-separated inside one cell. ESCO is (c) European Union, CC BY 4.0.
"""

from __future__ import annotations

from pathlib import Path

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


def data_error(file: object, rule: str, fix: str, column: str | None = None, detail: str = "") -> DataError:
    """The same shape as a failed suite rule: `<file>: column '<c>': rule '<rule>' failed (...). Fix: ...`"""
    where = f"{file}: column {column!r}" if column else f"{file}"
    return DataError(f"{where}: rule '{rule}' failed{f' ({detail})' if detail else ''}. Fix: {fix}.")


def esco_files(directory: Path, language: str = "en") -> dict[str, Path]:
    return {
        OCCUPATIONS: directory / f"occupations_{language}.csv",
        SKILLS: directory / f"skills_{language}.csv",
        RELATIONS: directory / f"occupationSkillRelations_{language}.csv",
    }


def read_csv(path: Path) -> pd.DataFrame:
    """Every cell as text, empty cells as "" (never NaN), with errors that name the file."""
    if not path.is_file():
        raise data_error(
            path,
            "file exists",
            "an ESCO folder needs occupations_<lang>.csv, skills_<lang>.csv and "
            "occupationSkillRelations_<lang>.csv (the official ESCO CSV download layout)",
            detail="file not found",
        )
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as error:
        raise data_error(
            path, "file is UTF-8 text", "re-export it as UTF-8", detail=f"{error.reason} at byte {error.start}"
        ) from None
    except pd.errors.EmptyDataError:
        raise data_error(
            path, "file has a header row", "the file is empty: it needs a header row and data rows"
        ) from None
    except pd.errors.ParserError as error:
        raise data_error(
            path,
            "file is comma-separated CSV",
            "check the quoting and the number of fields per line",
            detail=str(error),
        ) from None


def load_esco(directory: Path, language: str = "en") -> dict[str, pd.DataFrame]:
    return {table: read_csv(path) for table, path in esco_files(directory, language).items()}


def split_labels(cell: str) -> list[str]:
    return [label.strip() for label in cell.splitlines() if label.strip()]


def occupation_anchor(preferred: str, alt_labels: str, max_alt_labels: int | None) -> str:
    """Preferred label then alternative labels, space-joined as card 000's anchors join forms."""
    alternatives = [label for label in split_labels(alt_labels) if label != preferred.strip()]
    if max_alt_labels is not None:
        alternatives = alternatives[:max_alt_labels]
    return " ".join([preferred.strip(), *alternatives])


def occupation_skills(
    tables: dict[str, pd.DataFrame], config: DataConfig
) -> tuple[dict[str, str], dict[str, list[str]], list[str]]:
    """Occupation anchors and their skill labels, keyed by occupation URI, and every skill label.

    Only occupations that link to at least one skill are kept: one with none has nothing to train
    on or to rank.
    """
    occupations = tables[OCCUPATIONS].set_index("conceptUri")
    skill_labels = tables[SKILLS].set_index("conceptUri")["preferredLabel"].str.strip()
    relations = tables[RELATIONS][["occupationUri", "skillUri"]].drop_duplicates()
    skills_of = relations.groupby("occupationUri")["skillUri"].apply(sorted).to_dict()
    anchors = {
        uri: occupation_anchor(row.preferredLabel, row.altLabels, config.max_alt_labels)
        for uri, row in occupations.loc[list(skills_of)].iterrows()
    }
    positives = {uri: [skill_labels[skill] for skill in skills] for uri, skills in skills_of.items()}
    return anchors, positives, sorted(set(skill_labels))
