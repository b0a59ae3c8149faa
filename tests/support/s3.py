"""A real S3-API server on loopback: moto's standalone server (`python -m moto.server`), a separate
process speaking the S3 REST API over HTTP, so boto3, presigned URLs and plain HTTP clients
talk to it exactly as to a bucket elsewhere.

    with MotoS3() as s3:
        s3.section(bucket) -> an [artifacts] section pointing at it; s3.client() -> boto3

What moto 5 does not emulate (checked): it accepts any credentials, does not verify an
upload's ChecksumSHA256 or Content-MD5, and serves a presigned URL after it expired.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from fleet.artifact_store import ArtifactsSection, s3_client
from tests.support.net import free_port, wait_port
from tests.support.procs import stop_process

REGION = "us-east-1"
# Any value works with moto; set so boto3's credential chain finds something (never real ones).
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "edgekit-test", "AWS_SECRET_ACCESS_KEY": "edgekit-test-secret"}


class MotoS3:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="moto-"))
        self.proc: subprocess.Popen | None = None
        self._saved_env: dict[str, str | None] = {}

    def start(self) -> MotoS3:
        for k, v in CREDENTIALS.items():
            self._saved_env[k] = os.environ.get(k)
            os.environ[k] = v
        log = open(self.dir / "moto.log", "wb")  # noqa: SIM115 - the child holds it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        try:
            wait_port(self.port, timeout=30)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"moto did not start: {(self.dir / 'moto.log').read_text()}") from None
        return self

    def section(self, bucket: str | None = None, **overrides: Any) -> ArtifactsSection:
        """An [artifacts] section for a new, empty bucket on this server."""
        bucket = bucket or f"edgekit-{uuid.uuid4().hex[:12]}"
        section = ArtifactsSection(
            backend="s3", bucket=bucket, endpoint_url=self.url, region=REGION, **overrides
        )
        s3_client(section).create_bucket(Bucket=bucket)
        return section

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=5)
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> MotoS3:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
