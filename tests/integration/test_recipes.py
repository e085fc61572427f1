"""Table recipes read every file format the same way and refuse bad columns, scores and hub names
with the file, the column and the fix; prompts a base model was not trained with are warned about."""

import pandas as pd
import pytest

from helpers import REPO
from skillops.config import parse_recipe
from skillops.errors import DataError
from skillops.inputs.tables import read_table, write_table
from skillops.inputs.validation import validate_recipe_data


def _table_recipe(path, shape="pairs", **data):
    evaluation = (
        {"evaluator": "embedding_similarity", "primary_metric": "spearman_cosine"} if shape == "scored_pairs" else {}
    )
    loss = {"name": "cosine_similarity"} if shape == "scored_pairs" else {}
    return parse_recipe(
        {
            "name": "x",
            "data": {"format": "table", "path": str(path), "shape": shape, **data},
            "evaluation": evaluation,
            "loss": loss,
        },
        source="test",
    )


def test_misnamed_column_names_file_column_and_mapping(tmp_path):
    path = tmp_path / "pairs.csv"
    pd.DataFrame({"query": ["a", "b"], "passage": ["c", "d"]}).to_csv(path, index=False)
    with pytest.raises(
        DataError,
        match=r"pairs.csv: column .anchor.: rule .column .anchor. is present. failed.*file has \[.query., .passage.\].*data.columns.anchor",
    ):
        read_table(_table_recipe(path).data)
    frame = read_table(_table_recipe(path, columns={"anchor": "query", "positive": "passage"}).data).frame
    assert list(frame.columns) == ["anchor", "positive"]


def test_scores_outside_zero_one_are_refused_for_the_cosine_loss(tmp_path):
    path = tmp_path / "scored.csv"
    pd.DataFrame({"sentence1": ["a", "b", "c"], "sentence2": ["d", "e", "f"], "score": [0.5, 1.7, None]}).to_csv(
        path, index=False
    )
    report = validate_recipe_data(_table_recipe(path, shape="scored_pairs"))
    described = " ".join(failure.describe() for failure in report.failures)
    assert "scored.csv: column 'score': rule 'score is between 0 and 1'" in described and "lines [3]" in described
    assert "rule 'score is a number'" in described and "lines [4]" in described


def test_prompts_on_a_model_trained_without_them_warn(tiny_bert):
    recipe = parse_recipe(
        {
            "name": "x",
            "base_model": str(tiny_bert),
            "data": {"path": str(REPO / "src/skillops/data/esco-ict")},
            "prompts": {"query": "query: ", "document": "passage: "},
        },
        source="test",
    )
    report = validate_recipe_data(recipe)
    assert report.success  # a warning, not an error
    assert (
        len(report.warnings) == 1 and "was not trained with the prompts ['query: ', 'passage: ']" in report.warnings[0]
    )
    plain = recipe.model_copy(update={"prompts": type(recipe.prompts)()})
    assert validate_recipe_data(plain).warnings == []


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet", "dataset"])
def test_every_table_format_reads_the_same(tmp_path, suffix):
    frame = pd.DataFrame({"q": ["a", "b"], "p": ["c", "d"], "n1": ["e", "f"], "n2": ["g", "h"]})
    if suffix == "dataset":
        from datasets import Dataset

        path = tmp_path / "saved"
        Dataset.from_pandas(frame).save_to_disk(str(path))
    else:
        path = write_table(frame, tmp_path / f"data{suffix}")
    recipe = _table_recipe(path, shape="triplets", columns={"anchor": "q", "positive": "p", "negatives": ["n1", "n2"]})
    read = read_table(recipe.data).frame
    assert read.to_dict(orient="list") == {
        "anchor": ["a", "b"],
        "positive": ["c", "d"],
        "negative_1": ["e", "f"],
        "negative_2": ["g", "h"],
    }


def test_negatives_as_one_list_column(tmp_path):
    path = write_table(
        pd.DataFrame({"anchor": ["a", "b"], "positive": ["c", "d"], "negatives": [["e", "g"], ["f", "h"]]}),
        tmp_path / "t.jsonl",
    )
    frame = read_table(_table_recipe(path, shape="triplets", columns={"negatives": "negatives"}).data).frame
    assert frame.negative_2.tolist() == ["g", "h"]


def test_hub_name_offline_says_what_was_tried(tmp_path):
    with pytest.raises(DataError, match="not a file or folder here.*Hugging Face dataset failed"):
        read_table(_table_recipe("someone/esco-pairs").data)
