"""The gate: who decides that a candidate becomes champion, and how a caller reaches it.

- `local(...)`: one machine's store (`make train`): the authority runs in the pipeline's process,
  judging from the run's scores, recording in the registry's tags.
- `connect()`: what this process's settings name. A team's stack (SKILLOPS_GATE_URL, set by the
  account's env file) is reached over its TLS with the caller's account (`client.RemoteGate`);
  a process pointed at a tracking server behind TLS without it is refused, never judged here.
"""

from __future__ import annotations

import contextlib

from skillops.errors import PromotionError
from skillops.gate.authority import Authority
from skillops.gate.record import TagRecord
from skillops.settings import settings


def local(shared_lock: str | None = None) -> Authority:
    """The authority of a store this process owns. `shared_lock` names a lock the caller holds
    that promoters on every machine take (a Prefect global concurrency limit); without it, a file
    lock on this machine is taken, which only a store on this machine may rely on (a promotion
    checks that first: `registry.require_shared_lock`)."""
    from skillops.tracking import registry
    from skillops.tracking.runs import account, client

    lock = (lambda name: contextlib.nullcontext()) if shared_lock else registry.file_lock
    return Authority(TagRecord(client()), account(), lock)


def remote_url() -> str | None:
    """The promotion authority this process must ask, when it works with a team's stack."""
    from skillops.tracking.runs import tracking_uri
    from skillops.uris import safe_uri

    url = settings().gate_url
    if url is None and tracking_uri().startswith("https://"):
        raise PromotionError(
            f"The tracking server {safe_uri(tracking_uri())} is behind TLS, a team's stack, where only its promotion "
            "authority moves a champion, changes a policy or rolls back; SKILLOPS_GATE_URL is not set, so this "
            "process does not know where it is. Source the env file of your account (`skillops users add` made it): "
            "it sets SKILLOPS_GATE_URL."
        )
    return url


def connect(shared_lock: str | None = None):
    """The gate this process asks: the team's promotion authority (`client.RemoteGate`), else
    the local authority of its own store. Both answer `policy`, `policy_changes`, `history`,
    `change_policy` and `rollback` alike."""
    url = remote_url()
    if url is not None:
        from skillops.gate.client import RemoteGate

        return RemoteGate(url)
    return local(shared_lock)
