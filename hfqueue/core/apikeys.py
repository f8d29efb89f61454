"""API keys: random bearer tokens, kept at rest only as their SHA-256 (``HFQ_API_KEYS``).

A key is 32 random bytes, so a plain SHA-256 is enough to store it (nothing to brute-force, unlike a
password); the check compares digests in constant time. Each key has a name, and what a key creates
(jobs, batches, files) belongs to that name: another key can neither see nor cancel it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX = "sha256:"


def new_key() -> str:
    """A fresh API key to hand to a client (shown once; only its hash is configured)."""
    return f"hfq-{secrets.token_urlsafe(32)}"


def hash_key(key: str) -> str:
    """The value to put in ``HFQ_API_KEYS`` for ``key``.

    >>> hash_key("hfq-example")[:12]
    'sha256:d2759'
    """
    return PREFIX + hashlib.sha256(key.encode()).hexdigest()


def owner_of(key: str, hashes: dict[str, str]) -> str | None:
    """The name whose hash matches ``key``, or None. Every configured hash is compared (no early exit)."""
    digest = hash_key(key)
    found = None
    for name, stored in hashes.items():
        if hmac.compare_digest(digest, stored):
            found = name
    return found


def check_hashes(hashes: dict[str, str]) -> None:
    """Raise :class:`ValueError` unless every value is ``sha256:`` and 64 hex digits, and every name is usable."""
    for name, stored in hashes.items():
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"API key name {name!r}: use letters, digits, '-', '_' or '.'")
        hexpart = stored.removeprefix(PREFIX)
        if not stored.startswith(PREFIX) or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
            raise ValueError(f"API key {name!r}: give its hash, 'sha256:' and 64 hex digits (`hfq api-key {name}` "
                             "makes a key and prints it), never the key itself")
