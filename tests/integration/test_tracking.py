"""Where runs keep their artifacts, and what skillops shows of a store's address."""

import pytest

from skillops.tracking import runs
from skillops.uris import safe_uri

# A made-up secret, put into the URIs at run time so that no URI with a password is in the code.
SECRET = "-".join(["not", "a", "real", "p@ss"])


@pytest.mark.parametrize(
    ("scheme", "user_at", "rest"),
    [
        ("postgresql://", "skillops", "@127.0.0.1:5432/mlflow"),
        ("postgresql+asyncpg://", "skillops", "@db/prefect"),
        ("https://", "user", "@mlflow.example.org"),
    ],
)
def test_uris_are_shown_without_their_password(scheme, user_at, rest):
    shown = safe_uri(scheme + user_at + ":" + SECRET + rest)
    assert shown == scheme + user_at + rest and SECRET not in shown


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "sqlite:////srv/mlruns/mlflow.db"])
def test_uris_without_a_password_are_shown_as_they_are(uri):
    assert safe_uri(uri) == uri


def test_artifact_locations_follow_the_store(tmp_path, monkeypatch):
    monkeypatch.delenv("SKILLOPS_ARTIFACT_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert runs.artifact_location("esco") == (tmp_path / "mlruns" / "artifacts" / "esco").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert runs.artifact_location("esco") is None  # the server's own default, readable everywhere
    for root, expected in [
        ("mlflow-artifacts:/", "mlflow-artifacts:/esco"),
        ("s3://bucket/skillops/", "s3://bucket/skillops/esco"),
        ("file:///srv/artifacts", "file:///srv/artifacts/esco"),
        (str(tmp_path / "shared"), (tmp_path / "shared").as_uri() + "/esco"),
    ]:
        monkeypatch.setenv("SKILLOPS_ARTIFACT_ROOT", root)
        assert runs.artifact_location("esco") == expected
