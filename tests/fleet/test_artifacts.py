"""Registry + artifact HTTP: content addressing, Range/ETag resume verified by sha256."""

from __future__ import annotations

import copy
import tarfile

import httpx
import pytest

from edgekit.trust import verify_artifact
from fleet import config as fleet_config
from fleet.errors import FleetError
from fleet.http import UvicornThread, artifact_app
from fleet.keys import KeyStore
from fleet.server import open_state
from tests.support.convert_output import make_convert_output
from tests.support.net import free_port

pytestmark = pytest.mark.timeout(60)


class _Srv:
    def __init__(self, state):
        self.db, self.store, self.registry = open_state(state)
        self.keys = KeyStore(state)
        self.keys.init("f1")


def test_publish_and_resume_download(tmp_path):
    srv = _Srv(tmp_path / "state")
    out = make_convert_output(tmp_path / "out")
    stored = {a.key: a for a in srv.registry.publish(out, "tiny", "1.0")}
    assert set(stored) == {"onnx", "tfjs"}
    onnx, tfjs = stored["onnx"], stored["tfjs"]
    assert srv.store.path(onnx.sha256).read_bytes() == (out / "tiny.onnx").read_bytes()
    with tarfile.open(srv.store.path(tfjs.sha256)) as t:
        assert sorted(t.getnames()) == ["tfjs/group1-shard1of1.bin", "tfjs/model.json"]
    # Same content again under another version: same addresses (and the tar is reproducible).
    again = {a.key: a for a in srv.registry.publish(out, "tiny", "1.1")}
    assert again["tfjs"].sha256 == tfjs.sha256 and again["onnx"].sha256 == onnx.sha256
    rel = srv.registry.version("tiny", "1.0")
    assert rel["smoke_test"]["outputs"]["y"]["shape"] == [1, 3]
    with pytest.raises(FleetError):
        srv.registry.publish(out, "tiny", "1.0")

    port = free_port()
    http = UvicornThread(artifact_app(srv), "127.0.0.1", port, "t")
    http.start()
    try:
        url = onnx.manifest_entry(f"http://127.0.0.1:{port}")["url"]
        full = httpx.get(url)
        assert full.status_code == 200 and full.headers["etag"]
        etag = full.headers["etag"]
        dest = tmp_path / "dl.onnx"
        half = onnx.size // 2
        dest.write_bytes(full.content[:half])  # an interrupted download
        rest = httpx.get(url, headers={"Range": f"bytes={half}-", "If-Range": etag})
        assert rest.status_code == 206
        assert rest.headers["content-range"] == f"bytes {half}-{onnx.size - 1}/{onnx.size}"
        with dest.open("ab") as f:
            f.write(rest.content)
        verify_artifact(dest, onnx.size, onnx.sha256)
        # A stale validator gets the whole file, not a splice of two versions.
        stale = httpx.get(url, headers={"Range": f"bytes={half}-", "If-Range": '"other"'})
        assert stale.status_code == 200 and len(stale.content) == onnx.size
        assert httpx.get(f"http://127.0.0.1:{port}/artifacts/{'0' * 64}").status_code == 404
        assert httpx.get(f"http://127.0.0.1:{port}/artifacts/..%2Fetc").status_code == 404
        chain = httpx.get(f"http://127.0.0.1:{port}/roots.json").json()
        assert [r["signed"]["version"] for r in chain] == [1]
    finally:
        http.stop()
        srv.db.close()


def test_config_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEKIT_BROKER__PORT", "1999")
    monkeypatch.setenv("EDGEKIT_SERVER__STATE_DIR", str(tmp_path))
    cfg = fleet_config.load(None)
    assert cfg["broker"]["port"] == 1999 and fleet_config.state_dir(cfg) == tmp_path
    assert copy.deepcopy(fleet_config.DEFAULTS)["broker"]["embedded"] is True
