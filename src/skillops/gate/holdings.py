"""What the promotion authority holds to judge with, in its own database beside its record:

- for each served model, the recipe its first policy came from (as written, at the recorded
  ref) and the evaluation sets built from it then, frozen: the test split and every golden set
  (for the ESCO recipe, each ranking the whole vocabulary). A recorded policy change from a recipe
  freezes new ones;
- the per-query scores it computed itself, by model weights (a candidate's run and logged model),
  snapshot, eval set and variant, so that a champion is not encoded again for every candidate.

No worker writes any of it: the authority builds the sets from the recipe's data and scores from
registered files.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from skillops.config import Recipe
from skillops.judging.evaluation import QueryScores


class Holdings:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        meta = sa.MetaData()
        self.sets = sa.Table(
            "frozen_sets",
            meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("model", sa.String(256), nullable=False, index=True),
            sa.Column("snapshot", sa.String(64), nullable=False),
            sa.Column("recipe", sa.Text, nullable=False),  # the recipe the sets were built from (JSON)
            sa.Column("sets", sa.Text, nullable=False),  # eval set name -> its content (JSON)
        )
        self.scores = sa.Table(
            "scores",
            meta,
            sa.Column(
                "weights", sa.String(256), primary_key=True
            ),  # whose: "<run id>/<logged model id>" or "base:<...>"
            sa.Column("snapshot", sa.String(64), primary_key=True),
            sa.Column("eval_set", sa.String(256), primary_key=True),
            sa.Column("variant", sa.String(16), primary_key=True),
            sa.Column("content", sa.Text, nullable=False),
        )
        meta.create_all(engine)

    def freeze(self, name: str, snapshot: str, recipe: Recipe, sets: dict[str, Any]) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                self.sets.insert().values(
                    model=name, snapshot=snapshot, recipe=recipe.model_dump_json(), sets=json.dumps(sets)
                )
            )

    def frozen(self, name: str) -> tuple[str, Recipe, dict[str, Any]] | None:
        """(snapshot, recipe, eval set name -> content) of the model's newest frozen sets."""
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(self.sets).where(self.sets.c.model == name).order_by(self.sets.c.id.desc()).limit(1)
            ).first()
        if row is None:
            return None
        return row.snapshot, Recipe.model_validate_json(row.recipe), json.loads(row.sets)

    def scored(self, weights: str, snapshot: str, eval_set: str, variant: str) -> QueryScores | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(self.scores.c.content).where(
                    self.scores.c.weights == weights,
                    self.scores.c.snapshot == snapshot,
                    self.scores.c.eval_set == eval_set,
                    self.scores.c.variant == variant,
                )
            ).first()
        return None if row is None else QueryScores.model_validate_json(row.content)

    def keep(self, weights: str, snapshot: str, eval_set: str, variant: str, scores: QueryScores) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                sa.delete(self.scores).where(
                    self.scores.c.weights == weights,
                    self.scores.c.snapshot == snapshot,
                    self.scores.c.eval_set == eval_set,
                    self.scores.c.variant == variant,
                )
            )
            connection.execute(
                self.scores.insert().values(
                    weights=weights,
                    snapshot=snapshot,
                    eval_set=eval_set,
                    variant=variant,
                    content=scores.model_dump_json(),
                )
            )
