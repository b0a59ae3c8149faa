"""The conversion report: one row per (target, mode), written as JSON and printed as a table."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

# Row statuses. Only "ok" and "skipped" leave the command's exit code at 0.
OK, SKIPPED, FAILED, MISMATCH, DROP = "ok", "skipped", "failed", "mismatch", "accuracy-drop"


@dataclass
class FileEntry:
    path: str  # relative to the output dir
    bytes: int
    sha256: str


@dataclass
class ArtifactReport:
    target: str
    mode: str
    precision: str
    status: str
    files: list[FileEntry] = field(default_factory=list)  # the artifact itself
    companions: list[FileEntry] = field(default_factory=list)  # the same model in another container
    bytes: int = 0  # size of `files`
    sha256: str | None = None  # of the main artifact (tree digest for directories)
    runtime: str | None = None
    runtime_note: str | None = None
    max_abs_err: float | None = None
    cosine: float | None = None
    parity_bound: str | None = None
    top1: float | None = None
    top1_drop_pts: float | None = None
    latency_ms: float | None = None
    convert_seconds: float | None = None
    versions: dict[str, str] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    error_kind: str | None = (
        None  # unsupported_op | needs_shapes | timeout | backend_crash | validation | ...
    )
    chosen_by: str | None = None  # "flag" or "profile:<name>"
    legalized: list[str] = field(default_factory=list)  # ONNX passes applied for this target
    input_shapes: dict[str, list[Any]] = field(
        default_factory=dict
    )  # what the artifact takes (None: dynamic)
    # The artifact's outputs on the validation samples, for callers of convert() (the conformance
    # matrix); in memory only, never written to report.json.
    outputs: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def main_file(self) -> str | None:
        return self.files[0].path if self.files else None


@dataclass
class Report:
    model: str
    source: dict[str, Any]
    out_dir: str
    reference: dict[str, Any]
    artifacts: list[ArtifactReport]
    max_drop: float | None = None
    profile: str | None = None
    edgekit_version: str = ""
    created_at: str = ""
    optimize: dict[str, Any] = field(default_factory=dict)
    export_seconds: dict[str, float] = field(default_factory=dict)  # per target, subprocesses included
    # Provenance (edgekit.provenance): what the artifacts were calibrated and judged on, and the
    # lock digest of each isolated toolchain that built one (converters.toolchains).
    calibration_sha256: str | None = None
    eval_sha256: str | None = None
    toolchains: dict[str, str] = field(default_factory=dict)
    # Drift baseline (edgekit.drift): per input and output tensor, from the calibration inputs and
    # the fp32 reference's outputs; travels in the signed manifest's provenance.
    drift: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(a.status in (OK, SKIPPED) for a in self.artifacts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for a in d["artifacts"]:
            a.pop("outputs", None)
        d["ok"] = self.ok
        return d

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Report:
        d = json.loads(Path(path).read_text())
        d.pop("ok", None)
        arts = []
        for a in d.pop("artifacts"):
            a["files"] = [FileEntry(**f) for f in a.get("files", [])]
            a["companions"] = [FileEntry(**f) for f in a.get("companions", [])]
            known = {f.name for f in fields(ArtifactReport)}
            arts.append(ArtifactReport(**{k: v for k, v in a.items() if k in known}))
        return cls(artifacts=arts, **d)


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_table(report: Report, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    ref = report.reference
    title = f"{report.model}: fp32 reference top-1 {_fmt(ref.get('top1'), '.4f')}, latency {_fmt(ref.get('latency_ms'), '.3f')} ms"
    table = Table(title=title, show_lines=False)
    for col in (
        "target",
        "precision",
        "status",
        "size",
        "max abs",
        "cosine",
        "top-1",
        "drop pt",
        "ms",
        "runtime",
    ):
        table.add_column(
            col, justify="right" if col in ("size", "max abs", "cosine", "top-1", "drop pt", "ms") else "left"
        )
    colours = {OK: "green", SKIPPED: "yellow", FAILED: "red", MISMATCH: "red", DROP: "red"}
    for a in report.artifacts:
        size = f"{a.bytes / 1024:.1f} KiB" if a.bytes else "-"
        table.add_row(
            a.target,
            a.precision,
            f"[{colours.get(a.status, 'white')}]{a.status}[/]",
            size,
            _fmt(a.max_abs_err, ".2e"),
            _fmt(a.cosine, ".6f"),
            _fmt(a.top1, ".4f"),
            _fmt(a.top1_drop_pts, "+.2f"),
            _fmt(a.latency_ms, ".3f"),
            (a.runtime or "-") + (" (simulated)" if a.runtime_note and "simulated" in a.runtime_note else ""),
        )
    console.print(table)
    for a in report.artifacts:
        if a.error:
            console.print(f"[red]{a.target} {a.precision}[/]: {escape(a.error)}", highlight=False)
        elif a.runtime_note:
            console.print(f"[dim]{a.target} {a.precision}: {escape(a.runtime_note)}[/]", highlight=False)
        if a.legalized:
            console.print(
                f"[dim]{a.target} {a.precision}: legalized: {', '.join(a.legalized)}[/]", highlight=False
            )
    console.print(f"report: {Path(report.out_dir) / 'report.json'}")
