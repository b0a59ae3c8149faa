"""`edgekit inspect MODEL`: what a conversion will meet, in about a second, before any toolchain starts.

Inputs and outputs with their dynamic dims, the op histogram, per target the ops the conformance
matrix (docs/coverage.json, `make coverage`) saw it fail on, the legalization passes that would
apply, the dims a static-shape target needs, and the value range known for integer inputs.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import onnx

from converters import shapes
from converters.card import _spec
from converters.sources import check_onnx
from converters.synth import index_range
from edgekit import formats

MATRIX = Path(__file__).resolve().parents[1] / "docs" / "coverage.json"


def _ops(graph: onnx.GraphProto, counts: Counter) -> None:
    for node in graph.node:
        counts[node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"] += 1
        for attr in node.attribute:  # If / Loop / Scan bodies count too
            for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
                _ops(g, counts)


def known_failures(matrix: Path = MATRIX) -> dict[str, dict[str, str]]:
    """target -> {op: status and reason} for every op the matrix did not see matched."""
    if not matrix.exists():
        return {}
    data = json.loads(matrix.read_text())
    out: dict[str, dict[str, str]] = {}
    for case in data.get("cases", []):
        for target, res in case.get("results", {}).items():
            if res.get("status") != "matched":
                out.setdefault(target, {})[case.get("op", case.get("key"))] = (
                    f"{res.get('status')}: {res.get('reason') or ''}".strip(": ")[:160]
                )
    return out


def inspect_model(path: Path, targets: list[str] | None = None) -> dict[str, Any]:
    model = check_onnx(Path(path))
    inits = {i.name for i in model.graph.initializer}
    inputs = [_spec(v) for v in model.graph.input if v.name not in inits]
    outputs = [_spec(v) for v in model.graph.output]
    counts: Counter = Counter()
    _ops(model.graph, counts)
    failures = known_failures()
    io = []
    for t in inputs:
        entry: dict[str, Any] = {"name": t.name, "dtype": t.dtype, "shape": t.shape}
        dyn = [i for i, d in enumerate(t.shape) if shapes.is_dynamic(d)]
        entry["dynamic_axes"] = dyn
        if t.dtype.startswith(("int", "uint")):
            r = index_range(model, t.name)
            entry["valid_range"] = list(r) if r else None
        io.append(entry)
    per_target = {}
    with tempfile.TemporaryDirectory(prefix="edgekit-inspect-") as tmp:
        src = Path(tmp) / "model.onnx"
        onnx.save(model, str(src))
        from converters.legalize import legalize

        for target in targets or list(formats.TARGETS):
            fmt = formats.TARGETS[target]
            needs = []
            if fmt.shapes != "dynamic":
                for t in inputs:
                    needs += [
                        f"{t.name} axis {i}" for i, d in enumerate(t.shape) if i > 0 and shapes.is_dynamic(d)
                    ]
            try:
                passes = legalize(src, Path(tmp) / f"{target}.onnx", target)
            except Exception as e:  # inspection reports, it does not fail
                passes = [f"error: {type(e).__name__}: {e}"]
            known = failures.get(target, {})
            per_target[target] = {
                "needs_shapes": needs,
                "passes": passes,
                "known_unsupported": {op: known[op] for op in counts if op in known},
                "toolchain": fmt.toolchain,
            }
    return {
        "model": str(path),
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "inputs": io,
        "outputs": [{"name": t.name, "dtype": t.dtype, "shape": t.shape} for t in outputs],
        "ops": dict(counts.most_common()),
        "targets": per_target,
        "matrix": str(MATRIX) if MATRIX.exists() else None,
    }


def print_inspection(info: dict[str, Any], console) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"{info['model']} (opset {info['opset']})")
    for col in ("", "name", "dtype", "shape", "notes"):
        table.add_column(col)
    for t in info["inputs"]:
        notes = []
        if t["dynamic_axes"]:
            notes.append(f"dynamic axes {t['dynamic_axes']}")
        if "valid_range" in t:
            notes.append(
                f"ids in [{t['valid_range'][0]}, {t['valid_range'][1]})" if t["valid_range"] else "needs data"
            )
        table.add_row("input", escape(t["name"]), t["dtype"], str(t["shape"]), ", ".join(notes))
    for t in info["outputs"]:
        table.add_row("output", escape(t["name"]), t["dtype"], str(t["shape"]), "")
    console.print(table)
    console.print("ops: " + ", ".join(f"{k} x{v}" for k, v in info["ops"].items()), highlight=False)
    for target, t in info["targets"].items():
        line = f"passes {', '.join(t['passes']) or '-'}"
        if t["needs_shapes"]:
            line += f"; needs --input-shape for {', '.join(t['needs_shapes'])}"
        if t["known_unsupported"]:
            line += "; known to fail: " + "; ".join(
                f"{op} ({why})" for op, why in t["known_unsupported"].items()
            )
        console.print(f"[bold]{target}[/]: {escape(line)}", highlight=False)
