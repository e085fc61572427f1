"""The promotion authority decides, on the server machine: a retrain from another machine is
judged by it (scored there, on the sets it froze) and promoted; downstream is told; a run whose
overrides weaken the model's policy registers and is refused, naming the field; a maintainer's
rollback goes through it; `skillops history` and `skillops policy` list every change it made, with
the account that asked."""

from __future__ import annotations

import json
import re

from helpers import BIN, served_candidates
from teamstack import STRONG, call, prefect


def test_a_retrain_from_another_machine_is_judged_and_promoted_by_the_authority(team):
    name = "gate-promotes"
    first = team.promoted_model(name)
    client = team.mlflow("reader-b")
    assert client.get_registered_model(name).aliases["champion"] == "1"
    candidate = client.get_model_version(f"{name}-candidates", "1")
    assert candidate.tags["skillops.decision"] == "promoted"
    assert candidate.tags["skillops.decision_by"].startswith("worker-")  # who asked: whichever worker ran it
    # The served version is the authority's own copy: logged by it, from the files it checked.
    served = client.get_model_version(name, "1")
    assert served.tags["skillops.candidate_version"] == "1"
    assert (
        client.get_run(served.run_id).info.experiment_id == client.get_experiment_by_name("skillops-gate").experiment_id
    )
    # Downstream is told, by a signed delivery; a forged one is refused.
    from helpers import wait_until

    wait_until(lambda: f"champion of {name} is now version 1" in team.heard.read_text(), "the webhook delivery", 120)
    forged = call(
        f"http://127.0.0.1:{team.receiver_port}/",
        body={"data": {"name": name, "alias": "champion", "version": "1"}},
        headers={"X-MLflow-Delivery-Id": "x", "X-MLflow-Timestamp": "1", "X-MLflow-Signature": "v1,Zm9yZ2Vk"},
    )
    assert forged[0] == 401 and "refused a delivery: the signature does not match" in team.heard.read_text()
    # What the promotion changes for indexes: the champion's embeddings of the skills, and the churn.
    (promoted,) = client.search_runs(
        [client.get_experiment_by_name(name).experiment_id], f"tags.skillops.prefect_flow_run_id = '{first}'"
    )
    assert [a.path for a in client.list_artifacts(promoted.info.run_id, "index")] == ["index/embeddings.parquet"]

    # A run whose overrides weaken the model's policy registers and is refused, naming the field.
    recipe = team.recipe(name)
    weak = team.b.deployment_run(
        team.accounts["maintainer-b"], recipe, {**STRONG, "training.seed": 7, "promotion.golden_tolerance": 1.0}
    )
    team.wait_for(weak, "COMPLETED", "the weakened run")
    (refused,) = client.search_runs(
        [client.get_experiment_by_name(name).experiment_id], f"tags.skillops.prefect_flow_run_id = '{weak}'"
    )
    assert refused.data.tags["skillops.decision"] == "not promoted"
    assert "promotion.golden_tolerance: 1.0 (the model's: 0.01)" in refused.data.tags["skillops.decision_reason"]
    assert int(refused.data.tags["skillops.model_version"]) not in served_candidates(client, name).values()

    # A second, genuine retrain promotes; a maintainer rolls it back through the authority.
    second = team.b.deployment_run(team.accounts["maintainer-b"], recipe, {**STRONG, "training.max_steps": 160})
    team.wait_for(second, "COMPLETED", "the second retrain")
    champion = client.get_registered_model(name).aliases["champion"]
    rolled = team.b.run(
        BIN / "skillops", "rollback", recipe, "--reason", "team test", env=team.accounts["maintainer-b"], check=False
    )
    history = team.b.run(BIN / "skillops", "history", recipe, env=team.accounts["reader-b"]).stdout.splitlines()
    movers = [re.search(r" by (\S+)", line).group(1) for line in history]
    if champion == "2":  # the second retrain beat the first
        # What the promotion changed for the indexes: the neighbourhoods of the skills, in the decision.
        decision = prefect(team.accounts["worker-b"], "/artifacts/train-esco-decision/latest")
        assert "Index churn, version 1 -> 2" in decision["data"]
        assert "champion moved back from version 2" in rolled.stdout, rolled.output
        assert movers[0].startswith("worker-") and movers[-1] == "maintainer-b" and len(movers) == 3
    else:
        assert rolled.returncode == 1 and "first champion" in rolled.output
        assert len(movers) == 1
    policy = team.b.run(BIN / "skillops", "policy", recipe, env=team.accounts["reader-b"]).stdout
    assert "first policy of the model" in policy and json.loads(policy[policy.index("{") : policy.rindex("}") + 1])
