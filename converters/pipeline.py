"""The one shared conversion pipeline: source -> optimize -> per target (legalize, export, validate).

Per-target work is delegated to backend plug-ins (converters/backends/); everything else —
data checks, reference outputs, parity, accuracy gate, report — happens here once for all targets.
One target failing never discards the others: every requested (target, mode) gets a report row.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import logging
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters import freeze, shapes, speccheck, validate
from converters.backends.base import ExportJob, ExportResult
from converters.card import build_card
from converters.data import Dataset, load_npz
from converters.legalize import legalize
from converters.optimize import optimize
from converters.report import DROP, FAILED, MISMATCH, OK, SKIPPED, ArtifactReport, FileEntry, Report
from converters.sources import load_source
from converters.synth import synthesize
from edgekit import __version__, drift, formats
from edgekit.errors import (
    ConversionError,
    DataError,
    EdgekitError,
    InvalidModelError,
    ToolchainMissingError,
)
from edgekit.modelcard import ModelCard
from edgekit.trust.artifact import sha256_file
from targets.runtimes.base import open_runtime

log = logging.getLogger(__name__)

EVAL_LIMIT = 512
GOLDEN_INPUT = "golden_input.npz"  # one sample, written next to report.json for `fleet publish`  # samples used for parity when no eval set is given


@dataclass
class ConvertRequest:
    """What `convert` was asked for (see its docstring)."""

    model: Any
    plan: dict[str, list[str]]  # target -> modes asked of it (unsupported ones become skipped rows)
    out: Path
    calibration: str | Path | None
    eval_data: str | Path | None
    max_drop: float | None
    example_inputs: Any
    layout: str
    name: str | None
    labels: list[str] | None
    input_names: list[str] | None
    output_names: list[str] | None
    chosen_by: dict[tuple[str, str], str]
    profile: str | None
    input_shapes: Any = None  # CLI strings or {name: dims}; see converters/shapes.py
    timeout: float | None = None  # seconds per target's conversion
    freeze_inputs: list[str] | None = None  # inputs made constants from the data (converters/freeze.py)


def _backend(target: str):
    module, cls = formats.TARGETS[target].backend.split(":")
    return getattr(importlib.import_module(module), cls)()


def _check_request(targets: Sequence[str], modes: Sequence[str]) -> None:
    unknown_t = [t for t in targets if t not in formats.TARGETS]
    if unknown_t:
        raise EdgekitError(f"unknown target(s) {unknown_t}", hint=f"choose from {', '.join(formats.TARGETS)}")
    unknown_m = [m for m in modes if m not in formats.ALL_MODES]
    if unknown_m:
        raise EdgekitError(
            f"unknown quantize mode(s) {unknown_m}", hint=f"choose from {', '.join(formats.ALL_MODES)}"
        )
    for m in modes:
        if not any(formats.support(t, m)[0] for t in targets):
            reasons = "; ".join(f"{t}: {formats.support(t, m)[1]}" for t in targets)
            raise EdgekitError(f"no requested target supports --quantize {m} ({reasons})")


def tree_digest(path: Path) -> str:
    """sha256 of a file, or of a directory's sorted (relative path, file sha256) list."""
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def _file_entries(files: Iterable[Path], out: Path) -> list[FileEntry]:
    entries = []
    for f in files:
        for p in [f] if f.is_file() else sorted(x for x in f.rglob("*") if x.is_file()):
            entries.append(FileEntry(p.relative_to(out).as_posix(), p.stat().st_size, sha256_file(p)))
    return entries


class _Progress:
    """A rich progress line on a terminal, nothing otherwise (e.g. --json or CI logs)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._p = None
        self._task = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._p = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._p.__enter__()
            self._task = self._p.add_task("starting", total=None)
        return self

    def step(self, text: str) -> None:
        log.info(text)
        if self._p is not None:
            self._p.update(self._task, description=text)

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)


def convert(
    model: Any,
    targets: Sequence[str] = ("onnx",),
    modes: Sequence[str] = ("none",),
    out: str | Path = "edgekit-out",
    calibration: str | Path | None = None,
    eval_data: str | Path | None = None,
    max_drop: float | None = None,
    example_inputs: Any = None,
    layout: str = "nchw",
    name: str | None = None,
    labels: list[str] | None = None,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    chosen_by: dict[tuple[str, str], str] | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    profile: str | None = None,
    progress: bool = False,
    input_shapes: Any = None,
    timeout: float | None = None,
    freeze_inputs: Sequence[str] | None = None,
) -> Report:
    """Convert `model` to every (target, mode) asked for, validate each, write DIR/report.json.

    Asked for: `targets` x `modes` (pairs a target does not support are reported as skipped),
    or exactly `pairs` when given (a device profile may give each target its own modes).

    `model`: an .onnx path, `sample:digits`, a .keras/.h5/SavedModel path, a torch nn.Module
    (with `example_inputs`) or a Keras model. `input_shapes`: {name: [int | (lo, hi) | None]} or
    `NAME:D,D,...` strings, for dynamic dims the data does not pin (converters/shapes.py).
    `timeout`: seconds one target's conversion may take before it is reported as timed out.
    `freeze_inputs`: inputs that are really parameters (axes, pads, weights), made constants
    with their one value in the data (converters/freeze.py). Returns the report; `report.ok` is False when any
    artifact failed, mismatched its reference, or dropped more than `max_drop` top-1 points.
    """
    if pairs is not None:  # per-target modes (device profiles); every pair must be supported
        pairs = list(dict.fromkeys((t, m) for t, m in pairs))
        targets, modes = [t for t, _ in pairs], [m for _, m in pairs]
    modes = list(dict.fromkeys(modes))
    _check_request(targets, modes)
    if pairs is not None:
        bad = [f"{t} {m}: {formats.support(t, m)[1]}" for t, m in pairs if not formats.support(t, m)[0]]
        if bad:
            raise EdgekitError(f"unsupported (target, mode) pairs: {'; '.join(bad)}")
        plan = {t: [m for tt, m in pairs if tt == t] for t in formats.TARGET_ORDER if t in set(targets)}
    else:
        plan = {t: list(modes) for t in formats.TARGET_ORDER if t in set(targets)}
    if layout not in ("nchw", "nhwc"):
        raise EdgekitError(f"unknown layout {layout!r}", hint="choose nchw or nhwc")
    out = Path(out)
    req = ConvertRequest(
        model,
        plan,
        out,
        calibration,
        eval_data,
        max_drop,
        example_inputs,
        layout,
        name,
        labels,
        input_names,
        output_names,
        chosen_by or {},
        profile,
        input_shapes,
        timeout,
        list(freeze_inputs or []),
    )
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".edgekit-work-", dir=out))
    try:
        with _Progress(progress) as prog:
            return _run(req, work, prog)
    except EdgekitError:
        raise
    except Exception as e:  # never a traceback: name what broke, keep the details for -v
        log.debug("convert failed", exc_info=True)
        raise ConversionError(
            f"conversion failed: {type(e).__name__}: {_first_line(e)}",
            hint="rerun with -v for the details; this is an edgekit bug if the model runs in onnxruntime",
        ) from e
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _data_files(req: ConvertRequest, source) -> tuple[Path | None, Path | None]:
    """The calibration and evaluation files used (a bundled sample brings its own)."""
    calibration, eval_data = req.calibration, req.eval_data
    if source.sample:
        calibration = calibration or source.sample_file("calib")
        eval_data = eval_data or source.sample_file("eval")
    return (Path(calibration) if calibration else None, Path(eval_data) if eval_data else None)


def _file_sha256(path: Path | None) -> str | None:
    return sha256_file(path) if path is not None and path.is_file() else None


def _toolchain_locks(plan: dict[str, list[str]]) -> dict[str, str]:
    """Lock digest of each isolated toolchain a planned target runs in (provenance)."""
    from converters.toolchains.manager import resolve

    names = {formats.TARGETS[t].toolchain for t in plan if t in formats.TARGETS}
    return {n: resolve(n).digest() for n in sorted(x for x in names if x)}


def _load_data(req: ConvertRequest, source, card: ModelCard) -> tuple[Dataset | None, Dataset | None]:
    calibration, eval_data = _data_files(req, source)
    calib = load_npz(calibration, card, "calibration") if calibration else None
    needs_calib = [
        t
        for t, modes in req.plan.items()
        for m in modes
        if m in formats.NEEDS_CALIBRATION and formats.support(t, m)[0]
    ]
    if needs_calib and calib is None:
        raise DataError(
            f"--quantize int8 needs calibration data for {', '.join(dict.fromkeys(needs_calib))}",
            hint="pass --calibration CALIB.npz (arrays keyed by input name; ~200 representative samples)",
        )
    if req.max_drop is not None and eval_data is None:
        raise DataError("--max-drop needs --eval EVAL.npz with a 'labels' array")
    evaluation = (
        load_npz(eval_data, card, "evaluation", need_labels=req.max_drop is not None) if eval_data else None
    )
    return calib, evaluation


def _reference(path: Path, data: Dataset, batchable: bool) -> tuple[Any, dict[str, np.ndarray]]:
    """fp32 outputs in ONNX Runtime: the judge of every artifact. A model ORT cannot run on these
    inputs is the user's input problem, said in one line."""
    try:
        rt = open_runtime(path)
        return rt, validate.run_samples(rt, data.inputs, batchable)
    except EdgekitError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidModelError(
            f"onnxruntime cannot run the model on the validation inputs: {first[:400]}",
            hint="check --input-shape and the --eval/--calibration data against the model's inputs",
        ) from e


def _drift_baseline(
    inputs: Dataset, reference: dict[str, np.ndarray], card: ModelCard
) -> list[dict[str, Any]]:
    """What served traffic is compared with (edgekit.drift): the calibration inputs (the data the
    artifacts were tuned for) and the reference's outputs. Describes the release, never stops it."""
    try:
        return drift.baseline(inputs.inputs, reference, card.task == "classification")
    except Exception as e:  # a tensor the summary cannot reduce: no baseline, said once
        log.warning("no drift baseline: %s: %s", type(e).__name__, _first_line(e))
        return []


def _run(req: ConvertRequest, work: Path, prog: _Progress) -> Report:
    out, max_drop = req.out, req.max_drop
    prog.step("importing model")
    source = load_source(req.model, work / "source", req.example_inputs, req.input_names, req.output_names)
    prog.step("optimizing (shape inference, onnxslim)")
    fp32 = work / "model.onnx"
    opt_info = optimize(source.onnx_path, fp32)
    card = build_card(fp32, source, name=req.name, labels=req.labels)
    calib, evaluation = _load_data(req, source, card)
    ref_source = source.onnx_path
    if req.freeze_inputs:
        prog.step(f"freezing {', '.join(req.freeze_inputs)}")
        values = freeze.values(req.freeze_inputs, evaluation or calib)
        ref_source = work / "source-frozen.onnx"
        freeze.freeze(source.onnx_path, ref_source, values)
        opt_info = optimize(ref_source, fp32)  # the constants fold into what they parameterize
        card = build_card(fp32, source, name=req.name, labels=req.labels)
        calib, evaluation = (d.without(values) if d else None for d in (calib, evaluation))
    given = shapes.parse_input_shapes(req.input_shapes)
    stacked = evaluation or calib
    plan = shapes.plan_shapes(card, given, shapes.sample_shapes(stacked.inputs) if stacked else None)
    data = evaluation or (calib.head(EVAL_LIMIT) if calib else synthesize(card, fp32, plan.run_shapes()))
    batchable = shapes.batchable(card)
    inputs_npz = data.save(work / "inputs.npz")
    # The golden input for on-device smoke tests: a real sample, so int8 artifacts are judged
    # in-distribution (a random tensor falls outside the calibrated ranges).
    data.save_feed(out / GOLDEN_INPUT)
    calib_npz = calib.save(work / "calibration.npz") if calib else None

    prog.step("fp32 reference (onnxruntime)")
    ref_rt, reference = _reference(ref_source, data, batchable)
    ref_info: dict[str, Any] = {
        "runtime": "onnxruntime",
        "latency_ms": validate.latency_ms(ref_rt, data.feed(0)),
        "samples": len(data),
        "data": str(data.path) if data.path else "synthesized (seeded)",
        "input_shapes": plan.run_shapes(),
        **({"frozen_inputs": req.freeze_inputs} if req.freeze_inputs else {}),
    }
    if data.labels is not None:
        ref_info["top1"] = validate.top1(reference, data.labels)
    spec = speccheck.check(ref_source, data.feed(0), ref_rt.run(data.feed(0)))
    ref_info["spec_check"] = spec.to_dict()

    rows: list[ArtifactReport] = []
    export_seconds: dict[str, float] = {}  # wall time of each target's whole export step
    ctx = _TargetContext(
        fp32,
        card,
        out,
        work,
        inputs_npz,
        calib_npz,
        req.layout,
        plan,
        batchable,
        req.timeout,
        shapes.recurrent(fp32),
    )
    for target, modes in req.plan.items():
        wanted = [m for m in modes if formats.support(target, m)[0]]
        for m in modes:
            ok, why = formats.support(target, m)
            if not ok:
                rows.append(
                    ArtifactReport(target, m, m, SKIPPED, error=f"skipped: {why}", error_kind="skipped")
                )
        if not wanted:
            continue
        prog.step(f"{target}: legalizing and converting ({', '.join(wanted)})")
        t0 = time.perf_counter()
        results, legalized, dims = _export_target(target, wanted, ctx)
        export_seconds[target] = round(time.perf_counter() - t0, 3)
        for res in results:
            prog.step(f"{target} {res.mode}: validating in {formats.TARGETS[target].runtime}")
            row = _validate(target, res, card, data, reference, ref_info, out, batchable)
            row.chosen_by = req.chosen_by.get((target, res.mode), "flag")
            row.legalized, row.input_shapes = legalized, dims
            rows.append(row)

    if spec.status == "disagrees":  # every row was judged by a reference that is itself wrong
        for row in rows:
            if row.status == OK:
                row.status = MISMATCH
                row.error = (
                    f"the fp32 reference (onnxruntime) departs from the ONNX specification (onnx.reference) "
                    f"on output {spec.output}: max abs {spec.max_abs:.3g}, so no artifact can be called right"
                )
                row.error_kind = "reference_disagrees"
    if max_drop is not None:
        for row in rows:
            if row.status == OK and row.top1_drop_pts is not None and row.top1_drop_pts > max_drop:
                row.status = DROP
                row.error = f"top-1 drop {row.top1_drop_pts:.2f} pt exceeds --max-drop {max_drop}"
                row.error_kind = "accuracy_drop"

    card.save(out / "model_card.json")
    for target in req.plan:
        if (out / target).is_dir():
            card.save(out / target / "model_card.json")
    calib_file, eval_file = _data_files(req, source)
    report = Report(
        model=card.name,
        source=card.source,
        out_dir=str(out),
        reference=ref_info,
        artifacts=rows,
        max_drop=max_drop,
        profile=req.profile,
        edgekit_version=__version__,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        optimize=opt_info,
        export_seconds=export_seconds,
        calibration_sha256=_file_sha256(calib_file),
        eval_sha256=_file_sha256(eval_file),
        toolchains=_toolchain_locks(req.plan),
        # synthesized data is no baseline of anything a device will be served
        drift=_drift_baseline(calib or data, reference, card) if calib or data.path else [],
    )
    report.save(out / "report.json")
    return report


@dataclass
class _TargetContext:
    """What every target's export shares (the prepared model, data files, shapes, limits)."""

    fp32: Path
    card: ModelCard
    out: Path
    work: Path
    inputs_npz: Path
    calib_npz: Path | None
    layout: str
    plan: shapes.ShapePlan
    batchable: bool
    timeout: float | None
    recurrent: bool = False


def _export_target(
    target: str, modes: list[str], ctx: _TargetContext
) -> tuple[list[ExportResult], list[str], dict]:
    """Pin shapes, legalize and export one target; every failure becomes a per-mode result."""
    fmt = formats.TARGETS[target]
    target_dir = ctx.out / target
    target_dir.mkdir(parents=True, exist_ok=True)
    model_copy = ctx.work / f"{target}.onnx"
    static = fmt.shapes == "static"
    # the leading dim stays dynamic only where it is a real batch axis the backend can keep
    keep_batch = ctx.batchable and not (static and ctx.recurrent)
    dims = (
        ctx.plan.for_target(static, keep_batch)
        if fmt.shapes != "dynamic"
        else {n: list(s.declared) for n, s in ctx.plan.inputs.items()}
    )
    passes: list[str] = []
    try:
        if fmt.toolchain is not None:
            from converters.toolchains.manager import require

            require(target)  # a missing toolchain fails with the command that installs it
        src = ctx.fp32
        if fmt.shapes != "dynamic" and ctx.plan.needs_pinning(static, keep_batch):
            src = ctx.work / f"{target}-pinned.onnx"
            shapes.pin_onnx(ctx.fp32, src, dims)
            passes.append("pin-input-shapes")
        passes += legalize(src, model_copy, target)
        job = ExportJob(
            target,
            model_copy,
            ctx.card,
            modes,
            target_dir,
            ctx.inputs_npz,
            ctx.calib_npz,
            options={
                "layout": ctx.layout,
                "work_dir": str(ctx.work),
                "legalize": passes,
                "input_shapes": dims,
                "batchable": ctx.batchable,
                **({"timeout": ctx.timeout} if ctx.timeout else {}),
            },
        )
        results = _backend(target).export(job)
    except EdgekitError as e:  # toolchain missing, backend crash, timeout: every mode of this target fails
        kind = "toolchain_missing" if isinstance(e, ToolchainMissingError) else _kind_of(str(e))
        return [ExportResult(m, error=str(e), error_kind=kind) for m in modes], passes, dims
    except Exception as e:
        log.debug("%s backend crashed", target, exc_info=True)
        return (
            [
                ExportResult(m, error=f"{target}: {type(e).__name__}: {e}", error_kind="backend_crash")
                for m in modes
            ],
            passes,
            dims,
        )
    by_mode = {r.mode: r for r in results}
    results = [
        by_mode.get(m) or ExportResult(m, error=f"{target}: backend produced nothing for {m}") for m in modes
    ]
    return results, passes, dims


def _kind_of(message: str) -> str:
    return "timeout" if "timed out" in message else "backend_crash"


def _open_for_validation(target: str, res: ExportResult, card: ModelCard):
    runtime = formats.TARGETS[target].runtime
    main = res.files[0]
    if runtime == "tfjs-node":
        from converters.toolchains.manager import require
        from targets.runtimes.tfjs_node import TfjsNodeRuntime

        return TfjsNodeRuntime(
            main,
            require("tfjs").node_modules,
            output_names=res.output_names,
            input_names=[i.name for i in card.inputs],
            output_perms=res.output_perms,
        )
    return open_runtime(
        main,
        output_names=res.output_names or [o.name for o in card.outputs],
        input_names=[i.name for i in card.inputs],
        output_perms=res.output_perms,
    )


def _validate(
    target, res: ExportResult, card, data: Dataset, reference, ref_info, out: Path, batchable: bool
) -> ArtifactReport:
    fmt = formats.TARGETS[target]
    precision = fmt.modes[res.mode].label
    row = ArtifactReport(
        target,
        res.mode,
        precision,
        FAILED,
        runtime=fmt.runtime,
        runtime_note=res.runtime_note,
        convert_seconds=round(res.seconds, 3),
        versions=res.versions,
        checks=res.checks,
    )
    if not res.ok:
        row.error = res.error or "no files produced"
        row.error_kind = res.error_kind or "backend_crash"
        return row
    row.files = _file_entries(res.files, out)
    row.bytes = sum(f.bytes for f in row.files)
    row.sha256 = tree_digest(res.files[0])
    try:
        if res.simulated_outputs is not None:
            npz = np.load(res.simulated_outputs)
            got = {k: npz[k] for k in npz.files}
        else:
            rt = _open_for_validation(target, res, card)
            got = validate.run_samples(rt, data.inputs, batchable)
            bench = getattr(rt, "benchmark_ms", None)
            sample = data.feed(0)
            row.latency_ms = bench(sample) if bench else validate.latency_ms(rt, sample)
            row.versions = {**row.versions, **rt.versions()}
        tol = formats.precision(target, res.mode).tolerance
        p = validate.parity(tol, reference, got)
        shipped = []
        for comp in res.companions:
            # A companion (e.g. ORT format) must compute what the validated artifact computes; one
            # that does not (ORT's format converter mishandles some casts) is withheld, not shipped,
            # and the artifact itself still stands on its own validation.
            try:
                alt = validate.run_samples(open_runtime(comp), data.inputs, batchable)
                cp = validate.parity(tol, got, alt)
                check = {"max_abs_vs_artifact": cp.max_abs_err, "ok": cp.ok}
            except Exception as e:
                check = {"ok": False, "error": f"{type(e).__name__}: {_first_line(e)}"}
            row.checks[f"companion:{comp.suffix}"] = check
            if check["ok"]:
                shipped.append(comp)
            else:
                comp.unlink(missing_ok=True)
                check["withheld"] = True
        row.companions = _file_entries(shipped, out)
    except Exception as e:
        log.debug("validation of %s %s failed", target, res.mode, exc_info=True)
        row.error = f"validation in {fmt.runtime} failed: {type(e).__name__}: {_first_line(e)}"
        row.error_kind = "validation"
        return row
    row.outputs = validate.align_outputs(reference, got)
    row.max_abs_err, row.cosine, row.parity_bound = p.max_abs_err, p.cosine, p.bound
    if data.labels is not None:
        row.top1 = validate.top1(validate.align_outputs(reference, got), data.labels)
        row.top1_drop_pts = round((ref_info["top1"] - row.top1) * 100.0, 3)
    row.status = OK if p.ok else MISMATCH
    if not p.ok:
        row.error_kind = "mismatch"
        row.error = f"outputs differ from the fp32 reference: cosine {p.cosine:.6f}, max abs {p.max_abs_err:.3g} ({p.bound})"
    return row


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else "")[:500]
