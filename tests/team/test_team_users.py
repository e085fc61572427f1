"""Day two on the accounts, as the admin does it on the server machine: a rotated password and a
removed leaver are refused by the tracking server at its next request; a leaver who held Prefect's
shared credential has it replaced for everyone who remains. (Last of the package: the replaced
credential reaches the Prefect server only when the stack restarts.)"""

from __future__ import annotations

import re

from helpers import BIN
from teamstack import call


def _search_as(team, user: str) -> int:
    """One read as `user`, from an address of its own: the stack throttles wrong passwords per address."""
    url = f"{team.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    return call(url, team.ca, user=user, source="127.0.0.7")[0]


def _password(folder) -> str:
    return re.search(r"MLFLOW_TRACKING_PASSWORD='([^']+)'", (folder / "credentials").read_text()).group(1)


def _prefect_auth(folder) -> str | None:
    found = re.search(r"PREFECT_API_AUTH_STRING='([^']+)'", (folder / "credentials").read_text())
    return found.group(1) if found else None


def test_a_rotated_password_and_a_removed_leaver_are_refused_at_once(team):
    admin, accounts = team.accounts["admin"], team.servers / "accounts"
    users = (BIN / "skillops", "users")
    for name, role in (("rotated-r", "reader"), ("leaver-m", "maintainer")):
        team.a.run(*users, "add", name, "--role", role, "--stack-dir", team.servers, env=admin)
        assert _search_as(team, f"{name}:{_password(accounts / name)}") == 200

    old = _password(accounts / "rotated-r")
    rotated = team.a.run(*users, "rotate", "rotated-r", "--stack-dir", team.servers, env=admin)
    assert "the old one is refused from now on" in rotated.stdout and old not in rotated.output
    new = _password(accounts / "rotated-r")
    assert new != old
    assert _search_as(team, f"rotated-r:{old}") == 401
    assert _search_as(team, f"rotated-r:{new}") == 200

    holders = {name: _prefect_auth(accounts / name) for name in ("admin", "maintainer-b", "worker-b")}
    leaver = _password(accounts / "leaver-m")
    removed = team.a.run(*users, "remove", "leaver-m", "--stack-dir", team.servers, env=admin)
    assert _search_as(team, f"leaver-m:{leaver}") == 401
    assert not (accounts / "leaver-m").exists()
    assert "held Prefect's shared credential" in removed.stdout and "make stack-down && make stack-up" in removed.stdout
    for name, before in holders.items():  # every remaining holder's folder has the new credential
        assert name in removed.stdout
        assert _prefect_auth(accounts / name) not in (None, before)
    assert _prefect_auth(accounts / "rotated-r") is None  # a reader never holds it
    listed = team.a.run(*users, "list", "--stack-dir", team.servers, env=admin).stdout
    assert "leaver-m" not in listed and "rotated-r" in listed

    refused = team.a.run(*users, "rotate", "admin", "--stack-dir", team.servers, env=admin, check=False)
    assert refused.returncode != 0 and "the stack's secrets" in refused.output
