"""The corpus of bad inputs the tests feed to skillops: each case builds a recipe's data (and
golden) sections on a copy of the ESCO fixture and lists the strings its error must contain."""

import shutil
from pathlib import Path

import mlflow
import pandas as pd
import yaml

from helpers import BUNDLED_ESCO, edit_csv, set_cell

MODEL_NAME = "bad-inputs"


def good_pairs() -> pd.DataFrame:
    """Real ESCO text: 24 occupations with 3 of their skills each."""
    occupations = pd.read_csv(BUNDLED_ESCO / "occupations_en.csv", dtype=str, keep_default_na=False).head(24)
    skills = pd.read_csv(BUNDLED_ESCO / "skills_en.csv", dtype=str, keep_default_na=False).set_index("conceptUri")
    relations = pd.read_csv(BUNDLED_ESCO / "occupationSkillRelations_en.csv", dtype=str, keep_default_na=False)
    rows = []
    for uri, label in occupations[["conceptUri", "preferredLabel"]].itertuples(index=False):
        for skill in relations[relations.occupationUri == uri].skillUri.head(3):
            rows.append({"anchor": label, "positive": skills.loc[skill, "preferredLabel"]})
    return pd.DataFrame(rows)


def scored(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.rename(columns={"anchor": "sentence1", "positive": "sentence2"}).assign(score=0.5)


def _csv(tmp: Path, frame: pd.DataFrame, name="pairs.csv") -> Path:
    frame.to_csv(tmp / name, index=False)
    return tmp / name


def _with_row(frame: pd.DataFrame, row: int, column: str, value) -> pd.DataFrame:
    frame = frame.copy()
    frame[column] = frame[column].astype(object)
    frame.loc[row, column] = value
    return frame


def _table(path: Path, shape="pairs", **data) -> dict:
    return {"format": "table", "path": str(path), "shape": shape, **data}


def _golden(tmp: Path, esco: Path, frame: pd.DataFrame) -> dict:
    """The ESCO fixture as training data, and `frame` as its golden set named 'hand-checked'."""
    return {
        "data": {"path": str(esco)},
        "evaluation": {"golden": [{"name": "hand-checked", "path": str(_csv(tmp, frame, "golden.csv"))}]},
    }


def _training_anchors(esco: Path) -> pd.DataFrame:
    """Golden rows whose queries are the fixture's own occupation anchors, as training writes them."""
    from skillops.inputs.esco import occupation_anchor

    occupations = pd.read_csv(esco / "occupations_en.csv", dtype=str, keep_default_na=False)
    anchors = [occupation_anchor(row.preferredLabel, row.altLabels, None) for row in occupations.itertuples()]
    skills = pd.read_csv(esco / "skills_en.csv", dtype=str, keep_default_na=False).preferredLabel
    return pd.DataFrame({"anchor": anchors, "positive": skills[: len(anchors)].tolist()})


# name -> (build(tmp, esco_dir) -> the recipe's data section, or its data and evaluation
# sections; strings the error must contain)
CASES = {
    "missing column": (
        lambda tmp, esco: _table(_csv(tmp, good_pairs().drop(columns="positive"))),
        ["pairs.csv", "column 'positive'", "rule 'column 'positive' is present'"],
    ),
    "misnamed column in the recipe": (
        lambda tmp, esco: _table(_csv(tmp, good_pairs()), columns={"anchor": "title"}),
        ["pairs.csv", "column 'title'", "data.columns.anchor"],
    ),
    "wrong delimiter": (
        lambda tmp, esco: _table((tmp / "pairs.csv", good_pairs().to_csv(tmp / "pairs.csv", sep=";", index=False))[0]),
        ["pairs.csv", "column 'anchor'", "rule 'column 'anchor' is present'", "another delimiter"],
    ),
    "non-UTF-8 bytes": (
        lambda tmp, esco: _table(
            (
                tmp / "pairs.csv",
                (tmp / "pairs.csv").write_bytes("anchor,positive\nd\xe9veloppeur,Java\n".encode("latin-1")),
            )[0]
        ),
        ["pairs.csv", "rule 'file is UTF-8 text'"],
    ),
    "empty file": (
        lambda tmp, esco: _table((tmp / "pairs.csv", (tmp / "pairs.csv").write_text(""))[0]),
        ["pairs.csv", "rule 'file has a header row'"],
    ),
    "header only": (
        lambda tmp, esco: _table(_csv(tmp, good_pairs().head(0))),
        ["pairs.csv", "rule 'the file has data rows'"],
    ),
    "NaN score": (
        lambda tmp, esco: _table(
            _csv(tmp, _with_row(scored(good_pairs()), 4, "score", None), "scored.csv"), "scored_pairs"
        ),
        ["scored.csv", "column 'score'", "rule 'score is a number'", "lines [6]"],
    ),
    "score 1.7": (
        lambda tmp, esco: _table(
            _csv(tmp, _with_row(scored(good_pairs()), 2, "score", 1.7), "scored.csv"), "scored_pairs"
        ),
        ["scored.csv", "column 'score'", "rule 'score is between 0 and 1'", "lines [4]"],
    ),
    "score as text": (
        lambda tmp, esco: _table(
            _csv(tmp, _with_row(scored(good_pairs()), 0, "score", "high"), "scored.csv"), "scored_pairs"
        ),
        ["scored.csv", "column 'score'", "rule 'score is a number'"],
    ),
    "duplicate concept ids": (
        lambda tmp, esco: (edit_csv(esco / "skills_en.csv", lambda f: pd.concat([f, f.head(1)])), {"path": str(esco)})[
            1
        ],
        ["skills_en.csv", "column 'conceptUri'", "rule 'identifier is unique'"],
    ),
    "relation to a missing skill": (
        lambda tmp, esco: (
            set_cell(esco / "occupationSkillRelations_en.csv", 0, "skillUri", "http://x/skill/gone"),
            {"path": str(esco)},
        )[1],
        ["occupationSkillRelations_en.csv", "column 'skillUri'", "rule 'skill exists in the skills file'"],
    ),
    "relation to a missing occupation": (
        lambda tmp, esco: (
            set_cell(esco / "occupationSkillRelations_en.csv", 0, "occupationUri", "http://x/occ/gone"),
            {"path": str(esco)},
        )[1],
        [
            "occupationSkillRelations_en.csv",
            "column 'occupationUri'",
            "rule 'occupation exists in the occupations file'",
        ],
    ),
    "ESCO file missing": (
        lambda tmp, esco: ((esco / "skills_en.csv").unlink(), {"path": str(esco)})[1],
        ["skills_en.csv", "rule 'file exists'"],
    ),
    "ESCO column renamed": (
        lambda tmp, esco: (
            edit_csv(esco / "occupations_en.csv", lambda f: f.rename(columns={"preferredLabel": "label"})),
            {"path": str(esco)},
        )[1],
        ["occupations_en.csv", "column 'preferredLabel'", "rule 'column 'preferredLabel' is present'"],
    ),
    "train/eval leakage": (
        lambda tmp, esco: _table(
            _csv(
                tmp,
                pd.concat(
                    [
                        good_pairs(),
                        good_pairs().assign(
                            anchor=lambda f: f.anchor.str.upper(), positive=lambda f: f.positive + " (variant)"
                        ),
                    ],
                    ignore_index=True,
                ),
            )
        ),
        ["train.parquet", "column 'anchor'", "query is also a training anchor"],
    ),
    "anchor equals positive": (
        lambda tmp, esco: _table(_csv(tmp, _with_row(good_pairs(), 3, "positive", good_pairs().anchor[3]))),
        ["pairs.csv", "column 'anchor, positive'", "rule 'anchor differs from positive'", "lines [5]"],
    ),
    "whitespace-only text": (
        lambda tmp, esco: _table(_csv(tmp, _with_row(good_pairs(), 1, "anchor", "   "))),
        ["pairs.csv", "column 'anchor'", "rule 'text is not empty or whitespace only'", "lines [3]"],
    ),
    "a 1 MB cell": (
        lambda tmp, esco: _table(_csv(tmp, _with_row(good_pairs(), 7, "positive", "x" * 1_000_000))),
        ["pairs.csv", "column 'positive'", "rule 'text is at most 20,000 characters'", "lines [9]"],
    ),
    "JSONL line that is not JSON": (
        lambda tmp, esco: _table(
            (
                tmp / "pairs.jsonl",
                (tmp / "pairs.jsonl").write_text('{"anchor": "a", "positive": "b"}\n{"anchor": "c", "positive": \n'),
            )[0]
        ),
        ["pairs.jsonl", "rule 'each line is one JSON object'", "line 2 is not JSON"],
    ),
    "Parquet column of the wrong type": (
        lambda tmp, esco: _table(
            (
                tmp / "pairs.parquet",
                good_pairs().assign(anchor=range(len(good_pairs()))).to_parquet(tmp / "pairs.parquet"),
            )[0]
        ),
        ["pairs.parquet", "column 'anchor'", "rule 'value is text'", "rows [0, 1, 2, 3, 4]"],
    ),
    "duplicate pairs": (
        lambda tmp, esco: _table(_csv(tmp, pd.concat([good_pairs(), good_pairs().head(2)], ignore_index=True))),
        ["pairs.csv", "column 'anchor, positive'", "rule 'each (anchor, positive) pair appears once'"],
    ),
    "duplicates after normalising": (
        lambda tmp, esco: _table(
            _csv(
                tmp,
                pd.concat(
                    [good_pairs(), good_pairs().head(1).assign(positive=lambda f: "  " + f.positive.str.upper())],
                    ignore_index=True,
                ),
            )
        ),
        [
            "pairs.csv",
            "column 'anchor, positive'",
            "rule 'rows are unique after normalising case, spacing and Unicode'",
        ],
    ),
    "positive listed as a negative": (
        lambda tmp, esco: _table(
            _csv(
                tmp,
                good_pairs()
                .assign(negative_1=lambda f: f.positive.shift(1, fill_value="x"))
                .pipe(lambda f: _with_row(f, 5, "negative_1", f.positive[5])),
                "triplets.csv",
            ),
            "triplets",
        ),
        [
            "triplets.csv",
            "column 'positive, negative_1'",
            "rule 'a row's positive is not also one of its negatives'",
            "lines [7]",
        ],
    ),
    "uneven negative lists": (
        lambda tmp, esco: _table(
            (
                tmp / "t.jsonl",
                good_pairs()
                .assign(negatives=[["a", "b"]] * 71 + [["a"]])
                .to_json(tmp / "t.jsonl", orient="records", lines=True),
            )[0],
            "triplets",
            columns={"negatives": "negatives"},
        ),
        ["t.jsonl", "column 'negatives'", "rule 'every row has the same number of negatives'"],
    ),
    "unknown file type": (
        lambda tmp, esco: _table((tmp / "pairs.xlsx", (tmp / "pairs.xlsx").write_bytes(b"PK\x03\x04"))[0]),
        ["pairs.xlsx", "rule 'known file type'"],
    ),
    "golden file missing a column": (
        lambda tmp, esco: _golden(tmp, esco, good_pairs().drop(columns="positive")),
        ["golden.csv", "column 'positive'", "rule 'column 'positive' is present'"],
    ),
    "golden query with no relevant document": (
        lambda tmp, esco: _golden(tmp, esco, _with_row(good_pairs(), 2, "positive", " ")),
        ["golden.csv", "column 'positive'", "rule 'text is not empty or whitespace only'", "lines [4]"],
    ),
    "golden query also in training": (
        lambda tmp, esco: _golden(tmp, esco, _training_anchors(esco)),
        [
            "golden.csv (golden set 'hand-checked')",
            "column 'anchor'",
            "rule 'no golden-hand-checked query is also a training anchor'",
        ],
    ),
}


def bad_recipe(case: str, tmp_path: Path, esco_source: Path, tiny_bert: Path) -> Path:
    """The recipe file of one case: the case's data (and golden) sections on a copy of the ESCO fixture."""
    build, _ = CASES[case]
    esco = Path(shutil.copytree(esco_source, tmp_path / "esco"))
    sections = build(tmp_path, esco)
    sections = sections if "data" in sections else {"data": sections}
    recipe = {
        "name": MODEL_NAME,
        "base_model": str(tiny_bert),
        "registered_model_name": MODEL_NAME,
        "training": {"max_seq_length": 64},
        "search": {"n_trials": 0},
        **sections,
    }
    if sections["data"].get("shape") == "scored_pairs":
        recipe |= {
            "loss": {"name": "cosine_similarity"},
            "evaluation": {"evaluator": "embedding_similarity", "primary_metric": "spearman_cosine"},
        }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def assert_refused(message: str, case: str, store: Path) -> None:
    """The message names what the case expects; no version was made; the champion stayed; nothing trained."""
    for part in CASES[case][1]:
        assert part in message, f"{case}: {part!r} not in {message}"
    client = mlflow.MlflowClient()
    assert [str(v.version) for v in client.search_model_versions(f"name = '{MODEL_NAME}-candidates'")] == ["1"]
    assert str(client.get_registered_model(MODEL_NAME).aliases["champion"]) == "1"
    assert not (store / "outputs" / "attempts").exists()  # no tuning, no training
