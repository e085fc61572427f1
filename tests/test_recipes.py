"""Every built-in recipe end to end through the train-esco flow, on a tiny random model of its card's
architecture, with the recipe's own loss, prompts and evaluator; and bad recipes stopped early."""

import mlflow
import pandas as pd
import pytest
import yaml

from helpers import REPO
from skillops.config import builtin_recipes, load_recipe, parse_recipe
from skillops.errors import DataError
from skillops.tables import read_table, write_table
from skillops.validation import DataValidationError, validate_recipe_data
from train_esco import train_esco

# recipe -> (architecture of its card's base model, rows of the bundled sample to keep)
CARDS = {
    "esco-occupation-skills": ("xlm-roberta", None),
    "course-skill-retrieval": ("xlm-roberta", 160),
    "resume-job-similarity": ("mpnet", 200),
    "term-retrieval": ("xlm-roberta", 160),
    "job-skills": ("bert", 320),
}


def _small_copy(recipe_name: str, tmp_path, small_esco, model_dir, rows) -> dict:
    """The built-in recipe, unchanged except: tiny model, the first rows of its sample, few steps."""
    data = yaml.safe_load(builtin_recipes()[recipe_name].read_text())
    data["base_model"] = str(model_dir)
    if rows is None:
        data["data"]["path"] = str(small_esco)
        data["data"]["eval_negatives"] = 20
        data["training"]["rounds"] = 2  # card 000's continued training, each round scored
    else:
        source = load_recipe(recipe_name).data.location
        frame = {".csv": pd.read_csv, ".jsonl": lambda p: pd.read_json(p, lines=True), ".parquet": pd.read_parquet}[
            source.suffix
        ](source)
        data["data"]["path"] = str(write_table(frame.head(rows), tmp_path / source.name))
    if data["data"].get("mine_negatives"):
        # A random model scores every text alike, so no negative would clear the card's margin.
        data["data"]["mine_negatives"]["relative_margin"] = None
    data["training"].update(max_steps=3, max_seq_length=64)
    data["search"].update(n_trials=1, epochs=0.1, evals_per_trial=1)
    return data


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("recipe_name", list(CARDS))
def test_builtin_recipe_runs_end_to_end(recipe_name, tiny_models, small_esco, mlflow_store, tmp_path):
    architecture, rows = CARDS[recipe_name]
    model_dir = tiny_models(architecture)
    data = _small_copy(recipe_name, tmp_path, small_esco, model_dir, rows)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    recipe = load_recipe(path)

    result = train_esco(recipe=str(path))

    runs = mlflow.search_runs(experiment_names=[recipe.name])
    run = runs[runs.run_id == result["run_id"]].iloc[0]
    assert run.status == "FINISHED"
    assert run["params.loss.name"] == recipe.loss.name
    assert run["params.data.shape"] == recipe.data.training_shape
    primary = recipe.evaluation.primary_metric
    for model in ("base", "test"):
        assert set(recipe.evaluation.metric_names()) <= {
            c.removeprefix(f"metrics.{model}_") for c in runs.columns if c.startswith(f"metrics.{model}_")
        }
        assert -1 <= run[f"metrics.{model}_{primary}"] <= 1  # correlations can be negative
    assert len(runs) == 2  # the pipeline run and its one tuning trial
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{recipe.registered_model_name}'")
    assert [str(v.version) for v in versions] == ["1"]
    assert versions[0].tags["skillops.decision"] in {"promoted", "not promoted"}

    prepared = pd.read_parquet(mlflow_store.parent / "outputs" / result["run_id"] / "data" / "train.parquet")
    if recipe.data.mine_negatives:  # card 001: pairs in, (anchor, positive, 3 negatives) out
        assert [c for c in prepared.columns if c.startswith("negative_")] == ["negative_1", "negative_2", "negative_3"]
    if recipe.training.rounds > 1:
        history = mlflow.MlflowClient().get_metric_history(result["run_id"], f"round_validation_{primary}")
        assert [m.step for m in history] == [1, 2]
    if recipe.prompts:
        from skillops.registry import load

        served = load(f"models:/{recipe.registered_model_name}/1")
        assert served.prompts["query"] == recipe.prompts.query


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


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_bad_data_in_a_table_recipe_stops_the_flow_before_training(tiny_bert, mlflow_store, tmp_path):
    path = tmp_path / "scored.csv"
    pd.DataFrame({"sentence1": [f"a{i}" for i in range(20)], "sentence2": ["b"] * 20, "score": [1.7] * 20}).to_csv(
        path, index=False
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "name": "bad-scores",
                "base_model": str(tiny_bert),
                "registered_model_name": "bad-scores",
                "data": {"format": "table", "path": str(path), "shape": "scored_pairs"},
                "loss": {"name": "cosine_similarity"},
                "evaluation": {"evaluator": "embedding_similarity", "primary_metric": "spearman_cosine"},
            }
        )
    )
    with pytest.raises(DataValidationError, match="score is between 0 and 1"):
        train_esco(recipe=str(recipe))
    assert mlflow.MlflowClient().search_model_versions("name = 'bad-scores'") == []
    assert list(mlflow.search_runs(experiment_names=["bad-scores"]).status) == ["FAILED"]
