"""Telling the systems downstream that the champion moved: an MLflow webhook on the served model's
alias, and a small receiver that checks each delivery's signature and says what to re-index.

MLflow 3.17 signs a delivery with HMAC-SHA256 over "<delivery id>.<timestamp>.<body>" and the
webhook's secret, sent as `X-MLflow-Signature: v1,<base64>` with `X-MLflow-Timestamp` and
`X-MLflow-Delivery-Id` (the code's scheme; an older docs page shows another). The receiver
accepts a delivery only with a valid signature made in the last five minutes, once.

    skillops webhooks add --url https://indexer.example:8443/ --secret-file FILE   # as the admin
    skillops webhooks listen --port 8443 --secret-file FILE [--host 127.0.0.1]
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

EVENT = "model_version_alias.created"  # fired after the alias moved (it notifies; it does not gate)
MAX_AGE_SECONDS = 300
NAME = "skillops-champion-moved"


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers, body: bytes, seen: set[str], now: float | None = None) -> str | None:
    """Why a delivery is refused (None: it is genuine and new). `seen`: delivery ids already taken."""
    delivery, timestamp = headers.get("X-MLflow-Delivery-Id", ""), headers.get("X-MLflow-Timestamp", "")
    given = headers.get("X-MLflow-Signature", "")
    if not (delivery and timestamp.isdigit() and given):
        return "no signature"
    if not hmac.compare_digest(given, signature(secret, delivery, timestamp, body)):
        return "the signature does not match"
    if abs((now or time.time()) - int(timestamp)) > MAX_AGE_SECONDS:
        return "signed too long ago (a replay?)"
    if delivery in seen:
        return "delivered before (a replay?)"
    seen.add(delivery)
    return None


def what_to_reindex(payload: dict) -> str | None:
    """The line for a champion move of a served model; None for other aliases and models."""
    data = payload.get("data", {})
    if data.get("alias") != "champion" or str(data.get("name", "")).endswith("-candidates"):
        return None
    name, version = data["name"], data["version"]
    return (
        f"champion of {name} is now version {version}: re-embed your index with models:/{name}/{version}; its "
        f"embeddings of the recipe's documents are index/embeddings.parquet of that version's run"
    )


def add(url: str, secret: str) -> str:
    """The webhook on this tracking server (its admin's account; idempotent by name)."""
    from skillops.tracking.runs import client

    mlflow_client = client()
    for webhook in mlflow_client.list_webhooks():
        if webhook.name == NAME:
            mlflow_client.delete_webhook(webhook.webhook_id)
    return mlflow_client.create_webhook(NAME, url, events=[EVENT], secret=secret).webhook_id


def listen(host: str, port: int, secret_file: Path, on_move=print) -> ThreadingHTTPServer:
    """A receiver on host:port; `on_move` gets each re-index line. Call serve_forever() on it."""
    secret = secret_file.read_text("utf-8").strip()
    seen: set[str] = set()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            refused = verify(secret, self.headers, body, seen)
            if refused:
                self.send_response(401)
                self.end_headers()
                on_move(f"refused a delivery: {refused}")
                return
            self.send_response(200)
            self.end_headers()
            line = what_to_reindex(json.loads(body))
            if line:
                on_move(line)

        def log_message(self, *args):  # one line per delivery is printed above; not the access log
            pass

    return ThreadingHTTPServer((host, port), Receiver)
