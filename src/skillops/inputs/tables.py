"""Training data that is not in the ESCO layout: CSV, JSONL, Parquet, a saved `datasets` folder or
a Hugging Face dataset name, renamed to skillops' column names for its shape.

Shapes and their columns (`config.SHAPE_COLUMNS`): pairs (anchor, positive), triplets (anchor,
positive, negative_1..n) and scored pairs (sentence1, sentence2, score). A recipe maps a file's own
column names onto these with `data.columns`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from skillops.config import SHAPE_COLUMNS, SLICE_COLUMN, DataConfig
from skillops.errors import DataError, data_error

TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Table:
    frame: pd.DataFrame  # skillops' column names, in file order
    source: str  # the file or dataset the rows came from, for messages
    first_line: int | None  # line number of the first row in a text file (CSV 2, JSONL 1); None: row index


def read_csv(path: Path, missing_fix: str = "check the path") -> pd.DataFrame:
    """Every cell as text, empty cells as "" (never NaN), with errors that name the file."""
    if not path.is_file():
        raise data_error(path, "file exists", missing_fix, detail="file not found")
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


def _read_jsonl(path: Path) -> pd.DataFrame:
    rows = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise data_error(
                path,
                "each line is one JSON object",
                f"repair line {number}: {line[:80]!r}",
                detail=f"line {number} is not JSON: {error.msg}",
            ) from None
        if not isinstance(row, dict):
            raise data_error(
                path,
                "each line is one JSON object",
                f"write line {number} as an object with named fields",
                detail=f"line {number} is a JSON {type(row).__name__}",
            )
        rows.append(row)
    if not rows:
        raise data_error(path, "the file has data rows", "the file is empty: add one JSON object per line")
    return pd.DataFrame(rows)


def read_source(config: DataConfig) -> tuple[pd.DataFrame, str, int | None]:
    """The file, folder or hub dataset as it is, under its own column names."""
    path = config.location
    try:
        if path.is_file() and path.suffix == ".csv":
            return read_csv(path), str(path), 2
        if path.is_file() and path.suffix == ".jsonl":
            return _read_jsonl(path), str(path), 1
        if path.is_file() and path.suffix == ".parquet":
            return pd.read_parquet(path), str(path), None
    except UnicodeDecodeError as error:
        raise data_error(
            path, "file is UTF-8 text", "re-save it as UTF-8", detail=f"{error.reason} at byte {error.start}"
        ) from None
    except DataError:
        raise
    except (OSError, ValueError) as error:
        raise data_error(
            path, f"file is readable {path.suffix[1:]}", "re-save the file", detail=str(error)[:200]
        ) from None
    if path.is_file():
        raise data_error(
            path, "known file type", f"save it as one of {', '.join(TABLE_SUFFIXES)}", detail=f"{path.suffix!r}"
        )
    if path.is_dir():
        from datasets import load_from_disk

        try:
            dataset = load_from_disk(str(path))
        except FileNotFoundError:
            raise data_error(
                path,
                "folder is a saved `datasets` dataset",
                f"give a file ({', '.join(TABLE_SUFFIXES)}) or a folder written by Dataset.save_to_disk",
            ) from None
        if hasattr(dataset, "keys"):  # a DatasetDict: take the split the recipe names
            dataset = dataset[config.hub_split]
        return dataset.to_pandas(), str(path), None
    return _read_hub(config), f"{config.path} (Hugging Face hub, split {config.hub_split})", None


def _read_hub(config: DataConfig) -> pd.DataFrame:
    from datasets import load_dataset

    try:
        return load_dataset(config.path, split=config.hub_split).to_pandas()
    except Exception as error:  # offline, unknown name, no such split: all end the same way
        raise DataError(
            f"data.path = {config.path!r} is not a file or folder here, and loading it as a Hugging "
            f"Face dataset failed ({type(error).__name__}: {str(error)[:200]}). Check the path, or "
            "go online once (HF_HUB_OFFLINE unset) to fetch the dataset."
        ) from None


def _missing_column(source: str, frame: pd.DataFrame, name: str, column: str) -> DataError:
    hint = ""
    if len(frame.columns) == 1 and any(sep in frame.columns[0] for sep in ";\t|"):
        hint = " The file seems to use another delimiter than a comma; save it as comma-separated CSV."
    return data_error(
        source,
        f"column {column!r} is present",
        f"rename the column in the file or set data.columns.{name} in the recipe.{hint}",
        column=column,
        detail=f"the {name!r} column of this recipe; the file has {list(frame.columns)}",
    )


def _negative_columns(config: DataConfig, frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """negative_1..n, from a list of columns, one column of lists, or columns named negative*."""
    mapped = config.columns.get("negatives")
    if mapped is None:
        names = [c for c in frame.columns if str(c).startswith("negative")]
        if not names:
            raise data_error(
                source,
                "triplets have negative columns",
                "set data.columns.negatives to the negative column(s), or use data.shape: pairs with "
                "data.mine_negatives to mine them",
                column="negative*",
                detail=f"the file has {list(frame.columns)}",
            )
    else:
        names = [mapped] if isinstance(mapped, str) else mapped
    for name in names:
        if name not in frame.columns:
            raise _missing_column(source, frame, "negatives", name)
    if len(names) == 1 and frame[names[0]].map(lambda v: isinstance(v, list | tuple) or hasattr(v, "tolist")).all():
        lists = frame[names[0]].map(list)
        width = lists.map(len)
        if width.nunique() != 1:
            raise data_error(
                source,
                "every row has the same number of negatives",
                "pad or trim the lists",
                column=names[0],
                detail=f"lists of {sorted(width.unique())[:5]} negatives",
            )
        return pd.DataFrame(lists.tolist(), columns=[f"negative_{i + 1}" for i in range(width.iloc[0])])
    return frame[names].set_axis([f"negative_{i + 1}" for i in range(len(names))], axis=1)


def read_table(config: DataConfig) -> Table:
    """The recipe's data under skillops' column names; errors name the file and column."""
    frame, source, first_line = read_source(config)
    if frame.empty:
        raise data_error(source, "the file has data rows", "the file has a header but no rows: add data rows")
    columns = {}
    for name in SHAPE_COLUMNS[config.shape]:
        if name == "negatives":
            continue
        column = config.column(name)
        if column not in frame.columns:
            raise _missing_column(source, frame, name, column)
        columns[name] = frame[column].reset_index(drop=True)
    renamed = pd.DataFrame(columns)
    if config.shape == "triplets":
        renamed = pd.concat([renamed, _negative_columns(config, frame, source).reset_index(drop=True)], axis=1)
    if SLICE_COLUMN in config.columns:
        column = config.column(SLICE_COLUMN)
        if column not in frame.columns:
            raise _missing_column(source, frame, SLICE_COLUMN, column)
        renamed[SLICE_COLUMN] = frame[column].fillna("").astype(str).str.strip().reset_index(drop=True)
    if config.shape == "scored_pairs":
        # Text such as "high" becomes NaN here and is reported by the suite's not-null rule.
        renamed["score"] = pd.to_numeric(renamed["score"], errors="coerce").astype(float)
    return Table(renamed, source, first_line)


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    """Write a table in the format its suffix names, the way `read_source` reads it back."""
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        raise ValueError(f"{path}: write .csv, .jsonl or .parquet")
    return path


def text_columns(frame: pd.DataFrame) -> list[str]:
    """The columns a model reads (not scores, not slice labels)."""
    return [column for column in frame.columns if column not in ("score", SLICE_COLUMN)]
