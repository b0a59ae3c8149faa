"""root.json: which keys may sign releases, and how a new root replaces the old one.

signed = {
  "_type": "root", "version": 1, "expires": "2027-01-01T00:00:00Z", "fleet": "default",
  "keys": {keyid: {"keytype": "ed25519", "public": hex}},
  "roles": {"root": {"keyids": [...], "threshold": 1}, "release": {"keyids": [...], "threshold": 1}}
}
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from edgekit.trust.envelope import check_threshold, dumps, parse, sign
from edgekit.trust.errors import EXPIRED, MALFORMED, ROOT_VERSION, WRONG_TYPE, VerificationError
from edgekit.trust.keys import SigningKey, keyid_for, public_key_dict
from edgekit.trust.timeutil import in_future, parse_iso, utcnow

ROLES = ("root", "release")


@dataclass(frozen=True)
class Root:
    """A verified root.json (the envelope is kept so it can be re-published verbatim)."""

    envelope: dict[str, Any]

    @property
    def signed(self) -> dict[str, Any]:
        return self.envelope["signed"]

    @property
    def version(self) -> int:
        return self.signed["version"]

    @property
    def expires(self) -> datetime:
        return parse_iso(self.signed["expires"])

    @property
    def keys(self) -> dict[str, dict[str, str]]:
        return self.signed["keys"]

    def role(self, name: str) -> tuple[list[str], int]:
        r = self.signed["roles"][name]
        return r["keyids"], r["threshold"]

    def check(self, envelope: dict[str, Any], role: str) -> None:
        """Require the envelope to be signed by `role`'s threshold of this root's keys."""
        keyids, threshold = self.role(role)
        check_threshold(envelope, self.keys, keyids, threshold, role)


def _validate_shape(signed: dict[str, Any]) -> None:
    try:
        if signed.get("_type") != "root":
            raise VerificationError(WRONG_TYPE, f"expected _type 'root', got {signed.get('_type')!r}")
        if not isinstance(signed["version"], int) or isinstance(signed["version"], bool):
            raise TypeError("version must be an int")
        parse_iso(signed["expires"])
        for kid, k in signed["keys"].items():
            if k.get("keytype") != "ed25519" or not isinstance(k.get("public"), str):
                raise TypeError(f"key {kid}: unsupported")
        for name in ROLES:
            r = signed["roles"][name]
            if not isinstance(r["threshold"], int) or r["threshold"] < 1:
                raise TypeError(f"role {name}: threshold must be an int >= 1")
            if not all(isinstance(k, str) for k in r["keyids"]):
                raise TypeError(f"role {name}: keyids must be strings")
    except VerificationError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise VerificationError(MALFORMED, f"root.json: {e}") from e


def load_trusted_root(raw: bytes | str, now: datetime | None = None, check_expiry: bool = True) -> Root:
    """The root an agent is enrolled with (shipped out of band): must be self-consistent.

    It is trusted because of how it arrived, but it still has to carry its own root
    threshold of signatures, so a corrupted or hand-edited file is caught.
    """
    env = parse(raw)
    _validate_shape(env["signed"])
    root = Root(env)
    root.check(env, "root")
    if check_expiry and root.expires <= (now or utcnow()):
        raise VerificationError(EXPIRED, f"root v{root.version} expired at {root.signed['expires']}")
    return root


def update_root(trusted: Root, raw: bytes | str, now: datetime | None = None) -> Root:
    """Accept the next root: version = trusted+1, signed by the old root role AND the new one.

    Expiry of intermediate roots is not checked (TUF does the same): a device that was offline
    for a year must still be able to walk the chain; only the final root must be unexpired
    (`update_root_chain`).
    """
    env = parse(raw)
    _validate_shape(env["signed"])
    new = Root(env)
    if new.version != trusted.version + 1:
        raise VerificationError(
            ROOT_VERSION, f"root v{new.version} does not follow trusted v{trusted.version}"
        )
    trusted.check(env, "root")
    new.check(env, "root")
    return new


def update_root_chain(
    trusted: Root, raws: list[bytes | str | dict[str, Any]], now: datetime | None = None
) -> Root:
    """Walk a list of root documents (any order, old ones ignored) from `trusted` to the newest.

    Items may be raw bytes/str or already-parsed envelopes (the `roots` topic carries a JSON list).
    """
    by_version: dict[int, bytes | str] = {}
    for item in raws:
        raw = dumps(item) if isinstance(item, dict) else item
        env = parse(raw)
        v = env["signed"].get("version")
        if isinstance(v, int) and v > trusted.version:
            by_version[v] = raw
    root = trusted
    while root.version + 1 in by_version:
        root = update_root(root, by_version[root.version + 1], now)
    if root is not trusted and root.expires <= (now or utcnow()):
        raise VerificationError(EXPIRED, f"root v{root.version} expired at {root.signed['expires']}")
    return root


def build_root(
    root_keys: list[SigningKey],
    release_public: list[str],
    version: int = 1,
    expires_in: timedelta = timedelta(days=365),
    root_threshold: int = 1,
    release_threshold: int = 1,
    fleet: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The unsigned `signed` part of a root.json (sign it with `sign_root`)."""

    keys = {k.keyid: public_key_dict(k.public_hex) for k in root_keys}
    keys.update({keyid_for(p): public_key_dict(p) for p in release_public})
    signed: dict[str, Any] = {
        "_type": "root",
        "version": version,
        "expires": in_future(expires_in, now),
        "keys": keys,
        "roles": {
            "root": {"keyids": sorted(k.keyid for k in root_keys), "threshold": root_threshold},
            "release": {
                "keyids": sorted(keyid_for(p) for p in release_public),
                "threshold": release_threshold,
            },
        },
    }
    if fleet is not None:
        signed["fleet"] = fleet
    return signed


def sign_root(signed: dict[str, Any], keys: list[SigningKey]) -> dict[str, Any]:
    """Sign a root. For a rotation pass the old root keys AND the new ones."""
    seen: dict[str, SigningKey] = {k.keyid: k for k in keys}
    return sign(signed, list(seen.values()))
