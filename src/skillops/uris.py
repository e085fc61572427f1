"""Store addresses as skillops shows them: never with a password. No heavy imports, so the recipe
checks can use it too."""

from __future__ import annotations

import re

# scheme://user:password@host...: the password part of a URI's user information.
_PASSWORD = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://[^/@:]*):[^/]*@")


def safe_uri(uri: str) -> str:
    """The URI with the password of its user part removed (`scheme://user@host/db` is what is
    left): the only form skillops prints, logs, tags or writes into an artifact."""
    return _PASSWORD.sub(r"\1@", uri)


def has_password(uri: str) -> bool:
    return safe_uri(uri) != uri
