"""The promotion authority: the one room that decides whether a candidate becomes its model's
champion, and the only code that moves the champion, registers into the served model, changes
the model's policy or rolls it back. Each of these is recorded (`record.Record`): who asked, what
was decided, and why.

It calls down into the pure decision (`promotion.decide`), the registry (versions, aliases) and
the scores it is handed (`Evidence`), and never back up. Where it runs decides whom it trusts:

- on one machine (`make train`, a local store), in the pipeline's process, judging from the
  run's own per-query scores, its record the registry's tags (`record.TagRecord`);
- on a team's stack, as the promotion authority's service on the server machine
  (`skillops.gate.service`), with an account no worker holds: it scores candidate and champion
  itself, from their registered files, on evaluation sets it froze when the model's first policy
  was set, its record its own database. Workers and maintainers only ask (`skillops.gate.client`).

Candidates are versions of `<name>-candidates`; a promoted one is registered into `<name>`, the
served model, where `@champion` lives. So the served model holds nothing the authority did not
pass, and a rollback can only go back to a version that was champion before.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from skillops.config import EvaluationConfig, Recipe
from skillops.errors import PolicyError, PromotionError, RollbackError
from skillops.gate.record import Record, now, repair_command
from skillops.judging.evaluation import QueryScores
from skillops.judging.promotion import Decision, ModelPolicy, decide, refuse_unjudgeable, weaker_than
from skillops.tracking import registry
from skillops.tracking.registry import CHAMPION, SERVED_TAG, candidates
from skillops.tracking.runs import client

logger = logging.getLogger(__name__)

MAX_RECHECKS = 5  # judgements of one candidate while the champion keeps moving, before giving up
GOLDEN = "golden-"  # eval set names of golden sets: golden-<name>


class Evidence(Protocol):
    """What a judgement is made from: per-query scores on the same frozen sets ("test" and
    "golden-<name>"), the candidate's as it will be served."""

    def candidate(self) -> dict[str, QueryScores]: ...

    def reference(self, champion: str | None) -> tuple[dict[str, QueryScores], str | None]:
        """The scores of served version `champion` (None: the base model, the bar before any
        champion), and a note on where they came from (cache, re-scored) or None."""


def numbers(decision: Decision) -> dict[str, Any]:
    """The decision's figures, as recorded with each move and version."""
    return {
        "metric": decision.metric,
        "candidate": round(decision.candidate, 6),
        "reference": round(decision.reference, 6),
        "reference_name": decision.reference_name,
        "delta": round(decision.delta, 6),
        "p_value": None if decision.p_value is None else round(decision.p_value, 6),
    }


class Authority:
    """Decides and records for the served models of one registry (see the module docstring).

    It writes the registry this process's MLflow settings name, as their account (on a team's
    stack, the authority's). `by`: the account that asks, recorded with every change.
    `lock(name)`: held around every read-decide-move of one model, so that two judgements of the
    same model take turns. `serve(name, candidate)`: registers a candidate into the served model
    and returns the served version (the registry's copy on one machine; on a team's stack the
    authority logs the candidate's checked files itself).
    """

    def __init__(
        self,
        record: Record,
        by: str,
        lock: Callable[[str], AbstractContextManager[Any]],
        serve: Callable[[str, str], str] = registry.served_copy,
    ) -> None:
        self.record, self.by, self.lock, self.serve = record, by, lock, serve

    # --- what anyone may read --------------------------------------------------------------------

    def champion(self, name: str) -> str | None:
        return registry.champion_version(name)

    def policy(self, name: str) -> ModelPolicy | None:
        return self.record.policy(name)

    def policy_changes(self, name: str) -> list[dict[str, Any]]:
        return self.record.policy_changes(name)

    def history(self, name: str) -> list[dict[str, Any]]:
        return self.record.moves(name)

    def require_policy(self, name: str) -> ModelPolicy:
        """The policy the model's candidates are judged by; a model that has a champion but no
        policy is an error (never a reset to some recipe's)."""
        policy = self.record.policy(name)
        if policy is None:
            raise PolicyError(
                f"{name!r} has no policy in the gate's record"
                + (f" but has a champion (version {self.champion(name)})" if self.champion(name) else "")
                + f": nothing is promoted until it has one: {repair_command(name)}."
            )
        return policy

    # --- what changes the record -----------------------------------------------------------------

    def first_policy(self, name: str, policy: ModelPolicy, why: str) -> ModelPolicy:
        """The model's policy: the one it has, or, for a model never judged before, `policy`
        (the recipe's as written), stored now. A model with a champion and no policy is refused:
        its policy was lost or removed, and re-creating it from a recipe would hide that."""
        with self.lock(name):
            stored = self.record.policy(name)
            if stored is not None:
                return stored
            if self.champion(name) is not None:
                self.require_policy(name)  # raises, naming the repair
            self._ensure_models(name)
            self._set_policy(name, None, policy, why)
            return policy

    def change_policy(
        self, name: str, why: str, fields: dict[str, Any] | None = None, recipe: Recipe | str | None = None
    ) -> dict[str, Any]:
        """Change the model's policy (a maintainer's decision, with its reason): promotion
        `fields` replaced, or the whole policy of `recipe` (a built-in name or a file), which is how
        a model moves to another evaluator or primary metric, and how a lost or malformed policy is
        repaired. Returns the recorded change."""
        from skillops.config import load_recipe

        if not why.strip():
            raise PolicyError("A policy change needs a reason (--reason '...'): it is recorded with the change.")
        with self.lock(name):
            try:
                old = self.record.policy(name)
            except PolicyError:
                old = None  # a malformed policy: only a recipe's can repair it
            if recipe is not None:
                policy = ModelPolicy.of_recipe(recipe if isinstance(recipe, Recipe) else load_recipe(recipe))
            elif old is None:
                raise PolicyError(
                    f"{name!r} has no valid policy to change a field of; set the whole policy from a recipe: "
                    f"{repair_command(name)}."
                )
            else:
                policy = old.with_promotion(fields or {})
            self._ensure_models(name)
            return self._set_policy(name, old, policy, why)

    def _set_policy(self, name: str, old: ModelPolicy | None, policy: ModelPolicy, why: str) -> dict[str, Any]:
        change = {
            "when": now().isoformat(timespec="seconds"),
            "by": self.by,
            "why": why,
            "from": None if old is None else old.model_dump(mode="json"),
            "to": policy.model_dump(mode="json"),
        }
        self.record.set_policy(name, policy, change)
        return change

    def _ensure_models(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):  # it exists already
            client().create_registered_model(name, description=f"The served model: candidates in {candidates(name)}")

    def judge(self, name: str, candidate: str, evidence: Evidence, run_policy: ModelPolicy | None = None) -> Decision:
        """Decide on candidate version `candidate` of `<name>-candidates` against the champion
        of the moment and, if it passes, register it into the served model and move `@champion`
        there. The decision is recorded on the candidate (and its served copy); a promotion is
        recorded as a move. `run_policy`: the policy the asking run was written with; one weaker
        in any field than the model's may register, never promote; one at least as strict in
        every field is the one applied (a run may ask for more, never for less).

        Under the lock, the champion is read, judged, and read again just before the alias moves:
        if it changed meanwhile (a rollback, a promotion by a process that holds no lock), the
        candidate is judged again against the new champion. A retry after a crash between the
        copy and the alias move finds the copy and does not make a second one."""
        with self.lock(name):
            policy = self.require_policy(name)
            weaker = weaker_than(run_policy, policy) if run_policy is not None else []
            if run_policy is not None and not weaker:
                policy = run_policy  # as strict in every field, stricter in some: the run asked for more
            notes: dict[str, str] = {}
            for _ in range(MAX_RECHECKS):
                current = self.champion(name)
                decision = self._decide(policy, evidence, current, weaker, notes)
                if self.champion(name) == current:
                    break
            else:
                raise PromotionError(
                    f"The champion of {name!r} moved {MAX_RECHECKS} times while candidate {candidate} was being "
                    "judged; something else is moving the alias. Run again once it has stopped."
                )
            tags = {
                "skillops.decision": "promoted" if decision.promote else "not promoted",
                "skillops.decision_reason": decision.reason,
                "skillops.decision_time": now().isoformat(timespec="seconds"),
                "skillops.decision_by": self.by,
                "skillops.previous_champion": current or "none",
                "skillops.decision_numbers": json.dumps(numbers(decision)),
                **notes,
            }
            for key, value in tags.items():
                client().set_model_version_tag(candidates(name), candidate, key, value)
            self.record.add_decision(
                name, {"candidate": candidate, **tags, "decision": decision.model_dump(mode="json")}
            )
            if decision.promote:
                served = self.serve(name, candidate)
                for key, value in tags.items():  # a copy made by an earlier attempt has that attempt's
                    client().set_model_version_tag(name, served, key, value)
                client().set_registered_model_alias(name, CHAMPION, served)
                self._record_move(name, current, served, "promotion", decision.reason, decision, candidate)
                client().set_model_version_tag(candidates(name), candidate, SERVED_TAG, served)
                decision = decision.model_copy(update={"served_version": served})
        logger.info("Candidate %s of %s: %s", candidate, name, decision.reason)
        return decision

    def _decide(
        self,
        policy: ModelPolicy,
        evidence: Evidence,
        champion: str | None,
        weaker: list[str],
        notes: dict[str, str],
    ) -> Decision:
        candidate = evidence.candidate()
        reference, source = evidence.reference(champion)
        if source:
            notes["skillops.champion_source"] = source
        headline = EvaluationConfig(
            evaluator=policy.evaluator, primary_metric=policy.primary_metric, at_k=policy.at_k
        ).headline_metrics()
        missing = sorted(f"{GOLDEN}{golden}" for golden in policy.golden if f"{GOLDEN}{golden}" not in candidate)
        if missing:
            weaker = [*weaker, f"evaluation.golden: the candidate was not scored on {missing}"]
        name = "champion" if champion else "base model"
        if candidate["test"].evaluator != policy.evaluator:  # another evaluator's scores: nothing to compare
            return refuse_unjudgeable(weaker, policy.primary_metric, name, champion)
        return decide(
            candidate["test"],
            reference["test"],
            name,
            policy.primary_metric,
            headline,
            policy.promotion,
            champion,
            {
                part.removeprefix(GOLDEN): (scores, reference[part])
                for part, scores in candidate.items()
                if part.startswith(GOLDEN) and part in reference
            },
            weaker_policy=weaker,
        )

    def rollback(self, name: str, why: str, to: str | None = None) -> tuple[str, str]:
        """Move `@champion` back to the version it replaced (or to `to`, which must have been
        champion before); returns (from, to)."""
        with self.lock(name):
            current = self.champion(name)
            if current is None:
                raise RollbackError(f"{name!r} has no champion, so there is nothing to roll back.")
            moves = self.record.moves(name)
            before = {move["to"] for move in moves}
            if to is None:
                # The version this one replaced when it was promoted (a rollback to it replaced nothing).
                came_from = [move["from"] for move in moves if move["to"] == current and move["kind"] == "promotion"]
                to = came_from[-1] if came_from else None
                if to is None:
                    raise RollbackError(
                        f"Version {current} of {name!r} was its first champion; there is no earlier one to roll back "
                        "to. Promote another version instead."
                    )
            elif to == current or to not in before:
                raise RollbackError(
                    f"Version {to} of {name!r} was never its champion (versions that were: {sorted(before, key=int)}): "
                    "a rollback can only go back to one of them."
                )
            client().set_registered_model_alias(name, CHAMPION, to)
            move = self._record_move(name, current, to, "rollback", why)
            client().set_model_version_tag(
                name, to, "skillops.rollback", f"{move['when']}: champion moved back from version {current}: {why}"
            )
            client().set_model_version_tag(
                name, current, "skillops.rolled_back", f"{move['when']}: replaced by version {to}: {why}"
            )
        logger.info("Champion of %s moved back from version %s to %s", name, current, to)
        return current, to

    def _record_move(
        self,
        name: str,
        old: str | None,
        new: str,
        kind: str,
        why: str,
        decision: Decision | None = None,
        candidate: str | None = None,
    ) -> dict[str, Any]:
        move = {
            "from": old,
            "to": new,
            "when": now().isoformat(timespec="seconds"),
            "kind": kind,
            "by": self.by,
            "why": why,
            **({"candidate": candidate} if candidate else {}),
            **({"numbers": numbers(decision)} if decision else {}),
        }
        self.record.add_move(name, move)
        return move
