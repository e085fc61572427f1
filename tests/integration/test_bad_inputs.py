"""Every case of the bad-input corpus (`tests/bad_inputs.py`) through the stages that come before
training (start, validate, prepare) against a real MLflow store that already has a champion: each
is refused with a message that names the file, the column (where there is one) and the rule;
nothing reaches tuning or training, no model version is created, the champion stays.
`tests/flows/test_bad_inputs_flow.py` sends a few of them through the whole flow."""

import pytest

from bad_inputs import CASES, assert_refused, bad_recipe
from skillops import stages
from skillops.config import load_recipe
from skillops.errors import DataError
from skillops.inputs.validation import require


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_before_training(case, store_with_champion, small_esco, tiny_bert, tmp_path):
    """What the flow does before tuning, stage by stage: a rule that fails stops the run there."""
    recipe = load_recipe(bad_recipe(case, tmp_path, small_esco, tiny_bert))
    with pytest.raises(DataError) as error:
        run = stages.start(recipe, stages.fingerprint(recipe))
        require(stages.validate_data(run))
        stages.prepare_data(run)
    assert_refused(str(error.value), case, store_with_champion)


def test_every_bundled_sample_and_recipe_passes_without_false_alarm(capsys):
    from skillops.cli import main
    from skillops.config import builtin_recipes

    for name in builtin_recipes():
        assert main(["validate", name]) == 0, capsys.readouterr().out
        out = capsys.readouterr().out
        assert "rule(s) failed" not in out, out


def test_an_artifact_store_that_takes_no_file_stops_the_run_at_start(
    store_with_champion, small_esco, tiny_bert, tmp_path, monkeypatch
):
    """A bad setting, not bad data: the run's artifact store is where its checkpoints go, so one
    that takes no file is named at the start, with the setting to change, and the run closes FAILED."""
    import mlflow

    from helpers import tiny_recipe_yaml
    from skillops.errors import RecipeError

    (tmp_path / "a-file").write_text("")  # where the store's folder would have to be: nothing goes under it
    monkeypatch.setenv("SKILLOPS_ARTIFACT_ROOT", str(tmp_path / "a-file" / "store"))
    recipe = load_recipe(tiny_recipe_yaml(tmp_path / "recipe.yaml", small_esco, tiny_bert, name="no-store"))
    with pytest.raises(RecipeError, match="did not take a file") as error:
        stages.start(recipe, stages.fingerprint(recipe))
    assert "SKILLOPS_ARTIFACT_ROOT" in str(error.value) and "nothing was trained" in str(error.value)
    client = mlflow.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("no-store").experiment_id])
    assert run.info.status == "FAILED"
    assert not (store_with_champion / "outputs" / "attempts").exists()
