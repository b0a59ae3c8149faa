"""Artifacts in a directory or in S3 (issue 11, item 5), against moto's standalone S3 server as a
real process on loopback (tests/support/s3.py), with boto3, httpx and the agent's downloader."""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from pydantic import ValidationError

from agent.download import DownloadError, download
from fleet.artifact_store import ArtifactsSection, LocalArtifacts, S3Artifacts, open_artifacts
from fleet.errors import FleetError
from tests.support.s3 import MotoS3

pytestmark = pytest.mark.timeout(120)
SIZE = 1 << 20


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3]:
    with MotoS3() as server:
        yield server


@pytest.fixture
def artifact(tmp_path: Path) -> tuple[Path, bytes, str]:
    data = random.Random(11).randbytes(SIZE)
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    return path, data, hashlib.sha256(data).hexdigest()


@pytest.fixture(params=["fs", "s3"])
def store(request, moto, tmp_path):
    if request.param == "fs":
        return open_artifacts({"backend": "fs"}, tmp_path / "state")
    return open_artifacts(moto.section(), tmp_path / "state")


def test_config_picks_the_backend(moto, tmp_path):
    assert isinstance(open_artifacts({}, tmp_path), LocalArtifacts)
    assert isinstance(open_artifacts(moto.section(), tmp_path), S3Artifacts)
    with pytest.raises(ValidationError, match="needs a bucket"):
        ArtifactsSection(backend="s3")
    with pytest.raises(ValidationError):
        ArtifactsSection(backend="s3", bucket="b", presign_s=8 * 24 * 3600)  # SigV4 allows 7 days
    with pytest.raises(ValidationError):
        ArtifactsSection(backend="gcs")


def test_put_has_read_and_copy_out(store, artifact, tmp_path):
    path, data, sha = artifact
    assert not store.has(sha) and not store.has("not-a-digest")
    assert store.put(path) == (sha, SIZE)
    assert store.has(sha)
    assert store.put(path, sha) == (sha, SIZE)  # again: same key, nothing new
    with store.open_range(sha, SIZE - 1000) as f:
        assert f.read() == data[-1000:]
    store.copy_out(sha, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == data


def test_a_file_that_is_not_what_the_caller_hashed_is_refused(store, artifact):
    path, _data, sha = artifact
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(FleetError, match=f"expected {wrong}"):
        store.put(path, wrong)
    assert not store.has(wrong) and not store.has(sha)


def test_s3_keys_mirror_the_directory_layout(moto, artifact, tmp_path):
    path, _data, sha = artifact
    s3 = open_artifacts(moto.section(prefix="fleet-a/artifacts/"), tmp_path)
    s3.put(path)
    local = LocalArtifacts(tmp_path / "dir")
    local.put(path)
    rel = local.path(sha).relative_to(tmp_path / "dir").as_posix()
    listed = s3.client.list_objects_v2(Bucket=s3.bucket)["Contents"]
    assert [o["Key"] for o in listed] == [f"fleet-a/artifacts/{rel}"]
    assert rel == f"{sha[:2]}/{sha}"


def test_presigned_url_serves_the_bytes_and_ranges(moto, artifact, tmp_path):
    path, data, sha = artifact
    s3 = open_artifacts(moto.section(presign_s=900), tmp_path)
    s3.put(path)
    url = s3.url_for(sha)
    query = parse_qs(urlparse(url).query)
    assert query["X-Amz-Expires"] == ["900"] and query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert parse_qs(urlparse(s3.url_for(sha, 5)).query)["X-Amz-Expires"] == ["5"]
    with httpx.Client() as http:
        whole = http.get(url)
        assert whole.status_code == 200 and whole.content == data
        tail = http.get(url, headers={"Range": f"bytes={SIZE - 4096}-"})
        assert tail.status_code == 206
        assert tail.headers["content-range"] == f"bytes {SIZE - 4096}-{SIZE - 1}/{SIZE}"
        assert tail.content == data[-4096:]
    assert LocalArtifacts(tmp_path / "dir").url_for(sha) is None  # served by the replica itself


class _Redirect(BaseHTTPRequestHandler):
    """A fleet replica's artifact endpoint with S3 behind it: 307 to a fresh presigned URL."""

    store: S3Artifacts
    ranges: list[str | None]

    def do_GET(self) -> None:
        self.ranges.append(self.headers.get("Range"))
        self.send_response(307)
        self.send_header("Location", self.store.url_for(self.path.rsplit("/", 1)[-1]))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def test_agent_downloader_resumes_through_a_redirect_to_a_presigned_url(moto, artifact, tmp_path):
    path, data, sha = artifact
    s3 = open_artifacts(moto.section(), tmp_path)
    s3.put(path)
    handler = type("Handler", (_Redirect,), {"store": s3, "ranges": []})
    replica = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=replica.serve_forever, daemon=True).start()
    try:
        have = 700_000
        part = tmp_path / "dl" / "model.onnx.part"
        part.parent.mkdir()
        part.write_bytes(data[:have])  # an earlier attempt got this far
        progress: list[int] = []
        url = f"http://127.0.0.1:{replica.server_port}/artifacts/{sha}"
        download(url, part, size=SIZE, sha256=sha, on_progress=lambda n, _t: progress.append(n))
        assert part.read_bytes() == data
        assert handler.ranges == [f"bytes={have}-"]
        assert progress[0] > have  # appended to what was on disk: S3 answered the Range (206)
    finally:
        replica.shutdown()
        replica.server_close()


def test_agent_refuses_an_object_whose_bytes_do_not_match_its_name(moto, artifact, tmp_path):
    """A bucket object overwritten behind the fleet's back: the key still says sha, the bytes differ."""
    path, data, sha = artifact
    s3 = open_artifacts(moto.section(), tmp_path)
    s3.put(path)
    tampered = bytes([data[0] ^ 1]) + data[1:]
    s3.client.put_object(Bucket=s3.bucket, Key=s3.key(sha), Body=tampered)
    part = tmp_path / "x.part"
    with pytest.raises(DownloadError) as e:
        download(s3.url_for(sha), part, size=SIZE, sha256=sha)
    assert e.value.reason == "sha256_mismatch"
    assert not part.exists()  # the next attempt starts clean


def test_s3_errors_are_one_line_fleet_errors(moto, artifact, tmp_path):
    path, _data, sha = artifact
    section = moto.section()
    missing = open_artifacts(section.model_copy(update={"bucket": "no-such-bucket-here"}), tmp_path)
    with pytest.raises(FleetError, match="cannot upload s3://no-such-bucket-here/") as e:
        missing.put(path)
    assert "\n" not in str(e.value)
    with pytest.raises(FleetError, match="cannot read"):
        open_artifacts(section, tmp_path).open_range(sha)
