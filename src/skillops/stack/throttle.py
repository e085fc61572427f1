"""A limit on password guesses for the tracking server: MLflow's basic-auth app checks each
password but never counts the wrong ones, so an address could try passwords forever.

`authenticate` is the server's `authorization_function` (the auth ini names it): MLflow's own
basic-auth check, plus a count of the wrong credentials each client address sent in the last
`WINDOW_SECONDS`. From `MAX_FAILURES` on, that address is answered 429 whatever it sends, until
its failures age out; another address, with the right password, is not affected. The address is
the one nginx puts in X-Forwarded-For (it sets the header, replacing any the client sent, and
the server listens on 127.0.0.1 only, behind it). The count is per server process (the stack
runs one).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque

MAX_FAILURES = 10
WINDOW_SECONDS = 300

_failures: dict[str, deque[float]] = defaultdict(deque)
_lock = threading.Lock()


def _address(request) -> str:
    forwarded = request.headers.get("X-Forwarded-For", "")
    return forwarded.split(",")[0].strip() or request.remote_addr or "unknown"


def _recent(address: str, now: float) -> deque[float]:
    failures = _failures[address]
    while failures and failures[0] < now - WINDOW_SECONDS:
        failures.popleft()
    return failures


def authenticate():
    """MLflow's basic auth, refused with 429 for an address that guessed wrong too often."""
    from flask import make_response, request
    from mlflow.server.auth import authenticate_request_basic_auth

    address, now = _address(request), time.monotonic()
    with _lock:
        if len(_recent(address, now)) >= MAX_FAILURES:
            refused = make_response(f"Too many wrong credentials from {address}; try again in a few minutes.")
            refused.status_code = 429
            refused.headers["Retry-After"] = str(WINDOW_SECONDS)
            return refused
    result = authenticate_request_basic_auth()
    # Only wrong credentials count: a request without any is a client's first try (browsers ask
    # for credentials after a 401).
    if getattr(result, "status_code", None) == 401 and request.authorization is not None:
        with _lock:
            _recent(address, now).append(now)
    return result
