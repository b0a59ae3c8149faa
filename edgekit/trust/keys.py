"""Ed25519 keys: generate, identify (keyid), sign, verify, store with 0600 permissions."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgekit.durable import atomic_write_bytes

KEYTYPE = "ed25519"


def keyid_for(public_hex: str) -> str:
    """keyid = sha256 (hex) of the 32 raw public-key bytes."""
    return hashlib.sha256(bytes.fromhex(public_hex)).hexdigest()


def public_key_dict(public_hex: str) -> dict[str, str]:
    """How a public key appears in root.json `keys`."""
    return {"keytype": KEYTYPE, "public": public_hex}


def verify_signature(public_hex: str, sig_hex: str, data: bytes) -> bool:
    try:
        pub = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
        pub.verify(bytes.fromhex(sig_hex), data)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


@dataclass
class SigningKey:
    """A private Ed25519 key (root or release)."""

    private: Ed25519PrivateKey

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @property
    def public_hex(self) -> str:
        raw = self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return raw.hex()

    @property
    def keyid(self) -> str:
        return keyid_for(self.public_hex)

    def sign(self, data: bytes) -> str:
        return self.private.sign(data).hex()

    def save(self, path: Path) -> None:
        """PEM (PKCS#8, unencrypted), created with 0600 so it is never world-readable, even briefly."""
        pem = self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        atomic_write_bytes(Path(path), pem, mode=0o600)  # durable too: a root may name it next

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return cls(key)
