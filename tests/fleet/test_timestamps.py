"""fleet.timestamps.with_iso: the ISO 8601 twin of every epoch field of the admin API's JSON."""

from __future__ import annotations

from fleet.timestamps import with_iso


def test_adds_iso_beside_epochs_at_any_depth_and_is_idempotent():
    doc = [{"id": "r-1", "created": 1780315200.5, "ended": None, "waves": [{"bake_started": 0}]}]
    out = with_iso(doc)
    assert out[0]["created"] == 1780315200.5 and out[0]["created_iso"] == "2026-06-01T12:00:00Z"
    assert out[0]["ended_iso"] is None
    assert out[0]["waves"][0]["bake_started_iso"] == "1970-01-01T00:00:00Z"
    assert with_iso(out) == out


def test_values_that_are_not_times_get_none_not_an_error():
    out = with_iso({"created": True, "ended": 1e300, "bake_started": "soon", "other": 5})
    assert (out["created_iso"], out["ended_iso"], out["bake_started_iso"]) == (None, None, None)
    assert "other_iso" not in out
