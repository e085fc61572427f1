"""The recipe: one typed config that YAML files, CLI options and Prefect parameters all parse into.

Everything is validated here, before any data is read or any model is loaded, so that a typo in a
recipe costs a second and not a training run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

BUILTIN_RECIPES_DIR = Path(__file__).parent / "recipes"


class RecipeError(ValueError):
    """A recipe that cannot be used; the message says which field and how to fix it."""


class _Strict(BaseModel):
    # Unknown keys are almost always typos ("learning_rte"); refuse them instead of ignoring.
    model_config = ConfigDict(extra="forbid")


class SplitConfig(_Strict):
    validation: float = Field(0.15, gt=0, lt=1, description="Share of occupations for tuning.")
    test: float = Field(0.15, gt=0, lt=1, description="Share of occupations for the promotion gate.")
    seed: int = 42

    @model_validator(mode="after")
    def _leave_room_for_training(self) -> SplitConfig:
        if self.validation + self.test >= 0.9:
            raise ValueError(
                f"split.validation + split.test = {self.validation + self.test:.2f} leaves under 10% "
                "of occupations for training; lower them (defaults 0.15 + 0.15)."
            )
        return self


class DataConfig(_Strict):
    format: Literal["esco"] = "esco"
    path: Path = Field(Path("data/esco-ict"), description="Folder in the official ESCO CSV layout.")
    language: str = Field("en", description="Suffix of the ESCO files: occupations_<language>.csv.")
    max_alt_labels: int | None = Field(
        None, ge=0, description="Alternative labels joined into an occupation's anchor (None: all)."
    )
    eval_negatives: int = Field(
        100, ge=1, description="Non-linked skills ranked against each held-out occupation's skills."
    )
    split: SplitConfig = SplitConfig()


class TrainingConfig(_Strict):
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(32, ge=2, description="In-batch negatives need at least 2.")
    learning_rate: float = Field(5e-5, gt=0, lt=1)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_seq_length: int = Field(128, ge=8)
    mnrl_scale: float = Field(20.0, gt=0, description="MultipleNegativesRankingLoss scale (card: 20).")
    seed: int = 42
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use epochs).")


class SearchConfig(_Strict):
    n_trials: int = Field(3, ge=0, description="0 skips tuning and trains with `training` as is.")
    learning_rate: tuple[float, float] = (1e-5, 1e-4)
    batch_sizes: list[int] = [16, 32]
    warmup_ratio: tuple[float, float] = (0.0, 0.2)
    epochs: float = Field(1.0, gt=0, description="Epochs per trial (short: trials only rank params).")
    evals_per_trial: int = Field(
        3, ge=1, description="Validation points per trial; the pruner looks at each."
    )
    seed: int = 42

    @model_validator(mode="after")
    def _ranges_are_ordered(self) -> SearchConfig:
        for name in ("learning_rate", "warmup_ratio"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"search.{name} = [{low}, {high}]: give it as [low, high].")
        if any(size < 2 for size in self.batch_sizes) or not self.batch_sizes:
            raise ValueError(
                f"search.batch_sizes = {self.batch_sizes}: give one or more sizes of at least 2."
            )
        return self


class EvaluationConfig(_Strict):
    at_k: int = Field(100, ge=1, description="Cut-off for MRR and NDCG (card 000: 100).")
    primary_metric: str = "map"
    batch_size: int = Field(64, ge=1)


class PromotionPolicy(_Strict):
    min_delta: float = Field(
        0.0,
        ge=0,
        description="How much the candidate's primary metric must exceed the champion's (or, with "
        "no champion, the base model's). 0 still requires a strict improvement.",
    )


class Recipe(_Strict):
    name: str
    description: str = ""
    base_model: str = Field(
        "sentence-transformers/all-MiniLM-L6-v2",
        description="A local path, an installed model package or a Hugging Face model id.",
    )
    registered_model_name: str = "esco-occupation-skills"
    data: DataConfig = DataConfig()
    training: TrainingConfig = TrainingConfig()
    search: SearchConfig = SearchConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    promotion: PromotionPolicy = PromotionPolicy()

    @model_validator(mode="after")
    def _primary_metric_is_reported(self) -> Recipe:
        known = reranking_metric_names(self.evaluation.at_k)
        if self.evaluation.primary_metric not in known:
            raise ValueError(
                f"evaluation.primary_metric = {self.evaluation.primary_metric!r} is not reported by "
                f"the reranking evaluator; choose one of {list(known)}."
            )
        return self

    def with_overrides(self, overrides: dict[str, Any]) -> Recipe:
        """A copy with dotted keys replaced, e.g. {"training.epochs": 2}; validated again."""
        data = self.model_dump(mode="json")
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                if not isinstance(node.get(key), dict):
                    raise RecipeError(f"Override {dotted!r}: {key!r} is not a section of a recipe.")
                node = node[key]
            if leaf not in node:
                raise RecipeError(
                    f"Override {dotted!r}: no field {leaf!r} there; known: {sorted(node)}."
                )
            node[leaf] = value
        return parse_recipe(data, source="overrides")


def reranking_metric_names(at_k: int) -> tuple[str, ...]:
    return ("map", f"mrr_at_{at_k}", f"ndcg_at_{at_k}")


def parse_recipe(data: dict[str, Any], source: str) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in issue['loc']) or '(top level)'}: {issue['msg']}"
            for issue in error.errors()
        )
        raise RecipeError(f"Recipe {source} is not valid: {problems}") from None


def builtin_recipes() -> dict[str, Path]:
    return {path.stem: path for path in sorted(BUILTIN_RECIPES_DIR.glob("*.yaml"))}


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A built-in recipe by name, or a user's YAML file by path."""
    path = Path(name_or_path)
    if not path.is_file():
        known = builtin_recipes()
        if str(name_or_path) not in known:
            raise RecipeError(
                f"No recipe {str(name_or_path)!r}: it is neither a file nor a built-in recipe "
                f"({', '.join(known)}). Run `skillops recipes` to list them."
            )
        path = known[str(name_or_path)]
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise RecipeError(f"Recipe {path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"Recipe {path} must be a YAML mapping of fields, got {type(data).__name__}.")
    return parse_recipe(data, source=str(path))
