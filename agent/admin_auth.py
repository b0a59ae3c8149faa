"""Who may use the repository/admin routes (load, unload, index): the holder of the admin token.

Inference, health and metadata stay open, as in KServe and Triton. Repository routes take a model
offline, so they need `Authorization: Bearer <token>`, the token being `[server] admin_token`
(or `admin_token_file`, or EDGEKIT_SERVER__ADMIN_TOKEN). With no token configured the routes are
disabled: secure by default, and the refusal names the key that enables them.
"""

from __future__ import annotations

import hmac

from agent.oip_types import OIPError

TOKEN_KEY = "[server] admin_token"
MIN_TOKEN_CHARS = 16  # a guessable token is no protection: refuse it at start-up


class AdminAuthError(OIPError):
    """A refused repository/admin request (401 carries a WWW-Authenticate challenge)."""

    def headers(self) -> dict[str, str]:
        if self.status != 401:
            return {}
        return {"WWW-Authenticate": 'Bearer realm="edgekit-admin"'}


def check_admin(authorization: str | None, token: str | None) -> None:
    """Pass when `authorization` is `Bearer <token>`; raise AdminAuthError otherwise."""
    if not token:
        raise AdminAuthError(
            403,
            f"repository routes are disabled: no admin token is configured (set {TOKEN_KEY}, "
            "admin_token_file, or EDGEKIT_SERVER__ADMIN_TOKEN)",
        )
    scheme, _, credential = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise AdminAuthError(401, "repository routes need 'Authorization: Bearer <admin token>'")
    # Constant-time: the comparison must not tell a local attacker how many leading bytes matched.
    if not hmac.compare_digest(credential.strip().encode(), token.encode()):
        raise AdminAuthError(401, "invalid admin token")
