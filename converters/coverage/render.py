"""The matrix as docs/coverage.json (everything) and docs/coverage.md (op x target, totals, reasons)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters.coverage.classify import FAILED, MATCHED, MISMATCH, REFUSED, STATUSES, Outcome, reason_group

TARGET_LABELS = {"coreml": "coreml (simulated)"}
CELL = {MATCHED: "✅", MISMATCH: "❌ mismatch", REFUSED: "⛔", FAILED: "💥"}
TOP_REASONS = 12


@dataclass
class Matrix:
    targets: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)  # {op, domain, key, case, results}
    meta: dict[str, Any] = field(default_factory=dict)

    def add(self, case_meta: dict[str, str], target: str, outcome: Outcome) -> None:
        for row in self.rows:
            if row["key"] == case_meta["key"]:
                break
        else:
            row = {**case_meta, "results": {}}
            self.rows.append(row)
        row["results"][target] = outcome

    def totals(self) -> dict[str, dict[str, int]]:
        out = {}
        for t in self.targets:
            c = Counter(r["results"][t].status for r in self.rows if t in r["results"])
            out[t] = {s: c.get(s, 0) for s in STATUSES}
            out[t]["ok_but_wrong"] = sum(
                1 for r in self.rows if t in r["results"] and r["results"][t].ok_but_wrong
            )
            out[t]["cases"] = sum(c.values())
        return out

    def ok_but_wrong(self) -> list[tuple[str, str, str]]:
        return [
            (r["key"], t, r["results"][t].reason)
            for r in self.rows
            for t in self.targets
            if t in r["results"] and r["results"][t].ok_but_wrong
        ]

    def reasons(self, target: str) -> list[tuple[str, str, list[str]]]:
        """(status, group, ops) for every non-matched outcome of a target, biggest group first."""
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for r in self.rows:
            o = r["results"].get(target)
            if o is not None and o.status != MATCHED:
                groups[(o.status, reason_group(o))].append(r["key"])
        return sorted(((s, g, ops) for (s, g), ops in groups.items()), key=lambda x: (-len(x[2]), x[1]))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Matrix:
        """Back from coverage.json (to re-render the markdown without re-running the cases)."""
        skip = {"targets", "totals", "versions", "ok_but_wrong", "cases"}
        m = cls(list(data["targets"]), meta={k: v for k, v in data.items() if k not in skip})
        for c in data["cases"]:
            meta = {k: v for k, v in c.items() if k != "results"}
            for t, o in c["results"].items():
                m.add(meta, t, Outcome(**o))
        for t, v in (data.get("versions") or {}).items():  # kept once in the header, not per case
            first = next((r["results"][t] for r in m.rows if t in r["results"]), None)
            if first is not None:
                first.versions = dict(v)
        return m

    def to_json(self) -> dict[str, Any]:
        return {
            **self.meta,
            "targets": self.targets,
            "totals": self.totals(),
            "versions": versions(self),
            "ok_but_wrong": [{"op": k, "target": t, "reason": why} for k, t, why in self.ok_but_wrong()],
            "cases": [
                {
                    **{k: v for k, v in r.items() if k != "results"},
                    "results": {t: _without_versions(o.to_dict()) for t, o in r["results"].items()},
                }
                for r in self.rows
            ],
        }


def _without_versions(d: dict[str, Any]) -> dict[str, Any]:
    d.pop("versions", None)  # the same for every case: once, in the header
    return d


def versions(matrix: Matrix) -> dict[str, dict[str, str]]:
    """Per target, the versions its rows report (the union over cases)."""
    out: dict[str, dict[str, str]] = {}
    for r in matrix.rows:
        for t, o in r["results"].items():
            out.setdefault(t, {}).update(o.versions or {})
    return {t: dict(sorted(v.items())) for t, v in out.items() if v}


def write_json(matrix: Matrix, path: Path) -> None:
    path.write_text(json.dumps(matrix.to_json(), indent=1, ensure_ascii=False) + "\n")


def _label(t: str) -> str:
    return TARGET_LABELS.get(t, t)


def _cell(o: Outcome | None) -> str:
    if o is None:
        return "-"
    if o.status == MATCHED:
        return CELL[MATCHED]
    text = o.reason.replace("|", "\\|")
    if o.ok_but_wrong:
        return f"❌ **ok but wrong**: {text}"
    if o.status == MISMATCH:
        return CELL[MISMATCH]
    if o.kind == "unsupported_op":
        return f"{CELL[o.status]} {text}"
    return f"{CELL[o.status]} {o.kind}"


def to_markdown(matrix: Matrix) -> str:
    m, totals = matrix.meta, matrix.totals()
    lines = [
        "# Conformance matrix: ONNX backend node tests through `edgekit convert`",
        "",
        "Generated by `make coverage` (`python -m converters.coverage`); do not edit by hand. A subset: "
        "`python -m converters.coverage --ops Relu,Erf --targets tflite --out /tmp/cov`; the gain of "
        "legalization passes: the same with `--without-passes all` (or named passes).",
        "",
        f"- Cases: {len(matrix.rows)} ONNX node tests, one per op type, generated by onnx "
        f"{m.get('onnx_version', '?')} (`collect_testcases`); selection in `converters/coverage/cases.py`.",
        "- Each case runs through edgekit's own pipeline (`convert(model, targets=[t], modes=['none'], "
        "eval_data=...)`) at fp32, one target at a time, and its outputs are compared with ONNX's "
        f"expected outputs: `np.allclose(rtol={m.get('rtol')}, atol={m.get('atol')})`.",
        "- Core ML cannot run on Linux: its column is the *simulated* path (the package's weights run "
        "in the torch intermediate), not Core ML kernels.",
        f"- Per case and target time limit: {m.get('timeout')} s. Run time: {m.get('run_seconds', 0) / 60:.1f} min "
        f"on {m.get('host', 'this machine')}. Generated {m.get('generated_at', '?')} at commit "
        f"{m.get('commit', '?')}.",
        *(
            [f"- **Measured without the legalization passes {', '.join(m['without_passes'])}.**"]
            if m.get("without_passes")
            else []
        ),
        "",
        "Legend: ✅ matched · ❌ mismatch (ran, outputs differ) · ⛔ refused (edgekit declined, with the "
        "reason) · 💥 failed (crash, timeout, validation error).",
        "",
        "## Totals",
        "",
        "| target | matched | mismatch | refused | failed | reported ok but wrong | cases |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for t in matrix.targets:
        c = totals[t]
        lines.append(
            f"| {_label(t)} | {c[MATCHED]} | {c[MISMATCH]} | {c[REFUSED]} | {c[FAILED]} | "
            f"{c['ok_but_wrong']} | {c['cases']} |"
        )
    wrong = matrix.ok_but_wrong()
    lines += ["", f"Reported ok but wrong: **{len(wrong)}**" + (":" if wrong else " (must stay 0).")]
    lines += [f"- {k} on {_label(t)}: {why}" for k, t, why in wrong]
    lines.append("")
    for t, v in versions(matrix).items():
        lines.append(f"- {_label(t)} versions: " + ", ".join(f"{k} {x}" for k, x in v.items()))
    lines += ["", "## Why cases did not match, per target", ""]
    for t in matrix.targets:
        lines += [f"### {_label(t)}", ""]
        reasons = matrix.reasons(t)
        if not reasons:
            lines += ["Every case matched.", ""]
            continue
        lines += ["| cases | status | reason | ops |", "|---:|---|---|---|"]
        for status, group, ops in reasons[:TOP_REASONS]:
            shown = ", ".join(ops)
            lines.append(f"| {len(ops)} | {status} | {group.replace('|', '/')} | {shown} |")
        rest = reasons[TOP_REASONS:]
        if rest:
            lines.append(
                f"| {sum(len(x[2]) for x in rest)} | | {len(rest)} other reasons (see coverage.json) | |"
            )
        lines.append("")
    header = "| op | node test | " + " | ".join(_label(t) for t in matrix.targets) + " |"
    lines += ["## Op x target", "", header, "|---|---|" + "---|" * len(matrix.targets)]
    for r in matrix.rows:
        cells = " | ".join(_cell(r["results"].get(t)) for t in matrix.targets)
        lines.append(f"| {r['key']} | `{r['name']}` | {cells} |")
    return "\n".join(lines) + "\n"


def write_markdown(matrix: Matrix, path: Path) -> None:
    path.write_text(to_markdown(matrix))
