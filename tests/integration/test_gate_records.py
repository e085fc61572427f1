"""The promotion authority decides the same way wherever it runs: the same scores give the same
decisions, moves and rollbacks whether its record is the registry's tags (one machine) or its own
database (a team's stack: `SqlRecord`, here on sqlite), and a served version's record survives
what any other account can write in the registry."""

from __future__ import annotations

import contextlib

import sqlalchemy as sa

from helpers import Levels
from skillops import gate
from skillops.config import PromotionPolicy
from skillops.gate.authority import Authority
from skillops.gate.record import POLICY_TAG, SqlRecord
from skillops.judging.promotion import ModelPolicy
from skillops.tracking import registry, runs

POLICY = ModelPolicy(promotion=PromotionPolicy(), evaluator="reranking", primary_metric="map", at_k=100)


def _history(authority: Authority, name: str, tiny_bert) -> list:
    """Three candidates judged (two promoted, one refused), then a rollback."""
    levels = {None: 0.4}
    authority.first_policy(name, POLICY, "first policy")
    decisions = []
    for level in (0.5, 0.6, 0.55):
        run_id = runs.start_run("records", "candidate", {})
        candidate = registry.register(tiny_bert, run_id, name, {})
        runs.end_run(run_id)
        decision = authority.judge(name, candidate, Levels(levels, level))
        if decision.promote:
            levels[decision.served_version] = level
        decisions.append(decision.model_dump(exclude={"reason"}))
    authority.rollback(name, "after a complaint")
    return decisions, [(m["kind"], m["from"], m["to"], m.get("numbers")) for m in authority.history(name)]


def test_the_authority_decides_alike_on_either_record(tiny_bert, mlflow_store, tmp_path):
    local = _history(gate.local(), "on-tags", tiny_bert)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'gate.db'}")
    remote = Authority(SqlRecord(engine), "the-authority", lambda name: contextlib.nullcontext())
    on_database = _history(remote, "on-database", tiny_bert)
    assert local == on_database
    assert [kind for kind, *_ in on_database[1]] == ["promotion", "promotion", "rollback"]
    # What other accounts can write in the registry is not the database's record.
    runs.client().set_registered_model_tag("on-database", POLICY_TAG, "garbage")
    assert remote.policy("on-database") == POLICY
    assert [change["by"] for change in remote.policy_changes("on-database")] == ["the-authority"]
