"""The stack as strangers and the network see it: without credentials, with another CA, in plain
HTTP or on another address nothing answers; PostgreSQL admits only Optuna's role over TLS; of what
MLflow serves, only the routes skillops and its UI use are reachable, GraphQL only reads; password
guessing is refused per address; the stack's files are its owner's alone."""

from __future__ import annotations

import stat
import subprocess

from helpers import BIN, REPO
from teamstack import HOST, call, prefect


def test_without_credentials_another_ca_or_plain_http_nothing_answers(team):
    anonymous = [
        f"{team.mlflow_url}/api/2.0/mlflow/runs/search",
        f"{team.mlflow_url}/api/2.0/mlflow/registered-models/alias?name=served&alias=champion",
        f"{team.mlflow_url}/api/2.0/mlflow-artifacts/artifacts/1/anything/MLmodel",
        f"{team.mlflow_url}/gate/models/served",
        f"{team.prefect_url}/deployments/name/train-esco/weekly",
    ]
    for url in anonymous:
        body = {"experiment_ids": ["0"]} if url.endswith("search") else None
        assert call(url, team.ca, body)[0] == 401, url
    alias = {"name": "served", "alias": "champion", "version": "1"}
    assert call(f"{team.mlflow_url}/api/2.0/mlflow/registered-models/alias", team.ca, alias, method="POST")[0] == 401
    # A write to Prefect's API without credentials: its CSRF check answers (403) before its auth check would.
    deployment = prefect(team.accounts["worker-b"], "/deployments/name/train-esco/weekly")
    assert call(f"{team.prefect_url}/deployments/{deployment['id']}/create_flow_run", team.ca, {})[0] in (401, 403)
    assert call(f"{team.prefect_url}/deployments/name/train-esco/weekly", team.ca, user="skillops:guessed")[0] == 401
    plain = subprocess.run(
        ["curl", "-s", f"http://{HOST}:{team.ports['MLFLOW_PORT']}/api/2.0/mlflow/experiments/search?max_results=5"],
        capture_output=True,
        text=True,
    )
    assert "plain HTTP request was sent to HTTPS port" in plain.stdout and "experiments" not in plain.stdout
    on_loopback = subprocess.run(
        ["curl", "-sk", f"https://127.0.0.1:{team.ports['MLFLOW_PORT']}/health"], capture_output=True
    )
    assert on_loopback.returncode != 0  # the stack is reached at its network address only
    other_ca = team.tmp / "other-ca"
    subprocess.run(["bash", str(REPO / "scripts" / "tls.sh"), str(other_ca), HOST], check=True, capture_output=True)
    untrusted = team.b.run(
        BIN / "skillops", "models", team.recipe("served"),
        # No retries: a certificate refused is not an outage to wait out.
        env={**team.accounts["reader-b"], "MLFLOW_TRACKING_SERVER_CERT_PATH": str(other_ca / "ca.crt"),
             "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"},
        check=False, timeout=300,
    )  # fmt: skip
    assert untrusted.returncode != 0 and "CERTIFICATE_VERIFY_FAILED" in untrusted.output
    psql = ["psql", "-w", "-tAc", "select 1"]
    database = f"host={HOST} port={team.ports['PG_PORT']} sslmode=verify-full sslrootcert={team.ca}"
    worker = team.accounts["worker-b"]
    no_password = team.b.run(
        *psql, f"{database} dbname=optuna user=skillops_optuna", check=False, env={"PGPASSFILE": "/nonexistent"}
    )
    assert no_password.returncode != 0 and "no password supplied" in no_password.output
    for other in ("prefect", "gate"):
        refused = team.b.run(*psql, f"{database} dbname={other} user=skillops_{other}", check=False, env=worker)
        assert refused.returncode != 0 and "no pg_hba.conf entry" in refused.output
    without_tls = f"host={HOST} port={team.ports['PG_PORT']} sslmode=disable dbname=optuna user=skillops_optuna"
    refused = team.b.run(*psql, without_tls, check=False, env=worker)
    assert refused.returncode != 0 and "no encryption" in refused.output
    assert team.b.run(*psql, f"{database} dbname=optuna user=skillops_optuna", env=worker).stdout.strip() == "1"


def test_routes_skillops_never_uses_are_unreachable_and_graphql_only_reads(team):
    reader = team.user("reader-b")
    unused = [
        ("PUT", "/ajax-api/3.0/mlflow/assistant/config", {"providers": {}, "full_access": True}),
        ("POST", "/ajax-api/3.0/mlflow/assistant/message", {"message": "hi"}),
        ("POST", "/ajax-api/3.0/jobs/", {"function_fullname": "x", "params": {}}),
        ("POST", "/ajax-api/3.0/mlflow/demo/generate", {}),
        ("GET", "/gateway/mlflow/v1/models", None),
        ("POST", "/ajax-api/3.0/mlflow/mcp-servers", {"name": "x"}),
        ("POST", "/v1/traces", {}),
        ("POST", "/api/2.0/mlflow/users/create", {"username": "x", "password": "y" * 16}),
        ("POST", "/api/3.0/mlflow/roles/create", {"name": "x", "workspace": "default"}),
        ("POST", "/api/2.0/mlflow/webhooks", {"name": "x", "url": "https://example.invalid"}),
    ]
    for method, path, body in unused:
        status, text = call(team.mlflow_url + path, team.ca, body, reader, method=method)
        assert status == 404, (method, path, status, text)
    query = {"query": 'query { mlflowSearchRuns(input: {experimentIds: ["0"]}) { runs { info { runId } } } }'}
    mutation = {"query": 'mutation { testMutation(inputString: "x") { output } }'}
    assert call(f"{team.mlflow_url}/graphql", team.ca, query, reader)[0] == 200
    assert call(f"{team.mlflow_url}/graphql", team.ca, mutation, reader)[0] == 403
    assert call(f"{team.mlflow_url}/graphql", team.ca, query)[0] == 401  # and only with an account


def test_password_guessing_is_refused_and_the_right_password_still_works_elsewhere(team):
    """From one address (127.0.0.9), wrong passwords are refused with 429 within a few dozen
    tries, even the right one then; from another address the right password still works."""
    url = f"{team.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    statuses = [call(url, team.ca, user=f"reader-b:guess-{i}", source="127.0.0.9")[0] for i in range(40)]
    assert 429 in statuses and statuses.index(429) <= 30 and set(statuses) <= {401, 429}, statuses
    assert call(url, team.ca, user=team.user("reader-b"), source="127.0.0.9")[0] == 429
    assert call(url, team.ca, user=team.user("reader-b"), source="127.0.0.10")[0] == 200


def test_the_stacks_folders_and_files_are_private(team):
    loose = []
    for path in [team.servers, *team.servers.rglob("*")]:
        if path.is_symlink() or team.servers / "postgres" in path.parents or path.name.startswith(".s.PGSQL"):
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        allowed = 0o711 if path.is_dir() else 0o640
        if mode & ~allowed:
            loose.append(f"{path} {oct(mode)}")
    assert not loose, loose
