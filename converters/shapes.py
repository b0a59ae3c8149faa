"""Input shapes: the user's dynamic dims stay dynamic unless a target needs them pinned.

The model card keeps every dim as the model declares it (int, symbolic name or None). A target
that needs static shapes gets each dynamic dim from, in order: `--input-shape NAME:D,D,...`, the
shape of the calibration/evaluation samples, and, for a dynamic *leading* dim only (the model's
own batch axis), nothing: it stays dynamic. Anything still unknown stops the command with one line
naming each dim and the flag to pass -- never a silent 1.

`D` is an int or a range `LO..HI`; a range keeps the dim flexible where the target can (Core ML
RangeDim) and is pinned to the data's size (else LO) where it cannot.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import DataError, EdgekitError
from edgekit.modelcard import ModelCard, TensorSpec

Range = tuple[int, int]
GivenDim = int | Range | None  # None: "-" in the flag, i.e. keep dynamic
_DIM = re.compile(r"^\s*(?:(\d+)|(\d+)\s*\.\.\s*(\d+)|(-1|\?|-))\s*$")


class NeedsShapesError(DataError):
    """A dynamic dim has no value from the flag or the data."""


def parse_input_shape(text: str) -> tuple[str, list[GivenDim]]:
    """`NAME:D,D,...`; NAME may itself contain ':' (`enc::x:1,16`), so split at the last one."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name:
        raise EdgekitError(
            f"--input-shape {text!r}: expected NAME:D,D,... (D an int or LO..HI)",
            hint="e.g. --input-shape x:1,3,48,320 or --input-shape x:1,3,48,32..640",
        )
    out: list[GivenDim] = []
    for part in dims.split(","):
        m = _DIM.match(part)
        if not m:
            raise EdgekitError(f"--input-shape {text!r}: {part!r} is not an int, LO..HI or '-'")
        if m.group(1):
            out.append(int(m.group(1)))
        elif m.group(2):
            lo, hi = int(m.group(2)), int(m.group(3))
            if not 0 < lo <= hi:
                raise EdgekitError(f"--input-shape {text!r}: range {lo}..{hi} must have 0 < LO <= HI")
            out.append((lo, hi))
        else:
            out.append(None)
    return name, out


def parse_input_shapes(items: Iterable[str] | Mapping[str, list] | None) -> dict[str, list[GivenDim]]:
    """CLI strings or a Python mapping {name: [int | (lo, hi) | "lo..hi" | None]}."""
    if not items:
        return {}
    if isinstance(items, Mapping):
        parsed = {}
        for name, dims in items.items():
            text = ",".join(
                "-" if d is None else f"{d[0]}..{d[1]}" if isinstance(d, list | tuple) else str(d)
                for d in dims
            )
            parsed[name] = parse_input_shape(f"{name}:{text}")[1]
        return parsed
    return dict(parse_input_shape(t) for t in items)


def is_dynamic(d) -> bool:
    return not (isinstance(d, int) and d > 0)


def has_batch_axis(spec: TensorSpec) -> bool:
    """A dynamic leading dim is the model's own batch axis (by the convention real exporters use)."""
    return bool(spec.shape) and is_dynamic(spec.shape[0])


RECURRENT_OPS = {"LSTM", "GRU", "RNN", "Loop", "Scan"}


def recurrent(model_path: Path) -> bool:
    """Loops over a sequence: converters that need static shapes need every dim of them, batch too
    (onnx2tf emits Flex TensorList ops for a dynamic batch, which LiteRT cannot run)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return any(n.op_type in RECURRENT_OPS for n in graph.node)


def batchable(card: ModelCard) -> bool:
    """Samples may be concatenated along axis 0: every input and output has the same dynamic
    leading dim (a sequence-first output, e.g. a CRNN's [T, N, C], makes the model not batchable)."""
    if not card.inputs or not card.outputs:
        return False
    leads = [t.shape[0] if t.shape else 1 for t in [*card.inputs, *card.outputs]]
    if any(not is_dynamic(d) or d is None for d in leads):
        return False
    return len({d for d in leads}) == 1


@dataclass
class InputShape:
    """What one input takes: its card dims, the concrete dims of one run, and per-dim ranges."""

    name: str
    declared: list  # as in the card
    run: list[int]  # one concrete run shape (validation, probes, traces)
    ranges: dict[int, Range] = field(default_factory=dict)  # axis -> (lo, hi) from the flag
    pinned_by_flag: set[int] = field(default_factory=set)

    def for_target(self, static: bool, keep_batch: bool = True) -> list:
        """Dims to give a target: ints where pinned, None where it stays dynamic, [lo, hi] ranges.

        static=True (onnx2tf): every dynamic dim is pinned except a batch axis the user left open.
        static=False (Core ML): like static, but ranges stay ranges.
        keep_batch=False pins the leading dim too: a leading dim that is not a batch axis (a
        sequence, a model that is not batchable) or one a recurrent graph needs static.
        """
        out: list = []
        for i, d in enumerate(self.declared):
            if not is_dynamic(d):
                out.append(d)
            elif i in self.ranges and not static:
                out.append(list(self.ranges[i]))
            elif i == 0 and keep_batch and i not in self.pinned_by_flag and i not in self.ranges:
                out.append(None)  # the model's batch axis stays dynamic
            else:
                out.append(self.run[i])
        return out


@dataclass
class ShapePlan:
    inputs: dict[str, InputShape]

    def for_target(self, static: bool, keep_batch: bool = True) -> dict[str, list]:
        return {n: s.for_target(static, keep_batch) for n, s in self.inputs.items()}

    def needs_pinning(self, static: bool, keep_batch: bool = True) -> bool:
        return any(
            is_dynamic(dec) and isinstance(t, int)
            for s in self.inputs.values()
            for dec, t in zip(s.declared, s.for_target(static, keep_batch), strict=True)
        )

    def run_shapes(self) -> dict[str, list[int]]:
        return {n: s.run for n, s in self.inputs.items()}


def plan_shapes(
    card: ModelCard, given: Mapping[str, list[GivenDim]], sample_shapes: Mapping[str, tuple[int, ...]] | None
) -> ShapePlan:
    """Resolve every input's run shape; raise NeedsShapesError naming each dim nobody gave."""
    unknown = sorted(set(given) - {t.name for t in card.inputs})
    if unknown:
        raise EdgekitError(
            f"--input-shape names unknown input(s) {unknown}",
            hint=f"the model's inputs are {[t.name for t in card.inputs]}",
        )
    plan: dict[str, InputShape] = {}
    missing: list[str] = []
    for spec in card.inputs:
        flag = given.get(spec.name)
        if flag is not None and len(flag) != len(spec.shape):
            raise EdgekitError(
                f"--input-shape {spec.name}: {len(flag)} dims given, the input has {len(spec.shape)} {spec.shape}"
            )
        data = sample_shapes.get(spec.name) if sample_shapes else None
        shape = InputShape(spec.name, list(spec.shape), [])
        for i, d in enumerate(spec.shape):
            f = flag[i] if flag else None
            if not is_dynamic(d):
                if isinstance(f, int) and f != d:
                    raise EdgekitError(
                        f"--input-shape {spec.name}: axis {i} is fixed at {d} in the model, not {f}"
                    )
                shape.run.append(d)
                continue
            if isinstance(f, tuple):
                shape.ranges[i] = f
            elif isinstance(f, int):
                shape.pinned_by_flag.add(i)
            if isinstance(f, int):
                if data is not None and int(data[i]) != f:
                    raise DataError(
                        f"{spec.name} axis {i}: --input-shape says {f}, the data has {int(data[i])}"
                    )
                shape.run.append(f)
            elif data is not None:
                v = int(data[i])
                if isinstance(f, tuple) and not f[0] <= v <= f[1]:
                    raise DataError(
                        f"{spec.name} axis {i}: the data has {v}, outside --input-shape {f[0]}..{f[1]}"
                    )
                shape.run.append(v)
            elif isinstance(f, tuple):
                shape.run.append(f[0])
            elif i == 0:
                shape.run.append(1)  # a batch of one on the model's own batch axis
            else:
                label = f"{d!r} " if isinstance(d, str) else ""
                missing.append(f"{spec.name} axis {i} {label}".rstrip())
                shape.run.append(0)
        plan[spec.name] = shape
    if missing:
        example = " ".join(
            f"--input-shape {s.name}:" + ",".join(str(v) if v else "N" for v in s.run)
            for s in plan.values()
            if 0 in s.run
        )
        raise NeedsShapesError(
            f"dynamic dims without a size: {', '.join(missing)}",
            hint=f"pass {example} (a range LO..HI keeps Core ML flexible), or --calibration/--eval data",
        )
    return ShapePlan(plan)


def pin_onnx(src: Path, dest: Path, dims: Mapping[str, list]) -> None:
    """Write `src` with its inputs' dynamic dims set (None stays dynamic, [lo, hi] stays dynamic)."""
    import onnx

    model = onnx.load(str(src))
    for vi in model.graph.input:
        want = dims.get(vi.name)
        if want is None:
            continue
        for d, w in zip(vi.type.tensor_type.shape.dim, want, strict=False):
            if isinstance(w, int):
                d.ClearField("dim_param")
                d.dim_value = w
    # stale intermediate shapes would contradict the pinned inputs; the target's fold-constants
    # pass then folds what the pinned dims made constant (Shape -> Gather -> Concat chains).
    # onnxslim is not used here: it rewrote a BERT encoder's MatMul+Add into Reshape-Gemm-Reshape,
    # which onnx2tf then converted wrongly.
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    onnx.save(model, str(dest))


def sample_shapes(inputs: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """The run shape of the first sample of a sample stack (see converters/data.py)."""
    return {k: tuple(v.shape[1:]) for k, v in inputs.items() if len(v)}
