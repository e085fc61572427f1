"""The ESCO loader and the occupation -> skills task: shape, anchors, and a split that never leaks."""

from pathlib import Path

import pytest

from helpers import BUNDLED_ESCO
from skillops.config import Recipe
from skillops.errors import DataError
from skillops.esco import load_esco, occupation_anchor
from skillops.preparation import build_task, split_groups
from skillops.tables import read_csv


def test_bundled_sample_loads_in_official_layout():
    tables = load_esco(BUNDLED_ESCO)
    assert len(tables["occupations"]) == 91
    assert len(tables["skills"]) == 1278
    assert len(tables["relations"]) == 1932
    # altLabels hold several labels separated by newlines inside one quoted cell
    security = tables["occupations"].set_index("preferredLabel").loc["ICT security administrator"]
    assert "IT security administrator" in security.altLabels.splitlines()
    # empty cells stay empty strings, never NaN
    assert (tables["relations"].relationType == "").all()


def test_anchor_joins_preferred_then_alternative_labels():
    assert occupation_anchor("Referent", "Referentin\nReferent\n", None) == "Referent Referentin"
    assert occupation_anchor("a", "b\nc\nd", 2) == "a b c"


def test_split_is_seeded_disjoint_and_complete():
    uris = [f"occ{i}" for i in range(40)]
    split = split_groups(uris, 0.15, 0.15, seed=7)
    parts = [set(split[p]) for p in ("train", "validation", "test")]
    assert set.union(*parts) == set(uris)
    assert sum(len(p) for p in parts) == len(uris)
    assert split == split_groups(list(reversed(uris)), 0.15, 0.15, seed=7)
    assert split != split_groups(uris, 0.15, 0.15, seed=8)


def test_task_never_shows_a_held_out_occupation_to_training():
    recipe = Recipe(name="x", data={"path": str(BUNDLED_ESCO), "split": {"seed": 3}})
    task = build_task(recipe)
    train_anchors = set(task.train.anchor)
    for part in ("validation", "test"):
        assert task.eval_sets[part], part
        for sample in task.eval_sets[part]:
            assert sample["query"] not in train_anchors
            assert not set(sample["positive"]) & set(sample["negative"])
            assert len(sample["negative"]) == recipe.data.eval_negatives
    assert not task.train.duplicated().any()
    split_sets = [set(v) for v in task.split.values()]
    assert sum(len(s) for s in split_sets) == len(set.union(*split_sets))


def test_unreadable_files_name_the_file(tmp_path: Path):
    latin = tmp_path / "skills_en.csv"
    latin.write_bytes("conceptUri,preferredLabel\nx,Fran\xe7ais\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"skills_en.csv: rule .file is UTF-8 text. failed"):
        read_csv(latin)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty.csv: rule .file has a header row. failed"):
        read_csv(empty)
    with pytest.raises(DataError, match=r"missing.csv: rule .file exists. failed \(file not found\)"):
        read_csv(tmp_path / "missing.csv")


def test_too_few_occupations_to_split():
    with pytest.raises(DataError, match="too few to split"):
        split_groups(["a", "b"], 0.15, 0.15, seed=1)
