"""Recipes are validated before any compute, with messages that say what to change."""

import pytest

from skillops.config import Recipe, builtin_recipes, load_recipe, parse_overrides, parse_recipe
from skillops.errors import RecipeError


def test_builtin_recipe_matches_card_000_and_is_judged_on_the_whole_vocabulary():
    recipe = load_recipe("esco-occupation-skills")
    assert "esco-occupation-skills" in builtin_recipes()
    assert recipe.loss.name == "mnrl" and recipe.loss.scale == 20.0
    # Every held-out occupation ranks every skill (as WorkRB does); the card's short list beside it.
    assert recipe.evaluation.evaluator == "information_retrieval"
    assert recipe.evaluation.primary_metric == "cosine_map"
    assert recipe.evaluation.short_list_negatives == 100
    assert recipe.evaluation.reported_metrics()[:2] == ["cosine_map", "cosine_short_list_map"]


def _table(**sections) -> dict:
    """A table recipe with some sections changed."""
    base = {"name": "x", "data": {"format": "table", "path": "pairs.csv"}}
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base


# Every bad recipe, in one table: each is refused before any data is read, naming the field.
BAD_RECIPES = [
    ({"name": "x", "training": {"learning_rte": 1e-5}}, "training.learning_rte"),
    (
        {"name": "x", "evaluation": {"short_list_negatives": 100}},
        "evaluation.short_list_negatives is for the information_retrieval evaluator",
    ),
    (
        {"name": "x", "evaluation": {"primary_metric": "ndcg@100"}},
        "choose one of ['map', 'mrr_at_100', 'ndcg_at_100']",
    ),
    ({"name": "x", "training": {"batch_size": 1}}, "training.batch_size"),
    ({"name": "x", "search": {"learning_rate": [1e-3, 1e-5]}}, "give it as [low, high]"),
    ({"name": "x", "data": {"split": {"validation": 0.5, "test": 0.45}}}, "leaves under 10%"),
    (
        _table(loss={"name": "triplet_margin"}),
        "loss.name: Input should be 'mnrl', 'cached_mnrl' or 'cosine_similarity'",
    ),
    (
        _table(
            data={"shape": "scored_pairs"},
            evaluation={"evaluator": "embedding_similarity", "primary_metric": "spearman_cosine"},
        ),
        "loss.name = 'mnrl' cannot train on scored_pairs data",
    ),
    (_table(loss={"name": "cosine_similarity"}), "use one of ['mnrl', 'cached_mnrl'] for this data"),
    (
        _table(evaluation={"evaluator": "information_retrieval", "primary_metric": "ndcg@10"}),
        "choose one of ['cosine_map', 'cosine_r_precision', 'cosine_accuracy_at_1'",
    ),
    (
        _table(evaluation={"evaluator": "embedding_similarity", "primary_metric": "spearman_cosine"}),
        "cannot score pairs data",
    ),
    (_table(data={"columns": {"query": "q"}}), "map these instead: ['anchor', 'positive']"),
    (_table(data={"shape": "triplets", "mine_negatives": {}}), "data.mine_negatives needs pairs data"),
]


@pytest.mark.parametrize(("data", "message"), BAD_RECIPES)
def test_bad_recipes_say_what_to_fix(data, message):
    with pytest.raises(RecipeError, match="not valid") as error:
        parse_recipe(data, source="test.yaml")
    assert message in str(error.value)


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(RecipeError, match="esco-occupation-skills"):
        load_recipe("no-such-recipe")


def test_overrides_are_validated_like_the_file():
    recipe = Recipe(name="x").with_overrides({"training.epochs": 2, "search.n_trials": 0})
    assert recipe.training.epochs == 2 and recipe.search.n_trials == 0
    with pytest.raises(RecipeError, match="no field 'epoch'"):
        Recipe(name="x").with_overrides({"training.epoch": 2})
    with pytest.raises(RecipeError, match="training.learning_rate"):
        Recipe(name="x").with_overrides({"training.learning_rate": -1})


def test_set_overrides_from_a_shell_keep_their_types():
    overrides = parse_overrides(["training.epochs=1", "search.n_trials=0", "promotion.significance_level=null"])
    assert overrides == {"training.epochs": 1, "search.n_trials": 0, "promotion.significance_level": None}
    recipe = load_recipe("esco-occupation-skills").with_overrides(overrides)
    assert recipe.training.epochs == 1 and recipe.promotion.significance_level is None
    with pytest.raises(RecipeError, match="FIELD=VALUE"):
        parse_overrides(["training.epochs"])


def test_a_precision_this_machine_lacks_is_refused_before_training():
    """No GPU here: auto trains in fp32; bf16 or fp16 asked for is a clear error naming the setting."""
    from skillops.errors import RecipeError
    from skillops.training.modeling import mixed_precision

    assert mixed_precision("auto") == mixed_precision("fp32") == {"bf16": False, "fp16": False}
    for wanted in ("bf16", "fp16"):
        with pytest.raises(RecipeError, match=f"training.precision = {wanted}.*use auto"):
            mixed_precision(wanted)
