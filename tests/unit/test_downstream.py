"""What the systems downstream are told: how far the documents' neighbourhoods move between two
champions' embeddings, and champion moves as signed webhook deliveries that only a holder of the
secret can forge."""

import json
import time

import numpy as np
import pandas as pd
import pytest

from skillops.judging import index_churn
from skillops.tracking import webhooks


def _embeddings(vectors, version="1") -> pd.DataFrame:
    vectors = np.asarray(vectors, dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"s{i}" for i in range(len(vectors))]
    return pd.DataFrame(
        {"id": ids, "text": [f"skill {i}" for i in ids], "vector": list(vectors), "model_version": version}
    )


def test_the_same_embeddings_move_nothing_and_scrambled_ones_move_most_documents():
    rng = np.random.default_rng(0)
    old = rng.normal(size=(60, 8))
    same = index_churn.churn(_embeddings(old, "1"), _embeddings(old, "2"))
    assert same.changed_share == 0 and same.mean_overlap == 1 and same.documents == 60
    assert (same.previous_version, same.version) == ("1", "2")
    nudged = index_churn.churn(_embeddings(old, "1"), _embeddings(old + rng.normal(scale=0.3, size=old.shape), "2"))
    scrambled = index_churn.churn(_embeddings(old, "1"), _embeddings(rng.normal(size=old.shape), "2"))
    assert 0 < nudged.changed_share <= scrambled.changed_share and scrambled.mean_overlap < nudged.mean_overlap < 1
    assert len(scrambled.most_moved) == index_churn.MOST_MOVED
    assert scrambled.most_moved[0].overlap == min(m.overlap for m in scrambled.most_moved)
    assert set(scrambled.metrics()) == {"index_documents", "index_changed_share", "index_overlap_at_10"}
    assert "have other top-10 neighbours" in scrambled.markdown()


def _delivery(secret, payload, timestamp=None, delivery="d-1"):
    body = json.dumps(payload).encode()
    timestamp = str(int(timestamp or time.time()))
    headers = {
        "X-MLflow-Delivery-Id": delivery,
        "X-MLflow-Timestamp": timestamp,
        "X-MLflow-Signature": webhooks.signature(secret, delivery, timestamp, body),
    }
    return headers, body


MOVE = {
    "entity": "model_version_alias",
    "action": "created",
    "data": {"name": "esco", "alias": "champion", "version": "4"},
}


def test_a_signed_delivery_is_taken_once_and_a_forged_or_stale_one_refused():
    seen = set()
    headers, body = _delivery("s3cret-of-the-webhook", MOVE)
    assert webhooks.verify("s3cret-of-the-webhook", headers, body, seen) is None
    assert webhooks.verify("s3cret-of-the-webhook", headers, body, seen) == "delivered before (a replay?)"
    forged, _ = _delivery("a guessed secret", MOVE, delivery="d-2")
    assert webhooks.verify("s3cret-of-the-webhook", forged, body, seen) == "the signature does not match"
    tampered = body.replace(b'"4"', b'"1"')
    assert webhooks.verify(
        "s3cret-of-the-webhook", _delivery("s3cret-of-the-webhook", MOVE, delivery="d-3")[0], tampered, seen
    )
    stale, stale_body = _delivery("s3cret-of-the-webhook", MOVE, timestamp=time.time() - 3600, delivery="d-4")
    assert webhooks.verify("s3cret-of-the-webhook", stale, stale_body, seen) == "signed too long ago (a replay?)"
    assert webhooks.verify("s3cret-of-the-webhook", {}, body, seen) == "no signature"


@pytest.mark.parametrize(
    ("data", "line"),
    [
        ({"name": "esco", "alias": "champion", "version": "4"}, "champion of esco is now version 4: re-embed"),
        ({"name": "esco-candidates", "alias": "champion", "version": "9"}, None),
        ({"name": "esco", "alias": "staging", "version": "4"}, None),
    ],
)
def test_only_a_served_models_champion_move_asks_for_a_reindex(data, line):
    said = webhooks.what_to_reindex({"data": data})
    assert said == line if line is None else said.startswith(line)
