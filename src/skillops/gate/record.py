"""What the gate remembers about each served model: the policy its candidates are judged by (with
every change of it), every judgement, and every move of its champion (with who asked and why).

Two stores behind one interface. On one machine (`make train`, a local store) the record is
kept in the MLflow registry itself, as tags of the served model and its versions (`TagRecord`):
whoever can write the store is the one person who runs it. On a team's stack the record is the
promotion authority's own database (`SqlRecord`, PostgreSQL), which no worker or maintainer can
write: their accounts reach the registry, never this. The registry's tags then only show the
authority's decisions in the MLflow UI.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import ValidationError

from skillops.errors import PolicyError
from skillops.judging.promotion import ModelPolicy

POLICY_TAG = "skillops.policy"  # on the served model (TagRecord): the policy its candidates are judged by
POLICY_CHANGE_PREFIX = "skillops.policy_change."  # one tag per change of it
MOVE_TAG_PREFIX = "skillops.champion_move."  # one tag per alias move, on both served versions it concerns


def now() -> datetime:
    return datetime.now(UTC)


def stamp(when: datetime) -> str:
    """A tag-key suffix that sorts by time (no ':', which MLflow refuses in keys)."""
    return when.strftime("%Y%m%dT%H%M%S%fZ")


def repair_command(name: str) -> str:
    return f"skillops policy <the recipe of {name}> --from-recipe --reason '...' (a maintainer's account)"


def parse_policy(name: str, text: str, where: str) -> ModelPolicy:
    """A stored policy, or a `PolicyError` naming the model, the field and the repair."""
    try:
        return ModelPolicy.model_validate_json(text)
    except ValidationError as error:
        problem = error.errors()[0]
        field = ".".join(str(part) for part in problem["loc"]) or "(the whole policy)"
        raise PolicyError(
            f"The policy of {name!r} ({where}) is not valid: {field}: {problem['msg']}. Nothing is promoted until it "
            f"is repaired: {repair_command(name)}."
        ) from None


class Record(Protocol):
    """The gate's memory of served models (see the module docstring)."""

    def policy(self, name: str) -> ModelPolicy | None:
        """The model's policy; None for a model the gate has never judged for. A stored policy
        that does not parse raises `PolicyError`."""

    def policy_changes(self, name: str) -> list[dict[str, Any]]:
        """Every change of the model's policy, oldest first: when, by, why, from, to."""

    def set_policy(self, name: str, policy: ModelPolicy, change: dict[str, Any]) -> None:
        """Store `policy` and record `change` (when, by, why, from, to)."""

    def moves(self, name: str) -> list[dict[str, Any]]:
        """Every move of the model's champion, oldest first: from, to, when, kind, by, why and,
        for a promotion, the candidate and the decision's numbers."""

    def add_move(self, name: str, move: dict[str, Any]) -> None:
        """Record one move of the champion."""

    def add_decision(self, name: str, decision: dict[str, Any]) -> None:
        """Record one judgement, promoted or not: candidate, when, by, the decision."""


class TagRecord:
    """The record as tags in the MLflow registry the process writes to (one machine's store)."""

    def __init__(self, client) -> None:
        self.client = client

    def _model_tags(self, name: str) -> dict[str, str]:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(name).tags
        except MlflowException:
            return {}  # no served model yet

    def policy(self, name: str) -> ModelPolicy | None:
        tags = self._model_tags(name)
        if POLICY_TAG not in tags:
            return None
        return parse_policy(name, tags[POLICY_TAG], f"tag {POLICY_TAG} of the served model")

    def policy_changes(self, name: str) -> list[dict[str, Any]]:
        tags = self._model_tags(name)
        return [json.loads(tags[key]) for key in sorted(tags) if key.startswith(POLICY_CHANGE_PREFIX)]

    def set_policy(self, name: str, policy: ModelPolicy, change: dict[str, Any]) -> None:
        self.client.set_registered_model_tag(name, POLICY_TAG, policy.model_dump_json())
        key = POLICY_CHANGE_PREFIX + stamp(now())
        self.client.set_registered_model_tag(name, key, json.dumps(change))

    def moves(self, name: str) -> list[dict[str, Any]]:
        from mlflow.exceptions import MlflowException

        found = {}
        try:
            versions = self.client.search_model_versions(f"name = '{name}'")
        except MlflowException:
            return []
        for version in versions:
            for key, value in version.tags.items():
                if key.startswith(MOVE_TAG_PREFIX):
                    found[key] = json.loads(value)
        return [found[key] for key in sorted(found)]

    def add_move(self, name: str, move: dict[str, Any]) -> None:
        key = MOVE_TAG_PREFIX + stamp(now())
        for touched in {move["to"], move["from"]} - {None}:
            self.client.set_model_version_tag(name, touched, key, json.dumps(move))

    def add_decision(self, name: str, decision: dict[str, Any]) -> None:
        """Nothing more to keep: the decision's tags on the candidate are this record's."""


class SqlRecord:
    """The promotion authority's own database (a SQLAlchemy engine): append-only tables of policy
    changes and moves. PostgreSQL on a team's stack, backed up with the stack's other databases."""

    def __init__(self, engine) -> None:
        import sqlalchemy as sa

        self.engine = engine
        meta = sa.MetaData()
        self.changes = sa.Table(
            "policy_changes",
            meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("model", sa.String(256), nullable=False, index=True),
            sa.Column("policy", sa.Text, nullable=False),
            sa.Column("change", sa.Text, nullable=False),
        )
        self.move_table = sa.Table(
            "champion_moves",
            meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("model", sa.String(256), nullable=False, index=True),
            sa.Column("move", sa.Text, nullable=False),
        )
        self.decisions = sa.Table(
            "decisions",
            meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("model", sa.String(256), nullable=False, index=True),
            sa.Column("decision", sa.Text, nullable=False),
        )
        meta.create_all(self.engine)

    def policy(self, name: str) -> ModelPolicy | None:
        import sqlalchemy as sa

        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(self.changes.c.policy)
                .where(self.changes.c.model == name)
                .order_by(self.changes.c.id.desc())
                .limit(1)
            ).first()
        return None if row is None else parse_policy(name, row.policy, "the promotion authority's record")

    def policy_changes(self, name: str) -> list[dict[str, Any]]:
        import sqlalchemy as sa

        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(self.changes.c.change).where(self.changes.c.model == name).order_by(self.changes.c.id)
            )
            return [json.loads(row.change) for row in rows]

    def set_policy(self, name: str, policy: ModelPolicy, change: dict[str, Any]) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                self.changes.insert().values(model=name, policy=policy.model_dump_json(), change=json.dumps(change))
            )

    def moves(self, name: str) -> list[dict[str, Any]]:
        import sqlalchemy as sa

        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(self.move_table.c.move).where(self.move_table.c.model == name).order_by(self.move_table.c.id)
            )
            return [json.loads(row.move) for row in rows]

    def add_move(self, name: str, move: dict[str, Any]) -> None:
        with self.engine.begin() as connection:
            connection.execute(self.move_table.insert().values(model=name, move=json.dumps(move)))

    def add_decision(self, name: str, decision: dict[str, Any]) -> None:
        with self.engine.begin() as connection:
            connection.execute(self.decisions.insert().values(model=name, decision=json.dumps(decision)))
