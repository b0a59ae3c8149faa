"""The fleet's keys on disk: offline root key, online release key, and the chain of root.json.

<state_dir>/keys/root.pem       0600  (move it offline after `keys init`; `rotate` needs it)
<state_dir>/keys/release.pem    0600  signs manifests (the server needs it)
<state_dir>/roots/<v>.root.json every root version ever issued (agents walk the chain)
<state_dir>/root.json           the current root (what new agents are enrolled with)
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from edgekit.trust import (
    Root,
    SigningKey,
    build_root,
    dumps,
    load_trusted_root,
    sign_root,
    update_root,
)
from fleet.errors import FleetError


class KeyStore:
    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir)
        self.keys_dir = self.dir / "keys"
        self.roots_dir = self.dir / "roots"

    @property
    def root_json(self) -> Path:
        return self.dir / "root.json"

    def exists(self) -> bool:
        return self.root_json.exists()

    def init(self, fleet: str, expires_days: int = 365, force: bool = False) -> Root:
        if self.exists() and not force:
            raise FleetError(f"keys already exist in {self.dir}", hint="use `edgekit fleet keys rotate`")
        root_key, release_key = SigningKey.generate(), SigningKey.generate()
        signed = build_root(
            [root_key],
            [release_key.public_hex],
            version=1,
            expires_in=timedelta(days=expires_days),
            fleet=fleet,
        )
        env = sign_root(signed, [root_key])
        root_key.save(self.keys_dir / "root.pem")
        release_key.save(self.keys_dir / "release.pem")
        self._write_root(env)
        return load_trusted_root(dumps(env))

    def rotate(self, expires_days: int = 365, new_root_key: bool = False) -> Root:
        """A new release key (and optionally a new root key) in root.json version+1."""
        old = self.current_root()
        old_root_key = self._load("root.pem")
        root_key = SigningKey.generate() if new_root_key else old_root_key
        release_key = SigningKey.generate()
        signed = build_root(
            [root_key],
            [release_key.public_hex],
            version=old.version + 1,
            expires_in=timedelta(days=expires_days),
            fleet=old.signed.get("fleet"),
        )
        env = sign_root(signed, [old_root_key, root_key])
        new = update_root(old, dumps(env))  # prove agents will accept it before anything is written
        if new_root_key:
            root_key.save(self.keys_dir / "root.pem")
        release_key.save(self.keys_dir / "release.pem")
        self._write_root(env)
        return new

    def _write_root(self, env: dict[str, Any]) -> None:
        self.roots_dir.mkdir(parents=True, exist_ok=True)
        data = json.dumps(env, indent=2, sort_keys=True) + "\n"
        (self.roots_dir / f"{env['signed']['version']}.root.json").write_text(data)
        tmp = self.root_json.with_suffix(".tmp")
        tmp.write_text(data)
        tmp.replace(self.root_json)

    def _load(self, name: str) -> SigningKey:
        path = self.keys_dir / name
        if not path.exists():
            raise FleetError(f"missing key {path}", hint="run: edgekit fleet keys init")
        return SigningKey.load(path)

    def release_key(self) -> SigningKey:
        return self._load("release.pem")

    def current_root(self) -> Root:
        if not self.exists():
            raise FleetError(f"no root.json in {self.dir}", hint="run: edgekit fleet keys init")
        return load_trusted_root(self.root_json.read_bytes())

    def root_chain(self) -> list[dict[str, Any]]:
        """Every root envelope, oldest first (published retained on edgekit/{f}/roots)."""
        files = sorted(self.roots_dir.glob("*.root.json"), key=lambda p: int(p.name.split(".")[0]))
        return [json.loads(p.read_text()) for p in files]
