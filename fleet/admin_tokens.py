"""Admin API tokens, stored as sha256 digests in the database so that every replica accepts them.

A token is 192 random bits, shown once (written to <state_dir>/admin.token by `fleet serve`, or
printed by `edgekit fleet tokens create`); only its digest is stored. A plain unsalted sha256 is
enough: the token is random, not a password, so there is nothing to guess from the digest.
Tokens have names; issuing a name again replaces its token.
"""

from __future__ import annotations

import hashlib
import secrets
import time

from fleet import repository as repo
from fleet.db import BaseDatabase

BEARER = "Bearer "


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue(db: BaseDatabase, name: str) -> str:
    token = secrets.token_urlsafe(24)
    with db.tx() as c:
        repo.token_put(c, name, digest(token), time.time())
    return token


def authorized(db: BaseDatabase, header: str | None) -> bool:
    """Whether an `Authorization` header carries a token of this database."""
    if not header or not header.startswith(BEARER) or len(header) > 512:
        return False
    d = digest(header[len(BEARER) :].strip())
    # Looked up by digest: the timing of the lookup says nothing about the token.
    with db.lock:
        return repo.token_known(db.conn, d)
