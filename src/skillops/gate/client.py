"""Asking a team's promotion authority (`skillops.gate.service`) over the stack's TLS, as this
process's account: MLFLOW_TRACKING_USERNAME / _PASSWORD, the stack's CA in
MLFLOW_TRACKING_SERVER_CERT_PATH, the service at SKILLOPS_GATE_URL (an account's env file sets
all of them). It answers what the local authority answers (`policy`, `policy_changes`, `history`,
`change_policy`, `rollback`); a refusal comes back as the same error the authority raised."""

from __future__ import annotations

import os
from typing import Any

from skillops import errors
from skillops.judging.promotion import Decision, ModelPolicy


class RemoteGate:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float = 120) -> dict[str, Any]:
        import requests

        from skillops.settings import settings
        from skillops.uris import safe_uri

        account = os.environ.get("MLFLOW_TRACKING_USERNAME")
        password = os.environ.get("MLFLOW_TRACKING_PASSWORD")
        if not account or not password:
            raise errors.AccessError(
                "The promotion authority needs your account: MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                "are not set. Source the env file of your account (`skillops users add` made it)."
            )
        verify = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True
        url = f"{self.url}{path}"
        try:
            answer = requests.request(method, url, json=body, auth=(account, password), verify=verify, timeout=timeout)
        except requests.ConnectionError as error:
            raise errors.ServerError(
                f"The promotion authority {safe_uri(url)} did not answer ({type(error).__name__}); nothing was "
                f"decided. Run again once the stack answers (waited {settings().server_wait_seconds:.0f} s at most)."
            ) from None
        if answer.status_code == 200:
            return answer.json()
        try:
            problem = answer.json()
        except ValueError:
            problem = {"error": "AccessError", "message": answer.text.strip()[:300] or f"HTTP {answer.status_code}"}
        kind = getattr(errors, str(problem.get("error")), errors.PromotionError)
        if (
            not (isinstance(kind, type) and issubclass(kind, errors.SkillopsError))
            or kind is errors.DataValidationError
        ):
            kind = errors.PromotionError
        raise kind(f"The promotion authority refused: {problem.get('message')}")

    def _model(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/models/{name}")

    def policy(self, name: str) -> ModelPolicy | None:
        described = self._model(name)
        if described["problem"]:
            raise errors.PolicyError(described["problem"])
        return None if described["policy"] is None else ModelPolicy.model_validate(described["policy"])

    def policy_changes(self, name: str) -> list[dict[str, Any]]:
        return self._model(name)["changes"]

    def history(self, name: str) -> list[dict[str, Any]]:
        return self._model(name)["history"]

    def open_experiment(self, name: str) -> str:
        """The recipe's experiment, where this account may create runs; returns its id."""
        return self._call("POST", f"/experiments/{name}/open", {})["experiment_id"]

    def open(self, name: str, recipe: str, ref: str) -> ModelPolicy:
        """The model's policy, set from `recipe` at commit `ref` if it has none yet."""
        from skillops.settings import settings

        opened = self._call(
            "POST", f"/models/{name}/open", {"recipe": recipe, "ref": ref}, timeout=settings().promotion_wait_seconds
        )
        return ModelPolicy.model_validate(opened["policy"])

    def judge(self, name: str, candidate: str, run_policy: ModelPolicy) -> Decision:
        """The authority's decision on a registered candidate (it scores it itself; this run's
        policy can only make it stricter)."""
        from skillops.settings import settings

        judged = self._call(
            "POST",
            f"/models/{name}/judge",
            {"candidate": candidate, "run_policy": run_policy.model_dump(mode="json")},
            timeout=settings().promotion_wait_seconds,
        )
        return Decision.model_validate(judged["decision"])

    def rollback(self, name: str, why: str, to: str | None = None) -> tuple[str, str]:
        moved = self._call("POST", f"/models/{name}/rollback", {"why": why, "to": to})
        return moved["from"], moved["to"]

    def change_policy(
        self, name: str, why: str, fields: dict[str, Any] | None = None, recipe: str | None = None
    ) -> dict[str, Any]:
        """Change fields of the policy, or take `recipe`'s (a built-in name, read at this
        checkout's commit, or a file on shared storage)."""
        from pathlib import Path

        from skillops.settings import settings
        from skillops.tracking.runs import code_version

        source = None
        if recipe is not None:
            source = str(Path(recipe).resolve()) if Path(recipe).is_file() else recipe
        body = {"why": why, "fields": fields or None, "recipe": source, "ref": code_version()}
        changed = self._call("POST", f"/models/{name}/policy", body, timeout=settings().promotion_wait_seconds)
        return changed["change"]
