"""The ESCO loader and the occupation -> skills task: shape, anchors, and a split that never leaks."""

from pathlib import Path

import pytest

from helpers import BUNDLED_ESCO
from skillops.config import Recipe
from skillops.errors import DataError
from skillops.inputs.esco import load_esco, occupation_anchor
from skillops.inputs.preparation import build_task, split_groups
from skillops.inputs.tables import read_csv


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


def test_near_duplicates_land_together_and_nothing_else_moves():
    uris = [f"occ{i:02d}" for i in range(40)]
    plain = split_groups(uris, 0.15, 0.15, seed=7)
    part_of = {uri: part for part, keys in plain.items() for uri in keys}
    held_out, trained = plain["test"][0], plain["train"][0]
    grouped = split_groups(uris, 0.15, 0.15, seed=7, near=[(trained, held_out)])
    moved = {uri for part, keys in grouped.items() for uri in keys if part_of[uri] != part}
    assert moved == {trained} and trained in grouped["test"]


def test_a_base_model_that_sees_everything_alike_leaves_the_split_as_it_was(caplog):
    """A random or untrained base model joins every query to every other: grouping would put all
    of them in one part, so the split stays as without grouping and says why."""
    uris = [f"occ{i:02d}" for i in range(40)]
    chain = list(zip(uris, uris[1:], strict=False))
    assert split_groups(uris, 0.15, 0.15, seed=7, near=chain) == split_groups(uris, 0.15, 0.15, seed=7)
    assert "Near duplicates not kept together" in caplog.text and "train 0 of a planned 28" in caplog.text


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


def _graded_esco(folder: Path) -> Path:
    """The bundled sample with ESCO's relation types filled in, as full downloads have them:
    every occupation's first skill essential, the others optional."""
    import shutil

    import pandas as pd

    shutil.copytree(BUNDLED_ESCO, folder)
    relations = pd.read_csv(folder / "occupationSkillRelations_en.csv", dtype=str, keep_default_na=False)
    first = ~relations.duplicated("occupationUri")
    relations["relationType"] = first.map({True: "essential", False: "optional"})
    relations.to_csv(folder / "occupationSkillRelations_en.csv", index=False)
    return folder


def test_the_whole_vocabulary_is_ranked_with_essential_skills_graded_above_optional_ones(tmp_path):
    """The ESCO recipe's information retrieval: every held-out occupation ranks every skill of the
    download, its essential skills graded 2 and its optional ones left at 1 (the sample's empty
    types count as 1 too); the golden set ranks the same vocabulary; the short list is frozen."""
    recipe = Recipe(
        name="x",
        data={"path": str(_graded_esco(tmp_path / "esco"))},
        evaluation={
            "evaluator": "information_retrieval",
            "primary_metric": "cosine_map",
            "short_list_negatives": 100,
            "golden": [{"name": "descriptions", "path": "data/golden/esco-ict-descriptions.csv"}],
        },
    )
    task = build_task(recipe)
    test, golden = task.eval_sets["test"], task.eval_sets["golden-descriptions"]
    assert len(test["corpus"]) == len(set(load_esco(BUNDLED_ESCO)["skills"].preferredLabel.str.strip())) == 1278
    assert set(golden["corpus"].values()) == set(test["corpus"].values())
    for query, relevant in test["relevant_docs"].items():
        assert sorted(test["relevance"][query].values()) == [2]  # one essential skill, graded 2
        assert set(test["relevance"][query]) <= set(relevant)
        assert len(test["short_list"][query]) == 100 and not set(test["short_list"][query]) & set(relevant)
    assert build_task(recipe).eval_sets["test"] == test  # frozen: the same draw every time
    ungraded = build_task(
        recipe.model_copy(update={"data": recipe.data.model_copy(update={"path": str(BUNDLED_ESCO)})})
    )
    assert "relevance" not in ungraded.eval_sets["test"]  # empty relation types: every skill counts 1
