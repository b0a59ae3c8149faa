"""root.json: which keys may sign releases, and how a new root replaces the old one.

signed = {
  "_type": "root", "version": 1, "expires": "2027-01-01T00:00:00Z", "fleet": "default",
  "keys": {keyid: {"keytype": "ed25519", "public": hex}},
  "roles": {"root": {"keyids": [...], "threshold": 1}, "release": {"keyids": [...], "threshold": 1}}
}
(typed and bounded in edgekit.trust.root_schema)

Expiry follows TUF (python-tuf ngclient's root update): the root a device was enrolled with and
every intermediate root of a rotation chain are trusted whether expired or not (a box that was
off for two years must still walk the chain, and must still start); only the newest trusted root
must be unexpired for anything it authorizes to be accepted (`Root.check_unexpired`, called by
the manifest verifier, refusal `expired_root`). Rotating works from an expired root, and is how
an expired fleet recovers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from edgekit.trust.envelope import check_threshold, dumps, parse, sign
from edgekit.trust.errors import EXPIRED_ROOT, ROOT_VERSION, WRONG_TYPE, VerificationError
from edgekit.trust.fields import validate_wire
from edgekit.trust.keys import SigningKey, keyid_for, public_key_dict
from edgekit.trust.root_schema import RootBody
from edgekit.trust.timeutil import in_future, parse_iso, utcnow

log = logging.getLogger(__name__)

ROLES = ("root", "release")
# python-tuf's UpdaterConfig.max_root_rotations: bounds the signature checks one `roots`
# message can cause; a device further behind catches up over several messages.
MAX_ROOT_ROTATIONS = 256


def parse_root_body(signed: dict[str, Any]) -> RootBody:
    """Typed view of a root's `signed` part: wrong_type or malformed, never another exception."""
    if signed.get("_type") != "root":
        raise VerificationError(WRONG_TYPE, f"expected _type 'root', got {str(signed.get('_type'))[:40]!r}")
    return validate_wire(RootBody, signed, "root.json")


@dataclass(frozen=True)
class Root:
    """A root.json whose shape was validated (the envelope is kept so it can be re-published
    verbatim). Signatures are checked by `load_trusted_root` / `update_root`, which build it."""

    envelope: dict[str, Any]
    body: RootBody = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.body is None:
            object.__setattr__(self, "body", parse_root_body(self.envelope["signed"]))

    @property
    def signed(self) -> dict[str, Any]:
        return self.envelope["signed"]

    @property
    def version(self) -> int:
        return self.body.version

    @property
    def expires(self) -> datetime:
        return parse_iso(self.body.expires)

    @property
    def keys(self) -> dict[str, dict[str, str]]:
        return {kid: k.model_dump() for kid, k in self.body.keys.items()}

    def role(self, name: str) -> tuple[list[str], int]:
        r = getattr(self.body.roles, name)
        return list(r.keyids), r.threshold

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires <= (now or utcnow())

    def check_unexpired(self, now: datetime | None = None) -> None:
        """Refuse (`expired_root`) to trust anything this root authorizes once it has expired."""
        if self.is_expired(now):
            raise VerificationError(
                EXPIRED_ROOT,
                f"trusted root v{self.version} expired at {self.body.expires}; "
                "the fleet must rotate its root (edgekit fleet keys rotate)",
            )

    def check(self, envelope: dict[str, Any], role: str) -> None:
        """Require the envelope to be signed by `role`'s threshold of this root's keys."""
        keyids, threshold = self.role(role)
        check_threshold(envelope, self.keys, keyids, threshold, role)


def load_trusted_root(raw: bytes | str, now: datetime | None = None, check_expiry: bool = False) -> Root:
    """The root an agent is enrolled with (shipped out of band): must be self-consistent.

    It is trusted because of how it arrived, but it still has to carry its own root
    threshold of signatures, so a corrupted or hand-edited file is caught. Its expiry is not
    checked by default (TUF): an expired enrolment root must not stop an agent from starting
    and walking the rotation chain; the verifier checks the final root instead.
    `check_expiry=True` refuses an expired one (`expired_root`).
    """
    env = parse(raw)
    root = Root(env)
    root.check(env, "root")
    if check_expiry:
        root.check_unexpired(now)
    return root


def update_root(trusted: Root, raw: bytes | str) -> Root:
    """Accept the next root: version = trusted+1, signed by the old root role AND the new one.

    Expiry is not checked here, neither the trusted root's nor the new one's (see module doc).
    """
    env = parse(raw)
    new = Root(env)
    if new.version != trusted.version + 1:
        raise VerificationError(
            ROOT_VERSION, f"root v{new.version} does not follow trusted v{trusted.version}"
        )
    trusted.check(env, "root")
    new.check(env, "root")
    return new


def _candidates(trusted: Root, raws: list[bytes | str | dict[str, Any]]) -> dict[int, list[bytes | str]]:
    """Newer root documents by claimed version; items that are not even JSON are skipped (a
    garbage entry in the list must not hide the valid ones)."""
    by_version: dict[int, list[bytes | str]] = {}
    for item in raws:
        try:
            raw = dumps(item) if isinstance(item, dict) else item
            v = parse(raw)["signed"].get("version")
        except (VerificationError, ValueError, RecursionError) as e:
            log.warning("ignoring an unreadable root document: %s", str(e)[:200])
            continue
        if isinstance(v, int) and not isinstance(v, bool) and v > trusted.version:
            by_version.setdefault(v, []).append(raw)
    return by_version


def update_root_chain(trusted: Root, raws: list[bytes | str | dict[str, Any]]) -> Root:
    """Walk root documents (any order, old ones ignored) from `trusted` to the newest reachable.

    Items may be raw bytes/str or already-parsed envelopes (the `roots` topic carries a JSON
    list). Several candidates for one version are tried in turn, so a forged entry cannot block
    the real one. Returns the newest root reached, expired or not; raises the refusal of the
    next version only when not a single step could be taken.
    """
    by_version = _candidates(trusted, raws)
    root, refusal = trusted, None
    for _ in range(MAX_ROOT_ROTATIONS):
        step = None
        for raw in by_version.get(root.version + 1, []):
            try:
                step = update_root(root, raw)
                break
            except VerificationError as e:
                refusal = refusal or e
        if step is None:
            break
        root, refusal = step, None
    if root is trusted and refusal is not None:
        raise refusal
    if refusal is not None:
        log.warning("root chain stops at v%d: %s", root.version, refusal)
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
