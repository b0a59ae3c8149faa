"""Where artifacts live: a local directory (fleet.store, the default) or an S3-compatible bucket.

Both are content-addressed with the same layout, `<sha256[:2]>/<sha256>`: in S3 under `prefix`
(default `artifacts/`), so a directory synced to a bucket, or a bucket synced back, is valid as
it is. Manifests keep pointing at a fleet replica (`<http.public_url>/artifacts/<sha256>`),
because a signed manifest outlives any presigned URL: with S3 the replica answers with a
redirect to a fresh presigned GET (`url_for`), which the agent's downloader follows, and a
resumed download sends its `Range` again to the new URL.

An upload carries the SHA-256 it was hashed to (`ChecksumSHA256`), so S3 refuses bytes that
changed between hashing and sending instead of storing them under the wrong name.

    [artifacts]
    backend = "s3"                 # "fs" (default): <state_dir>/artifacts
    bucket = "edgekit-artifacts"
    endpoint_url = "https://s3.example.com"   # empty: AWS
    region = "eu-west-1"
    prefix = "artifacts/"
    presign_s = 3600               # lifetime of the presigned URLs devices get

S3 credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
~/.aws, an instance role), never from fleet.toml.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from pydantic import Field, model_validator

from edgekit.settings import Section
from fleet.errors import FleetError
from fleet.store import ArtifactStore as _Directory

_HEX = set("0123456789abcdef")
SINGLE_PUT_MAX = 64 << 20  # above this, a multipart upload (checksummed per part)
SIGV4_MAX_EXPIRY_S = 7 * 24 * 3600


class ArtifactsSection(Section):
    backend: Literal["fs", "s3"] = "fs"
    bucket: str = ""
    endpoint_url: str = ""  # empty: AWS itself
    region: str = ""
    prefix: str = "artifacts/"
    presign_s: int = Field(3600, gt=0, le=SIGV4_MAX_EXPIRY_S)

    @model_validator(mode="after")
    def _bucket_for_s3(self) -> ArtifactsSection:
        if self.backend == "s3" and not self.bucket:
            raise ValueError('backend = "s3" needs a bucket')
        return self


class ArtifactStore(Protocol):
    def put(self, src: Path, sha256: str | None = None) -> tuple[str, int]:
        """Store `src`; returns (sha256, size). With `sha256`, refuse a file that hashes otherwise."""

    def has(self, sha256: str) -> bool: ...

    def open_range(self, sha256: str, start: int = 0) -> IO[bytes]:
        """The bytes from offset `start` to the end (close it when done)."""

    def copy_out(self, sha256: str, dest: Path) -> None: ...

    def url_for(self, sha256: str, expires_s: int | None = None) -> str | None:
        """A URL devices may fetch directly, valid `expires_s`; None: serve it from this replica."""


def check_digest(sha256: str) -> str:
    if len(sha256) != 64 or not set(sha256) <= _HEX:
        raise ValueError("not a sha256 hex digest")
    return sha256


def hash_file(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def _refuse_mismatch(src: Path, expected: str | None, got: str) -> None:
    if expected is not None and expected != got:
        raise FleetError(f"{src}: sha256 is {got}, expected {expected}")


class LocalArtifacts:
    """fleet.store's directory behind the ArtifactStore interface."""

    def __init__(self, root: Path):
        self.dir = _Directory(root)

    def path(self, sha256: str) -> Path:
        return self.dir.path(sha256)

    def put(self, src: Path, sha256: str | None = None) -> tuple[str, int]:
        if sha256 is not None:
            _refuse_mismatch(src, sha256, hash_file(src)[0])
        return self.dir.put(src)

    def has(self, sha256: str) -> bool:
        return self.dir.has(sha256)

    def open_range(self, sha256: str, start: int = 0) -> IO[bytes]:
        f = open(self.dir.path(sha256), "rb")  # noqa: SIM115 - the caller closes it
        f.seek(start)
        return f

    def copy_out(self, sha256: str, dest: Path) -> None:
        self.dir.copy_out(sha256, dest)

    def url_for(self, sha256: str, expires_s: int | None = None) -> str | None:
        return None


class S3Artifacts:
    def __init__(self, client: Any, bucket: str, prefix: str = "artifacts/", presign_s: int = 3600):
        self.client, self.bucket, self.prefix, self.presign_s = client, bucket, prefix, presign_s

    def key(self, sha256: str) -> str:
        return f"{self.prefix}{check_digest(sha256)[:2]}/{sha256}"

    def has(self, sha256: str) -> bool:
        try:
            key = self.key(sha256)
        except ValueError:
            return False
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except self.client.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._error("look up", key, e) from None
        return True

    def put(self, src: Path, sha256: str | None = None) -> tuple[str, int]:
        digest, size = hash_file(src)
        _refuse_mismatch(src, sha256, digest)
        if self.has(digest):
            return digest, size  # same bytes, same key: publishing twice costs nothing
        key = self.key(digest)
        extra = {
            "ContentType": "application/octet-stream",
            "CacheControl": "public, max-age=31536000, immutable",
        }
        try:
            if size <= SINGLE_PUT_MAX:
                with open(src, "rb") as f:
                    self.client.put_object(
                        Bucket=self.bucket,
                        Key=key,
                        Body=f,
                        ChecksumSHA256=base64.b64encode(bytes.fromhex(digest)).decode(),
                        **extra,
                    )
            else:
                self.client.upload_file(
                    str(src), self.bucket, key, ExtraArgs={**extra, "ChecksumAlgorithm": "SHA256"}
                )
            stored = self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        except self.client.exceptions.ClientError as e:
            raise self._error("upload", key, e) from None
        if stored != size:
            raise FleetError(f"s3://{self.bucket}/{key}: stored {stored} bytes of {size}")
        return digest, size

    def open_range(self, sha256: str, start: int = 0) -> IO[bytes]:
        key = self.key(sha256)
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-")["Body"]
        except self.client.exceptions.ClientError as e:
            raise self._error("read", key, e) from None

    def copy_out(self, sha256: str, dest: Path) -> None:
        with self.open_range(sha256) as body, open(dest, "wb") as out:
            shutil.copyfileobj(body, out, 1 << 20)

    def url_for(self, sha256: str, expires_s: int | None = None) -> str | None:
        return str(
            self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self.key(sha256)},
                ExpiresIn=expires_s or self.presign_s,
            )
        )

    def _error(self, what: str, key: str, e: Any) -> FleetError:
        err = e.response.get("Error", {})
        return FleetError(
            f"cannot {what} s3://{self.bucket}/{key}: {err.get('Code')} {err.get('Message', '')}".rstrip()
        )


def s3_client(section: ArtifactsSection) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise FleetError(
            '[artifacts] backend = "s3" needs boto3', hint="pip install 'edgekit[scale]'"
        ) from None
    # Path-style addressing for a custom endpoint (MinIO, Ceph, moto...): no wildcard DNS needed.
    style = "path" if section.endpoint_url else "auto"
    return boto3.client(
        "s3",
        endpoint_url=section.endpoint_url or None,
        region_name=section.region or None,
        config=Config(signature_version="s3v4", s3={"addressing_style": style}),
    )


def open_artifacts(section: ArtifactsSection | dict[str, Any], state_dir: Path) -> ArtifactStore:
    """The store fleet.toml's [artifacts] names: `<state_dir>/artifacts` or the bucket."""
    s = section if isinstance(section, ArtifactsSection) else ArtifactsSection(**section)
    if s.backend == "fs":
        return LocalArtifacts(Path(state_dir) / "artifacts")
    return S3Artifacts(s3_client(s), s.bucket, s.prefix, s.presign_s)
