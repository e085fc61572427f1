"""Every built-in recipe end to end through the train-esco flow, on a tiny random model of its card's
architecture, with the recipe's own loss, prompts and evaluator."""

import mlflow
import pandas as pd
import pytest
import yaml

from skillops.config import builtin_recipes, load_recipe
from skillops.inputs.tables import write_table
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
    # The batches it took and the steps an epoch of them is, as the trainer counted them.
    assert run["params.batches"] == ("taxonomy-aware" if recipe.loss.in_batch_negatives else "length-grouped")
    assert int(run["params.steps_per_epoch"]) >= 1
    primary = recipe.evaluation.primary_metric
    for model in ("base", "test"):
        assert set(recipe.evaluation.metric_names()) <= {
            c.removeprefix(f"metrics.{model}_") for c in runs.columns if c.startswith(f"metrics.{model}_")
        }
        assert -1 <= run[f"metrics.{model}_{primary}"] <= 1  # correlations can be negative
    assert len(runs) == 2  # the pipeline run and its one tuning trial
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{recipe.registered_model_name}-candidates'")
    assert [str(v.version) for v in versions] == ["1"]
    assert versions[0].tags["skillops.decision"] in {"promoted", "not promoted"}

    prepared = pd.read_parquet(mlflow_store.parent / "outputs" / result["run_id"] / "data" / "train.parquet")
    if recipe.data.mine_negatives:  # cards 000 and 001: pairs in, (anchor, positive, negatives) out
        mined = [f"negative_{k + 1}" for k in range(recipe.data.mine_negatives.num_negatives)]
        assert [c for c in prepared.columns if c.startswith("negative_")] == mined
    if recipe.training.rounds > 1:
        history = mlflow.MlflowClient().get_metric_history(result["run_id"], f"round_validation_{primary}")
        assert [m.step for m in history] == [1, 2]
    if recipe.prompts:
        from skillops.tracking.registry import load

        served = load(f"models:/{recipe.registered_model_name}-candidates/1")
        assert served.prompts["query"] == recipe.prompts.query
