"""Great Expectations suites on ESCO files: the bundled sample passes, broken files fail clearly."""

from pathlib import Path

import pandas as pd
import pytest

from helpers import BUNDLED_ESCO, edit_csv, set_cell
from skillops.errors import DataValidationError
from skillops.inputs.validation import require, validate_esco


def test_bundled_sample_passes_every_suite():
    report = validate_esco(BUNDLED_ESCO)
    assert report.success, report.markdown()
    assert set(report.checked.values()) == {91, 1278, 1932}


def _rejected(esco_dir: Path) -> str:
    with pytest.raises(DataValidationError) as error:
        require(validate_esco(esco_dir))
    return str(error.value)


def test_whitespace_label_names_file_column_rule_and_line(esco_copy):
    set_cell(esco_copy / "skills_en.csv", 1, "preferredLabel", "   ")
    message = _rejected(esco_copy)
    assert "skills_en.csv: column 'preferredLabel'" in message
    assert "text is not empty or whitespace only" in message
    assert "lines [3]" in message  # header is line 1, the second data row line 3
    assert "nothing was trained" in message


def test_missing_column_is_reported_once_with_the_fix(esco_copy):
    edit_csv(esco_copy / "occupations_en.csv", lambda f: f.rename(columns={"preferredLabel": "label"}))
    message = _rejected(esco_copy)
    assert "occupations_en.csv: column 'preferredLabel': rule 'column 'preferredLabel' is present'" in message
    assert message.count("preferredLabel") == 3  # the rule, the column and the fix; no cascade


def test_relation_to_missing_skill(esco_copy):
    set_cell(
        esco_copy / "occupationSkillRelations_en.csv", 0, "skillUri", "http://data.europa.eu/esco/skill/does-not-exist"
    )
    message = _rejected(esco_copy)
    assert "occupationSkillRelations_en.csv: column 'skillUri': rule 'skill exists in the skills file'" in message
    assert "does-not-exist" in message


def test_duplicate_ids_and_duplicate_relations(esco_copy):
    edit_csv(esco_copy / "skills_en.csv", lambda f: pd.concat([f, f.head(1)]))
    edit_csv(esco_copy / "occupationSkillRelations_en.csv", lambda f: pd.concat([f, f.head(2)]))
    message = _rejected(esco_copy)
    assert "skills_en.csv: column 'conceptUri': rule 'identifier is unique'" in message
    assert "column 'occupationUri, skillUri': rule 'each (occupation, skill) relation appears once'" in message


def test_near_duplicates_across_the_split_of_the_bundled_sample(tmp_path):
    """Two ESCO occupations that share an alternative label ("DLT specialist"): no exact check sees
    it, the base model's embeddings do. The default split keeps them on one side; a split made
    without the base model (the check off) parts them, and the check then warns by default and
    fails when the recipe says so."""
    from skillops.config import load_recipe
    from skillops.inputs import preparation
    from skillops.inputs.esco import load_esco
    from skillops.inputs.validation import validate_prepared

    # As `skillops validate` checks it: the split and the frozen sets, mining left to the pipeline.
    recipe = load_recipe("esco-occupation-skills").with_overrides({"data.mine_negatives": None})
    grouped = preparation.build_task(recipe)
    part_of = {uri: part for part, uris in grouped.split.items() for uri in uris}
    occupations = load_esco(recipe.data.location)["occupations"]
    blockchain = occupations[occupations.preferredLabel.str.startswith("blockchain")].conceptUri
    assert len(blockchain) == 2 and len({part_of[uri] for uri in blockchain}) == 1
    report = validate_prepared(grouped, recipe, preparation.write_task(grouped, tmp_path / "grouped", {}))
    assert report.success and not [w for w in report.warnings if "near duplicate" in w], report.warnings

    task = preparation.build_task(recipe.with_overrides({"validation.near_duplicates": "off"}))
    paths = preparation.write_task(task, tmp_path / "parted", {})
    report = validate_prepared(task, recipe, paths)
    assert report.success, report.markdown()
    (warning,) = [w for w in report.warnings if "near duplicate" in w]
    assert "rule 'no test query is a near duplicate of a training anchor (cosine >= 0.9)'" in warning
    assert "for 1 of 14 queries" in warning and "'blockchain developer DLT specialist" in warning
    assert "~ 'blockchain architect DLT specialist" in warning

    strict = recipe.with_overrides({"validation.near_duplicates": "error"})
    assert not validate_prepared(task, strict, paths).success
