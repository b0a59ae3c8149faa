"""Provenance: the conversion report, cut down to what travels inside a signed manifest.

    {"source_sha256", "source_format", "source_origin", "calibration_sha256", "eval_sha256",
     "reference_top1", "edgekit_version", "converted_at", "published_at",
     "toolchains": {"tensorflow": {"lock": "0d1d1d579b76"}},
     "artifacts": {"onnx": {"sha256", "size", "target", "precision", "runtime", "toolchain",
                            "versions": {"onnxruntime": "1.20.1"},
                            "parity": {"max_abs_error", "cosine", "bound"},
                            "accuracy": {"top1", "top1_drop_pts"}, "latency_ms"}}},
     "drift": [{"name", "io", "count", "mean", "std", "edges", "hist", "classes", "conf"}]}

`drift` is the conversion's drift baseline (edgekit.drift: calibration inputs, reference
outputs), carried as report.json has it when it fits the schema and dropped when it does not;
agents histogram what they serve in its bins (agent.drift), the fleet scores them (fleet.drift).

The fleet builds it at publish from report.json (`from_report`), one row per published artifact
under the artifact's manifest key, with the sha256 and size of the bytes it stores; the manifest
schema bounds it (edgekit.trust.manifest_schema.Provenance) and the verifier refuses a row that
does not name its artifact's sha256 and size (`provenance_mismatch`). The agent shows the row of
the artifact it runs (`for_artifact`); `edgekit fleet models show` prints `lines`.

Everything here is pure: report dicts in, JSON-ready dicts out. A report value the manifest
could not carry (too long, non-finite, not a string) is left out, never an error: provenance
describes the release, it must not stop it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from edgekit import formats
from edgekit.trust.fields import validate_wire
from edgekit.trust.manifest_schema import (
    MAX_DRIFT_TENSORS,
    MAX_TOOLCHAINS,
    MAX_VERSIONS,
    DriftBaseline,
    Provenance,
)
from edgekit.trust.timeutil import parse_iso

_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]+$")
_HEX = re.compile(r"^[0-9a-f]{64}$")
_LOCK = re.compile(r"^[0-9a-f]{8,64}$")


def _label(value: Any, limit: int = 128) -> str | None:
    if not isinstance(value, str) or not value or not _PRINTABLE.fullmatch(value):
        return None
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _sha(value: Any) -> str | None:
    return value if isinstance(value, str) and _HEX.fullmatch(value) else None


def _num(value: Any, lo: float, hi: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and lo <= value <= hi else None


def _timestamp(value: Any) -> str | None:
    text = _label(value, 64)
    try:
        return text if text and parse_iso(text) else None
    except ValueError:
        return None


_DRIFT = TypeAdapter(list[DriftBaseline])


def _drift(value: Any) -> list[dict[str, Any]] | None:
    """The report's drift baseline as the manifest carries it, or None when it would not fit."""
    if not isinstance(value, list) or not value:
        return None
    try:
        return [d.model_dump(exclude_none=True) for d in _DRIFT.validate_python(value[:MAX_DRIFT_TENSORS])]
    except ValidationError:
        return None


def _pruned(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None and v != {}}


def _row(sha256: str, size: int, entry: Mapping[str, Any]) -> dict[str, Any]:
    target = _label(entry.get("target"))
    spec = formats.TARGETS.get(target) if target else None
    versions = entry.get("versions") if isinstance(entry.get("versions"), dict) else {}
    versions = {
        k: v for k, v in ((_label(k), _label(str(v))) for k, v in sorted(versions.items())) if k and v
    }
    return _pruned(
        {
            "sha256": sha256,
            "size": size,
            "target": target,
            "precision": _label(entry.get("precision")),
            "runtime": _label(entry.get("runtime")),
            "toolchain": spec.toolchain if spec else None,
            "versions": dict(list(versions.items())[:MAX_VERSIONS]),
            "parity": _pruned(
                {
                    "max_abs_error": _num(entry.get("max_abs_err"), 0, math.inf),
                    "cosine": _num(entry.get("cosine"), -1, 1),
                    "bound": _label(entry.get("parity_bound"), 512),
                }
            ),
            "accuracy": _pruned(
                {
                    "top1": _num(entry.get("top1"), 0, 1),
                    "top1_drop_pts": _num(entry.get("top1_drop_pts"), -100, 100),
                }
            ),
            "latency_ms": _num(entry.get("latency_ms"), 0, math.inf),
        }
    )


def from_report(
    report: Mapping[str, Any] | list[Any],
    artifacts: Mapping[str, tuple[str, int, Mapping[str, Any]]],
    published_at: str | None = None,
) -> dict[str, Any]:
    """Provenance of a release: `report` is report.json as parsed (an object, or the bare list
    older outputs wrote), `artifacts` maps each manifest key to (sha256, size, its report row)
    of the bytes the fleet stored. Validated against the manifest schema before it is returned."""
    top = report if isinstance(report, Mapping) else {}
    source = top.get("source") if isinstance(top.get("source"), Mapping) else {}
    reference = top.get("reference") if isinstance(top.get("reference"), Mapping) else {}
    locks = top.get("toolchains") if isinstance(top.get("toolchains"), Mapping) else {}
    doc = _pruned(
        {
            "source_sha256": _sha(source.get("sha256")),
            "source_format": _label(source.get("format")),
            "source_origin": _label(source.get("origin"), 512),
            "calibration_sha256": _sha(top.get("calibration_sha256")),
            "eval_sha256": _sha(top.get("eval_sha256")),
            "reference_top1": _num(reference.get("top1"), 0, 1),
            "edgekit_version": _label(top.get("edgekit_version")),
            "converted_at": _timestamp(top.get("created_at")),
            "published_at": published_at,
            "toolchains": {
                name: {"lock": lock}
                for name, lock in sorted(locks.items())[:MAX_TOOLCHAINS]
                if isinstance(lock, str) and _LOCK.fullmatch(lock) and _label(name)
            },
            "drift": _drift(top.get("drift")),
        }
    )
    doc["artifacts"] = {key: _row(sha, size, entry) for key, (sha, size, entry) in artifacts.items()}
    validate_wire(Provenance, doc, "provenance")
    return doc


def for_keys(provenance: Mapping[str, Any] | None, keys: set[str]) -> dict[str, Any] | None:
    """Only the rows of the artifacts a manifest carries (a manifest may carry fewer)."""
    if provenance is None:
        return None
    rows = provenance.get("artifacts") or {}
    return {**provenance, "artifacts": {k: v for k, v in rows.items() if k in keys}}


def for_artifact(provenance: Mapping[str, Any] | None, key: str) -> dict[str, Any] | None:
    """What a device shows for the artifact it runs: the release's fields plus that row."""
    if provenance is None:
        return None
    out = {k: v for k, v in provenance.items() if k != "artifacts"}
    row = (provenance.get("artifacts") or {}).get(key)
    if row is not None:
        out["artifact"] = {"key": key, **row}
    return out


def lines(provenance: Mapping[str, Any] | None) -> list[str]:
    """Human-readable lines for `edgekit fleet models show`."""
    if not provenance:
        return ["provenance: none (published without a conversion report)"]
    out = []
    for label, key in (
        ("source sha256", "source_sha256"),
        ("source", "source_origin"),
        ("source format", "source_format"),
        ("calibration sha256", "calibration_sha256"),
        ("eval sha256", "eval_sha256"),
        ("fp32 reference top-1", "reference_top1"),
        ("edgekit", "edgekit_version"),
        ("converted at", "converted_at"),
        ("published at", "published_at"),
    ):
        if provenance.get(key) is not None:
            out.append(f"{label + ':':<22}{provenance[key]}")
    if provenance.get("drift"):
        tensors = ", ".join(f"{d['io']} {d['name']}" for d in provenance["drift"])
        out.append(f"{'drift baseline:':<22}{tensors}")
    for name, tc in (provenance.get("toolchains") or {}).items():
        out.append(f"{'toolchain ' + name + ':':<22}lock {tc['lock']}")
    for key, row in (provenance.get("artifacts") or {}).items():
        parity, acc = row.get("parity") or {}, row.get("accuracy") or {}
        facts = [
            f"{row['size']} B",
            f"sha256 {row['sha256'][:16]}",
            row.get("target") and f"target {row['target']}",
            row.get("precision"),
            "max abs {:.3g}".format(parity["max_abs_error"]) if "max_abs_error" in parity else None,
            "cosine {:.6f}".format(parity["cosine"]) if "cosine" in parity else None,
            "top-1 {:.4f}".format(acc["top1"]) if "top1" in acc else None,
            "drop {:+.2f} pt".format(acc["top1_drop_pts"]) if "top1_drop_pts" in acc else None,
        ]
        out.append(f"artifact {key}: " + ", ".join(f for f in facts if f))
        if row.get("versions"):
            out.append("  versions: " + ", ".join(f"{k} {v}" for k, v in row["versions"].items()))
    return out
