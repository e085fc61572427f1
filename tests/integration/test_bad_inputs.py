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
from skillops.validation import require


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
