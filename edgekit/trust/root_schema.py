"""The typed `signed` part of a root.json (see edgekit.trust.root for the format).

Forward compatible: unknown fields and extra roles are ignored. Bounded: at most MAX_KEYS keys,
keyids and public keys are lowercase hex of the right length, a keyid is the sha256 of its
public key (TUF), every role keyid names a listed key, 1 <= threshold <= the role's keys.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints, model_validator

from edgekit.trust.fields import MAX_UINT63, WIRE, Label, Sha256Hex, Timestamp
from edgekit.trust.keys import keyid_for

MAX_KEYS = 64

PublicKeyHex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class KeySpec(BaseModel):
    model_config = WIRE
    keytype: Literal["ed25519"]
    public: PublicKeyHex


class RoleSpec(BaseModel):
    model_config = WIRE
    keyids: list[Sha256Hex] = Field(min_length=1, max_length=MAX_KEYS)
    threshold: int = Field(ge=1, le=MAX_KEYS)

    @model_validator(mode="after")
    def _reachable(self) -> RoleSpec:
        if self.threshold > len(set(self.keyids)):
            raise ValueError(f"threshold {self.threshold} > {len(set(self.keyids))} distinct keys")
        return self


class Roles(BaseModel):
    model_config = WIRE
    root: RoleSpec
    release: RoleSpec


class RootBody(BaseModel):
    model_config = WIRE
    version: int = Field(ge=1, le=MAX_UINT63)
    expires: Timestamp
    fleet: Label | None = None
    keys: dict[Sha256Hex, KeySpec] = Field(max_length=MAX_KEYS)
    roles: Roles

    @model_validator(mode="after")
    def _consistent(self) -> RootBody:
        for kid, key in self.keys.items():
            if keyid_for(key.public) != kid:
                raise ValueError(f"keyid {kid[:16]}... is not the sha256 of its public key")
        for name in ("root", "release"):
            missing = set(getattr(self.roles, name).keyids) - set(self.keys)
            if missing:
                raise ValueError(f"role {name} names {len(missing)} key(s) not in 'keys'")
        return self
