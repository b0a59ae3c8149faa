"""Fleet server under hostile or careless devices (issue 10): invalid device ids never stored and
stored ones never stop a start, a typed and bounded status schema with poison messages isolated,
sequence exhaustion refused per device, JSON errors from the admin API, and `active` stored only
for a version the fleet offered. Real Mosquitto, real MQTT clients, real HTTP on loopback."""

from __future__ import annotations

import json
import logging

import pytest

from edgekit import topics
from fleet.server import FleetServer
from tests.fleet.conftest import FLEET
from tests.fleet.hardening_support import device_users, stack
from tests.fleet.helpers import wait_for
from tests.support import mosquitto
from tests.support.convert_output import make_convert_output

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not mosquitto.available(), reason="mosquitto not installed"),
]

# Valid MQTT topic levels that the topic layer refuses as device ids.
BAD_IDS = ("bad id", "dév-1", "x" * 129, "a*b")
SITE = {"site": "x"}
MAX_SEQUENCE = 2**63 - 1  # the largest int64 / SQLite INTEGER


def status(device: str, state: str = "idle", **fields: object) -> dict[str, object]:
    return {"device": device, "state": state, "labels": SITE, **fields}


def start_rollout(st, version: str, **body: object) -> tuple[int, object]:
    with st.admin() as http:
        r = http.post("/api/rollouts", json={"model": "tiny", "version": version, "selector": SITE, **body})
    ctype = r.headers.get("content-type", "")
    return r.status_code, (r.json() if ctype.startswith("application/json") else r.text)


# ---- item 1: device ids ---------------------------------------------------------------------


def test_invalid_device_ids_on_device_topics_are_refused_and_never_stored(tmp_path):
    with stack(tmp_path, device_users(1)) as st:
        with st.sender() as s:
            for bad in BAD_IDS:
                s.publish(f"edgekit/{FLEET}/devices/{bad}/status", status(bad))
                s.publish(f"edgekit/{FLEET}/devices/{bad}/online", {"device": bad, "online": True})
        with st.sender("dev-000") as s:
            s.publish(topics.status(FLEET, "dev-000"), status("dev-000"))
        st.wait_processed(2 * len(BAD_IDS) + 1)
        assert [d["id"] for d in st.server.devices.list()] == ["dev-000"]
        assert st.server.outcomes.snapshot()["invalid_device_id"] == 2 * len(BAD_IDS)


def test_rollout_including_a_stored_invalid_id_then_restart_starts(tmp_path, caplog):
    """A database written before ids were validated: a device row and its desired state with an
    id the topic layer refuses. A rollout refuses that device alone; a restart still starts."""
    with stack(tmp_path, device_users(5)) as st:
        st.server.registry.publish(make_convert_output(tmp_path / "out"), "tiny", "1.0")
        st.server.registry.publish(make_convert_output(tmp_path / "out2", scale=2.0), "tiny", "2.0")
        pool = st.pool()
        try:
            for i in range(5):
                pool.add(f"dev-{i:03d}", SITE)
            pool.connect_all()
            wait_for(lambda: len(st.server.devices.list()) == 5, what="devices registered")
            with st.server.db.tx() as c:  # what an older server stored from the status topic
                c.execute(
                    "INSERT INTO devices (id, labels, online) VALUES (?, ?, 1)", ("bad id", json.dumps(SITE))
                )
            code, body = start_rollout(st, "1.0", success_threshold=1.0, device_timeout=60)
            assert code == 200, body
            rid = body["id"]
            wait_for(lambda: all(d.version == "1.0" for d in pool.devices.values()), 60, "devices on 1.0")
            with st.server.db.tx() as c:  # the desired row an older server stored for it
                c.execute(
                    "INSERT OR IGNORE INTO desired (device, payload, sequence, updated) VALUES (?, ?, 1, 0)",
                    ("bad id", b'{"signed":{}}'),
                )
            st.server.stop()

            caplog.set_level(logging.WARNING, logger="fleet.desired")
            srv = FleetServer(st.cfg)
            srv.start()  # raised ValueError("invalid device id") in resync() before
            try:
                assert "skipping the stored desired state of invalid device id" in caplog.text
                wait_for(lambda: srv.engine.status(rid)["state"] == "completed", 60, "rollout 1.0 completed")
                assert srv.engine.status(rid)["totals"]["active"] == 5
                row = srv.db.query(
                    "SELECT state, reason, sequence FROM rollout_devices WHERE device='bad id'"
                )[0]
                assert (row["state"], row["reason"], row["sequence"]) == (
                    "refused",
                    "invalid_device_id",
                    None,
                )
                rid2 = srv.engine.start("tiny", "2.0", SITE, [100], 1.0, 0.05, 60)
                wait_for(lambda: srv.engine.status(rid2)["state"] == "completed", 60, "rollout 2.0 completed")
                assert all(d.version == "2.0" for d in pool.devices.values())
            finally:
                srv.stop()
        finally:
            pool.stop()


# ---- item 2: typed, bounded status; poison isolated -----------------------------------------

POISON = [
    json.dumps(status("{d}", sequence=2**70)).encode(),  # OverflowError in SQLite before
    b"[" * 100_000 + b"]" * 100_000,  # RecursionError in json.loads before (and too large)
    b'{"device":"{d}","state":"idle","x":' + b"[" * 3000 + b"]" * 3000 + b"}",  # deep, under 64 KiB
    json.dumps(status("{d}", model="\ud800")).encode(),  # a lone surrogate: UnicodeEncodeError in SQLite
    b"\xff\xfe not utf-8",
    json.dumps(status("{d}", sequence=-1)).encode(),
    json.dumps(status("{d}", sequence=True)).encode(),
    json.dumps(status("{d}", labels={"k": {"nested": 1}})).encode(),
    json.dumps(status("{d}", model="m" * 10_000)).encode(),
    json.dumps(status("{d}", state="pwned")).encode(),
    json.dumps(status("somebody-else")).encode(),
    b"null",
    b"1e999999",
]


def test_poison_messages_are_isolated_within_one_batch(tmp_path):
    """60 devices' reports and a poison message after each, applied as ONE batch: before, one
    poison rolled back the whole batch (23 of 60 recorded); now every report is recorded."""
    with stack(tmp_path) as st:
        batch = []
        for i in range(60):
            dev = f"dev-{i:03d}"
            batch.append(
                (dev, "status", json.dumps(status(dev, "failed", reason="smoke_test")).encode(), None)
            )
            batch.append((dev, "status", POISON[i % len(POISON)].replace(b"{d}", dev.encode()), None))
        st.server._apply(batch)  # the engine thread's batch step, as it is
        devices = st.server.devices.list()
        assert len(devices) == 60 and all(d["state"] == "failed" for d in devices)
        counts = st.server.outcomes.snapshot()
        assert counts["accepted"] == 60
        assert sum(v for k, v in counts.items() if k != "accepted") == 60
        assert counts["too_large"] >= 1 and counts["too_deep"] >= 1 and counts["not_json"] >= 1
        assert counts["device_mismatch"] >= 1 and counts["invalid_status"] >= 1


def test_poison_over_mqtt_loses_no_other_report_and_logs_no_traceback(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fleet")
    with stack(tmp_path) as st, st.sender() as s:
        for i in range(60):
            dev = f"dev-{i:03d}"
            s.publish(topics.status(FLEET, dev), status(dev, "failed", reason="smoke_test"))
            s.publish(topics.status(FLEET, dev), POISON[i % len(POISON)].replace(b"{d}", dev.encode()))
        st.wait_processed(120)
        assert len(st.server.devices.list()) == 60
        assert st.server._thread is not None and st.server._thread.is_alive()
    assert "Traceback" not in caplog.text and "refused a message" in caplog.text


# ---- item 3: sequence 2**63-1 -----------------------------------------------------------------


def test_sequence_exhausted_device_is_refused_and_the_rollout_proceeds(tmp_path):
    with stack(tmp_path, device_users(5, "dev-max")) as st:
        st.server.registry.publish(make_convert_output(tmp_path / "out"), "tiny", "1.0")
        pool = st.pool()
        try:
            for i in range(5):
                pool.add(f"dev-{i:03d}", SITE)
            pool.connect_all()
            with st.sender("dev-max") as s:
                s.publish(topics.status(FLEET, "dev-max"), status("dev-max", "failed", sequence=MAX_SEQUENCE))
            wait_for(lambda: len(st.server.devices.list()) == 6, what="devices registered")
            code, body = start_rollout(st, "1.0", device_timeout=60)
            assert code == 200, body  # was a plain-text 500 (OverflowError on seq+1)
            rid = body["id"]
            wait_for(lambda: st.server.engine.status(rid)["state"] == "completed", 60, "rollout completed")
            final = st.server.engine.status(rid)
            assert final["totals"]["active"] == 5 and final["totals"]["refused"] == 1, final
            row = st.server.db.query("SELECT state, reason FROM rollout_devices WHERE device='dev-max'")[0]
            assert (row["state"], row["reason"]) == ("refused", "sequence_exhausted")
        finally:
            pool.stop()


def test_a_rollout_whose_every_device_is_refused_ends(tmp_path):
    with stack(tmp_path, device_users(0, "dev-max")) as st:
        st.server.registry.publish(make_convert_output(tmp_path / "out"), "tiny", "1.0")
        with st.sender("dev-max") as s:
            s.publish(topics.status(FLEET, "dev-max"), status("dev-max", "failed", sequence=MAX_SEQUENCE))
        wait_for(lambda: len(st.server.devices.list()) == 1, what="device registered")
        rid = st.server.engine.start("tiny", "1.0", SITE, [50, 100])
        wait_for(lambda: st.server.engine.status(rid)["state"] == "aborted", 30, "rollout ended")
        assert "no device could be offered" in st.server.engine.status(rid)["reason"]


def test_admin_api_answers_json_errors_never_plain_text_500(tmp_path):
    with stack(tmp_path) as st, st.admin() as http:
        bad_bodies = [
            b"[]",
            b'{"model": 1, "version": "1.0"}',
            b"[" * 5000 + b"]" * 5000,
            b"{not json",
            b'{"model": "tiny", "version": "1.0", "waves": "abc"}',
            b'{"model": "tiny", "version": "1.0", "devices": ["ok", "bad id"]}',
            b'{"model": "tiny", "version": "1.0", "device_timeout": 1e999}',
        ]
        for raw in bad_bodies:
            r = http.post("/api/rollouts", content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 400, (raw[:40], r.status_code, r.text[:200])
            assert r.headers["content-type"].startswith("application/json")
            assert r.json()["error"] and "Traceback" not in r.text
        for method, path in (("GET", "/api/nope"), ("DELETE", "/api/rollouts")):
            r = http.request(method, path)
            assert r.status_code in (404, 405) and r.json()["error"], (method, path, r.text)
        r = http.post("/api/rollouts", json={"model": "tiny", "version": "9.9"})
        assert r.status_code == 404 and r.json()["reason"] == "not_found"


# ---- item 4: active only if offered ------------------------------------------------------------


def test_active_version_is_stored_only_if_offered(tmp_path):
    with stack(tmp_path, device_users(1, "dev-new")) as st:
        st.server.registry.publish(make_convert_output(tmp_path / "out"), "tiny", "1.0")
        pool = st.pool()
        try:
            pool.add("dev-000", SITE)
            pool.connect_all()
            wait_for(lambda: len(st.server.devices.list()) == 1, what="device registered")
            rid = st.server.engine.start("tiny", "1.0", SITE)
            wait_for(lambda: st.server.engine.status(rid)["state"] == "completed", 60, "rollout completed")
            seen = st.processed()
            with st.sender("dev-000") as s:  # a version the fleet never sent it
                s.publish(
                    topics.status(FLEET, "dev-000"),
                    status("dev-000", "active", model="tiny", version="6.6.6"),
                )
            with st.sender("dev-new") as s:  # first contact: its enrolment baseline, then a forgery
                s.publish(
                    topics.status(FLEET, "dev-new"), status("dev-new", "active", model="tiny", version="0.9")
                )
                s.publish(
                    topics.status(FLEET, "dev-new"), status("dev-new", "active", model="tiny", version="0.8")
                )
                s.publish(
                    topics.status(FLEET, "dev-new"), status("dev-new", "active", model="tiny", version="0.9")
                )
            st.wait_processed(seen + 4)
            devs = {d["id"]: d for d in st.server.devices.list()}
            assert (devs["dev-000"]["active_version"], devs["dev-000"]["version"]) == ("1.0", "1.0")
            assert devs["dev-new"]["active_version"] == "0.9"
            assert st.server.outcomes.snapshot()["not_offered"] == 2
        finally:
            pool.stop()
