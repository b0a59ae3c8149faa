"""The fleet's keys on disk: offline root key, online release key, and the chain of root.json.

<state_dir>/keys/root.pem        0600  (move it offline after `keys init`; `rotate` needs it)
<state_dir>/keys/release.pem     0600  signs manifests (the server needs it)
<state_dir>/roots/<v>.root.json  every root version ever issued (agents walk the chain)
<state_dir>/root.json            the current root (what new agents are enrolled with)

Rotation is crash-safe (kill -9 or power loss at any point leaves a usable, consistent set):
1. the new keys are written durably as `keys/<role>.next.pem` - nothing names them yet;
2. `roots/<v+1>.root.json` is written (fsync + rename): this is the commit point;
3. derived files follow: the staged keys replace `root.pem`/`release.pem`, `root.json` is
   rewritten. Step 3 is `_settle`, which every `init`/`rotate` runs first, so a crash anywhere
   is finished (after the commit point) or undone (before it) by the next one.
Readers never repair: the current root is `root.json` walked forward through `roots/`, and a
role's key is whichever of `<role>.pem` / `<role>.next.pem` that root names, so a server that
starts between a crash and the next rotation signs with the right key. Rotations are serialized
by a lock file; the decision what to do with the files is the pure `plan_keys`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from edgekit.durable import atomic_write_bytes, fsync_dir
from edgekit.trust import (
    Root,
    SigningKey,
    VerificationError,
    build_root,
    dumps,
    load_trusted_root,
    sign_root,
    update_root,
    utcnow,
)
from fleet.errors import FleetError

log = logging.getLogger(__name__)

ROLES = ("root", "release")
MAX_EXPIRES_DAYS = 36500  # a root's expiry must stay a valid timestamp; 100 years is plenty
_CHAIN_FILE = re.compile(r"^([1-9][0-9]{0,18})\.root\.json$")


def _active(role: str) -> str:
    return f"{role}.pem"


def _staged(role: str) -> str:
    return f"{role}.next.pem"


@dataclass(frozen=True)
class KeyPlan:
    """What to do with one role's key files so they agree with the current root."""

    use: str  # the file holding the role's key, as things are on disk now
    promote: bool  # rename the staged file over the active one
    discard_staged: bool  # a staged key the root does not name: an aborted rotation


def plan_keys(role: str, role_keyids: set[str], on_disk: dict[str, str]) -> KeyPlan:
    """Decide, from keyids only, which key file serves `role` and how to settle the files.

    `on_disk` maps the present file names (`<role>.pem`, `<role>.next.pem`) to their keyids.
    The active file wins when the root names it; else a staged one the root names (a rotation
    that crashed after its commit point). FleetError when the root names neither.
    """
    active, staged = _active(role), _staged(role)
    if on_disk.get(active) in role_keyids:
        return KeyPlan(use=active, promote=False, discard_staged=staged in on_disk)
    if on_disk.get(staged) in role_keyids:
        return KeyPlan(use=staged, promote=True, discard_staged=False)
    raise FleetError(
        f"no {role} key on disk matches the current root ({', '.join(sorted(on_disk)) or 'no key files'})",
        hint=f"restore keys/{active} from your backup; `edgekit fleet keys init --force` re-enrols every agent",
    )


class KeyStore:
    def __init__(self, state_dir: Path, clock: Callable[[], datetime] = utcnow):
        self.dir = Path(state_dir)
        self.keys_dir = self.dir / "keys"
        self.roots_dir = self.dir / "roots"
        self.clock = clock  # injectable so tests can make roots that expire without waiting a year

    @property
    def root_json(self) -> Path:
        return self.dir / "root.json"

    def exists(self) -> bool:
        return self.root_json.exists()

    # ---- writing -------------------------------------------------------------------------------
    def init(self, fleet: str, expires_days: int = 365, force: bool = False) -> Root:
        _check_days(expires_days)
        with self._lock():
            if self.exists() and not force:
                raise FleetError(f"keys already exist in {self.dir}", hint="use `edgekit fleet keys rotate`")
            # Forced: the old chain is meaningless for the new keys; root.json goes first so a
            # crash in here reads as "no keys" and the next init starts over.
            self.root_json.unlink(missing_ok=True)
            for _, path in self._chain_files():
                path.unlink()
            root_key, release_key = SigningKey.generate(), SigningKey.generate()
            signed = build_root(
                [root_key],
                [release_key.public_hex],
                version=1,
                expires_in=timedelta(days=expires_days),
                fleet=fleet,
                now=self.clock(),
            )
            env = sign_root(signed, [root_key])
            self._stage(root_key, "root")
            self._stage(release_key, "release")
            self._write_chain(env)
            root = load_trusted_root(dumps(env))
            self._settle(root)
            return root

    def rotate(self, expires_days: int = 365, new_root_key: bool = False) -> Root:
        """A new release key (and optionally a new root key) in root.json version+1.

        Works from an expired root (TUF: agents walk expired intermediate roots)."""
        _check_days(expires_days)
        with self._lock():
            old = self.current_root()
            self._settle(old)  # finish or undo a rotation that crashed
            old_root_key = self._role_key("root", old)
            root_key = SigningKey.generate() if new_root_key else old_root_key
            release_key = SigningKey.generate()
            signed = build_root(
                [root_key],
                [release_key.public_hex],
                version=old.version + 1,
                expires_in=timedelta(days=expires_days),
                fleet=old.signed.get("fleet"),
                now=self.clock(),
            )
            env = sign_root(signed, [old_root_key, root_key])
            new = update_root(old, dumps(env))  # prove agents will accept it before anything is written
            self._stage(release_key, "release")
            if new_root_key:
                self._stage(root_key, "root")
            self._write_chain(env)  # the commit point
            self._settle(new)
            log.info("rotated root v%d -> v%d (new root key: %s)", old.version, new.version, new_root_key)
            return new

    def _stage(self, key: SigningKey, role: str) -> None:
        key.save(self.keys_dir / _staged(role))

    def _write_chain(self, env: dict[str, Any]) -> None:
        path = self.roots_dir / f"{env['signed']['version']}.root.json"
        atomic_write_bytes(path, _pretty(env))

    def _settle(self, root: Root) -> None:
        """Make the derived files agree with `root`: promote or discard staged keys, rewrite
        root.json, remove temp files a crash left (one may hold a private key)."""
        for role in ROLES:
            plan = plan_keys(role, set(root.role(role)[0]), self._keyids_on_disk(role))
            if plan.promote:
                os.replace(self.keys_dir / _staged(role), self.keys_dir / _active(role))
            elif plan.discard_staged:
                (self.keys_dir / _staged(role)).unlink()
        fsync_dir(self.keys_dir)
        if not self.root_json.exists() or self.root_json.read_bytes() != _pretty(root.envelope):
            atomic_write_bytes(self.root_json, _pretty(root.envelope))
        # Only our own temp files (others write in the state dir too), under our lock.
        for tmp in [
            *self.keys_dir.glob(".*.tmp"),
            *self.roots_dir.glob(".*.tmp"),
            *self.dir.glob(".root.json.*.tmp"),
        ]:
            tmp.unlink(missing_ok=True)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.keys_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    # ---- reading (never writes: a rotation may be running in another process) ----------------
    def _keyids_on_disk(self, role: str) -> dict[str, str]:
        found = {}
        for name in (_active(role), _staged(role)):
            path = self.keys_dir / name
            if path.exists():
                try:
                    found[name] = SigningKey.load(path).keyid
                except (ValueError, TypeError) as e:  # unreadable: as if absent, named below
                    log.warning("cannot read %s: %s", path, e)
        return found

    def _role_key(self, role: str, root: Root) -> SigningKey:
        for _ in range(3):  # a concurrent rotation may promote the staged file between the reads
            on_disk = self._keyids_on_disk(role)
            if not on_disk:
                raise FleetError(
                    f"missing key {self.keys_dir / _active(role)}", hint="run: edgekit fleet keys init"
                )
            plan = plan_keys(role, set(root.role(role)[0]), on_disk)
            try:
                return SigningKey.load(self.keys_dir / plan.use)
            except FileNotFoundError:
                continue
        raise FleetError(f"the {role} key kept moving while it was read", hint="retry")

    def release_key(self) -> SigningKey:
        """The key of the current root's release role (what manifests must be signed with)."""
        return self._role_key("release", self.current_root())

    def current_root(self) -> Root:
        """root.json, followed through any newer committed `roots/<v>.root.json` (a rotation
        that crashed before rewriting root.json). Expired or not: see edgekit.trust.root."""
        if not self.exists():
            raise FleetError(f"no root.json in {self.dir}", hint="run: edgekit fleet keys init")
        try:
            root = load_trusted_root(self.root_json.read_bytes())
            for version, path in self._chain_files():
                if version > root.version:
                    root = update_root(root, path.read_bytes())
        except VerificationError as e:
            raise FleetError(
                f"the root chain in {self.dir} does not verify: {e}",
                hint="restore root.json and roots/ from your backup",
            ) from None
        return root

    def _chain_files(self) -> list[tuple[int, Path]]:
        if not self.roots_dir.is_dir():
            return []
        found = [(m, p) for p in self.roots_dir.iterdir() if (m := _CHAIN_FILE.match(p.name))]
        return sorted((int(m.group(1)), p) for m, p in found)

    def root_chain(self) -> list[dict[str, Any]]:
        """Every root envelope, oldest first (published retained on edgekit/{f}/roots)."""
        return [json.loads(p.read_bytes()) for _, p in self._chain_files()]


def _pretty(env: dict[str, Any]) -> bytes:
    return (json.dumps(env, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _check_days(days: int) -> None:
    if not 1 <= days <= MAX_EXPIRES_DAYS:
        raise FleetError(f"expires_days must be 1..{MAX_EXPIRES_DAYS}, got {days}")
