"""Each account attacks the served model as an attacker with its credentials would, for real,
against the running stack: anonymous, a reader, a maintainer, the pipeline, and the pipeline's
credential stolen and used from another folder. Afterwards the served model's champion, versions,
name, tags and policy are exactly as they were, and the authority's record lists only the changes
it made, each with the account that asked. Prefect's one credential cannot run another command or
another repository's code on a worker."""

from __future__ import annotations

import json
import shutil

import pytest

from helpers import BIN
from teamstack import Machine, call, prefect

NAME = "served"
UNTOUCHED = "401/403/404: refused, and nothing changed"


@pytest.fixture(scope="module")
def attacked(team, served):
    """The served model as it was before the attacks, and a thief's folder holding the pipeline's
    credential (copied off machine A)."""
    thief = Machine(team.tmp / "thief", team.tmp / "team-repository", team.transcript)
    shutil.copytree(next((team.servers / "accounts").glob("worker-*")), thief.home / "stolen")
    team.accounts["stolen"] = thief.account(thief.home / "stolen")
    return team.state_of(served)


def _writes(team, candidate_source: str) -> list[tuple[str, str, dict]]:
    """Every write to the served model an attacker would try: (method, path, body)."""
    api = "/api/2.0/mlflow"
    return [
        ("POST", f"{api}/registered-models/alias", {"name": NAME, "alias": "champion", "version": "1"}),
        ("DELETE", f"{api}/registered-models/alias", {"name": NAME, "alias": "champion"}),
        ("POST", f"{api}/registered-models/rename", {"name": NAME, "new_name": f"{NAME}-renamed"}),
        ("POST", f"{api}/registered-models/set-tag", {"name": NAME, "key": "skillops.policy", "value": "garbage"}),
        ("DELETE", f"{api}/registered-models/delete-tag", {"name": NAME, "key": "skillops.policy"}),
        ("POST", f"{api}/model-versions/create", {"name": NAME, "source": candidate_source}),
        ("POST", f"{api}/model-versions/set-tag", {"name": NAME, "version": "1", "key": "x", "value": "y"}),
        ("DELETE", f"{api}/model-versions/delete", {"name": NAME, "version": "1"}),
        ("DELETE", f"{api}/registered-models/delete", {"name": NAME}),
        ("DELETE", f"{api}/model-versions/delete", {"name": f"{NAME}-candidates", "version": "1"}),
    ]


@pytest.mark.parametrize("account", ["anonymous", "reader-b", "maintainer-b", "worker-b", "stolen"])
def test_no_account_changes_the_served_model_but_through_the_authority(team, attacked, account):
    user = None if account == "anonymous" else team.user(account)
    with team.as_account("admin") as admin:
        source = admin.get_model_version(f"{NAME}-candidates", "1").source
    for method, path, body in _writes(team, source):
        status, text = call(team.mlflow_url + path, team.ca, body, user, method=method)
        assert status in (401, 403), (account, method, path, status, text)
    # The authority refuses what the account's role may not ask.
    gate = f"{team.mlflow_url}/gate/models/{NAME}"
    asks = {
        "rollback": ({"why": "attack"}, ("maintainer-b",)),
        "policy": ({"why": "attack", "fields": {"golden_tolerance": 1.0}}, ("maintainer-b",)),
        "judge": ({"candidate": "1"}, ("worker-b", "stolen")),
    }
    for action, (body, allowed) in asks.items():
        if account in allowed:
            continue
        status, text = call(f"{gate}/{action}", team.ca, body, user)
        assert status == (401 if account == "anonymous" else 403), (account, action, status, text)
    assert team.state_of(NAME) == attacked, UNTOUCHED


def test_what_the_authority_does_for_each_role_is_recorded_with_the_account(team, attacked):
    """A maintainer's policy change and a pipeline's re-judgement of the champion's own candidate
    go through; the record lists each with the account; a weakened policy never promotes a worse
    candidate (it is judged again: equal to the champion, not promoted)."""
    recipe = team.recipe(NAME)
    changed = team.b.run(
        BIN / "skillops", "policy", recipe, "--set", "secondary_tolerance=0.02", "--reason", "team agreed",
        env=team.accounts["maintainer-b"],
    )  # fmt: skip
    assert "policy changed by maintainer-b (team agreed)" in changed.stdout
    status, text = call(f"{team.mlflow_url}/gate/models/{NAME}/judge", team.ca, {"candidate": "1"}, team.user("stolen"))
    assert status == 200 and not json.loads(text)["decision"]["promote"]  # the champion itself: not better than itself
    record = json.loads(call(f"{team.mlflow_url}/gate/models/{NAME}", team.ca, user=team.user("reader-b"))[1])
    assert [(c["by"], c["why"]) for c in record["changes"]][-1] == ("maintainer-b", "team agreed")
    assert record["policy"]["promotion"]["secondary_tolerance"] == 0.02
    after = team.state_of(NAME)
    assert (after["champion"], after["versions"], after["moves"]) == (
        attacked["champion"],
        attacked["versions"],
        attacked["moves"],
    )
    listed = team.b.run(BIN / "skillops", "policy", recipe, env=team.accounts["reader-b"]).stdout
    assert "changed by maintainer-b: team agreed" in listed


def test_prefects_credential_cannot_run_another_command_or_repository_on_a_worker(team, attacked):
    """A maintainer (holding Prefect's one credential) asks for a flow run with its own command,
    and makes a deployment that clones another repository: the first is refused by the server,
    the second by every worker, which starts no process for it."""
    maintainer = team.accounts["maintainer-b"]
    deployment = prefect(maintainer, "/deployments/name/train-esco/weekly")
    marker = team.tmp / "the-attack-ran"
    command = f"bash -c 'env > {marker}'"
    status, text = prefect(
        maintainer,
        f"/deployments/{deployment['id']}/create_flow_run",
        {"job_variables": {"command": command}},
        expect=None,
    )
    assert status == 422 and "command" in text, (status, text)
    flow = prefect(maintainer, "/flows/", {"name": "train-esco"}, expect=None)
    evil = prefect(
        maintainer,
        "/deployments/",
        {
            "name": "evil",
            "flow_id": json.loads(flow[1])["id"],
            "work_pool_name": "skillops",
            "entrypoint": "flows/train_esco.py:train_esco",
            "pull_steps": [
                {"prefect.deployments.steps.git_clone": {"repository": "file:///tmp/another", "branch": "x"}}
            ],
        },
        expect=201,
    )
    try:
        run = prefect(maintainer, f"/deployments/{evil['id']}/create_flow_run", {}, expect=201)
        crashed = team.wait_for(run["id"], "CRASHED", "the refused flow run", 120)
        assert (
            "refused" in crashed["state"]["message"]
            and "not this machine's SKILLOPS_GIT_URL" in crashed["state"]["message"]
        )
        assert not marker.exists()
    finally:
        prefect(maintainer, f"/deployments/{evil['id']}", method="DELETE", expect=None)
