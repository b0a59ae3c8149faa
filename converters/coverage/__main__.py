"""`python -m converters.coverage`: build the conformance matrix and write docs/coverage.{md,json}.

    python -m converters.coverage                        # every case, every target (make coverage)
    python -m converters.coverage --targets tflite --ops Relu,Erf --out /tmp/cov

The JSON is rewritten after every case, so a long run can be watched (and survives an
interruption with the cases done so far); the markdown is written at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

from converters.coverage import cases, classify, render
from converters.coverage.runner import CaseRunner

TARGETS = ("onnx", "tflite", "tfjs", "coreml")


def _commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        )
        return sha + ("+changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m converters.coverage", description=__doc__.splitlines()[0])
    p.add_argument("--targets", default=",".join(TARGETS), help="comma-separated (default: all four)")
    p.add_argument("--ops", default=None, help="comma-separated op types (default: every selected case)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per case and target")
    p.add_argument("--out", type=Path, default=Path("docs"), help="folder for coverage.md / coverage.json")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    p.add_argument(
        "--fresh-workers",
        action="store_true",
        help="one toolchain process per conversion, as `edgekit convert` does (slower; for comparison)",
    )
    p.add_argument(
        "--without-passes",
        default="",
        help="comma-separated legalization passes to leave out ('all': every one), to measure their gain",
    )
    p.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite coverage.md from the coverage.json in --out, without running any case",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        data = json.loads((args.out / "coverage.json").read_text())
        render.write_markdown(render.Matrix.from_json(data), args.out / "coverage.md")
        return 0
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        print(f"unknown target(s) {unknown}; choose from {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    ops = {o.strip() for o in args.ops.split(",")} if args.ops else None
    selected = cases.collect(ops)
    if ops and not selected:
        print(f"no selected case for ops {sorted(ops)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="edgekit-coverage-", dir=args.work))
    matrix = render.Matrix(
        targets,
        meta={
            "onnx_version": onnx.__version__,
            "rtol": classify.RTOL,
            "atol": classify.ATOL,
            "timeout": args.timeout,
            "commit": _commit(),
            "host": f"{platform.machine()} {platform.system()}, python {platform.python_version()}",
            "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "persistent_workers": not args.fresh_workers,
            "selected_cases": len(selected),
        },
    )
    dropped = [p.strip() for p in args.without_passes.split(",") if p.strip()]
    matrix.meta["without_passes"] = dropped
    runner = CaseRunner(args.timeout, persistent=not args.fresh_workers, without_passes=dropped)
    t_start = time.perf_counter()
    try:
        for i, case in enumerate(selected, 1):
            folder = cases.write(case, work / case.name)
            meta = {"op": case.op, "domain": case.domain, "key": case.key, "name": case.name}
            for target in targets:
                outcome = runner.run(folder, target, work / "out" / f"{case.name}-{target}")
                matrix.add(meta, target, outcome)
                print(
                    f"[{i}/{len(selected)}] {case.key:<28} {target:<7} {outcome.status:<9}"
                    f"{outcome.seconds or 0:6.1f}s  {outcome.reason[:110]}",
                    flush=True,
                )
            matrix.meta["run_seconds"] = round(time.perf_counter() - t_start, 1)
            render.write_json(matrix, args.out / "coverage.json")
    finally:
        runner.close()
        shutil.rmtree(work, ignore_errors=True)
    render.write_markdown(matrix, args.out / "coverage.md")
    for t, c in matrix.totals().items():
        print(
            f"{t:<7} matched {c['matched']:>3}  mismatch {c['mismatch']:>3}  refused {c['refused']:>3}  "
            f"failed {c['failed']:>3}  ok-but-wrong {c['ok_but_wrong']}  / {c['cases']}"
        )
    print(
        f"wrote {args.out / 'coverage.md'} and {args.out / 'coverage.json'} in {matrix.meta['run_seconds'] / 60:.1f} min"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
