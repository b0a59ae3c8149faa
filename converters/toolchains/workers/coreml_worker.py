"""Core ML worker: ONNX -> onnx2torch -> TorchScript -> coremltools mlprogram, one file per mode.

Runs inside the 'coreml' toolchain interpreter (`python coreml_worker.py REQ.json RESP.json`), so it
imports only the stdlib, that environment's packages and the sibling `_worker` helper -- never
edgekit. One invocation converts once per compute precision and compresses every requested mode
from that conversion.

Core ML cannot predict on Linux (no libcoremlpython), so besides the .mlpackage each mode gets
static checks read back from the saved file (spec I/O, MIL op counts, compute dtypes, weight
storage) and *simulated* outputs: the package's own weights (decompressed where compressed) are
loaded back into the onnx2torch module and run with torch, in fp16 where the program computes in
fp16. That measures the weight compression and fp16 rounding, not Core ML's kernels.

Request: {"model", "out_dir", "name", "modes", "mode_args", "io_dtypes", "inputs_npz", "inputs": [{name, shape, dtype}],
          "outputs": [{name, shape, dtype}], "options": {"max_batch", "weight_threshold"}}
Response: {"versions", "results": [{"mode", "path", "simulated_outputs", "runtime_note", "checks",
           "seconds", "error", "error_kind"}]} or {"ok": false, "error": {"kind", "op", "node", ...}}
"""

from __future__ import annotations

import copy
import math
import os
import re
import sys
import time
import types
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _worker import WorkerError, main, versions

TARGET = "coreml"
# Per mode, what edgekit's target table (edgekit/formats.py) says to build, sent in the request as
# {"mode_args": {mode: {"compute": "fp32"|"fp16", "compress": null | ["linear", 8] | ["palette", n]}}}.


def _fp16(req: dict[str, Any], mode: str) -> bool:
    return req["mode_args"][mode]["compute"] == "fp16"


def _compression(req: dict[str, Any], mode: str) -> tuple[str, int] | None:
    how = req["mode_args"][mode]["compress"]
    return (str(how[0]), int(how[1])) if how else None


# The torchvision stand-in cannot run these, so they are dropped from onnx2torch's registry and
# reported as unsupported instead of failing later inside the trace.
NEEDS_TORCHVISION = {"NonMaxSuppression", "RoiAlign"}
SIM_NOTE = (
    "simulated: Core ML runtime needs macOS; outputs from the package's weights{decomp} run in "
    "the torch intermediate with {act} activations, not Core ML kernels"
)


def _install_torchvision_stub() -> None:
    """onnx2torch imports torchvision for NMS/RoiAlign only; PyPI's torchvision breaks CPU torch."""
    if "torchvision" in sys.modules:
        return

    def _missing(*_a: Any, **_k: Any) -> Any:
        raise NotImplementedError("torchvision is not available in the coreml toolchain")

    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    ops.nms = ops.roi_align = ops.box_convert = _missing  # type: ignore[attr-defined]
    tv.ops = ops  # type: ignore[attr-defined]
    tv.__version__ = "0.0.0-edgekit-stub"  # type: ignore[attr-defined]
    sys.modules["torchvision"] = tv
    sys.modules["torchvision.ops"] = ops


_install_torchvision_stub()

import coremltools as ct  # noqa: E402
import coremltools.optimize.coreml as cto  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnx2torch  # noqa: E402
import onnx2torch.converter as o2t_converter  # noqa: E402
import torch  # noqa: E402
from coremltools.converters.mil.mil.passes.defs.preprocess import NameSanitizer  # noqa: E402
from onnx2torch.node_converters import registry as o2t_registry  # noqa: E402

for _desc in [d for d in o2t_registry._CONVERTER_REGISTRY if d.operation_type in NEEDS_TORCHVISION]:
    del o2t_registry._CONVERTER_REGISTRY[_desc]


def _patch_comparisons() -> None:
    """onnx2torch traces Less/Greater as aten::less/greater, which coremltools cannot convert; the
    aten::lt/gt spellings it can. LessOrEqual/GreaterOrEqual-16 differ from -12 only in types."""
    import onnx2torch.node_converters.comparisons as cmp

    cmp._TORCH_FUNCTION_FROM_ONNX_TYPE.update(
        Less=torch.lt, LessOrEqual=torch.le, Greater=torch.gt, GreaterOrEqual=torch.ge
    )
    convert = o2t_registry.get_converter(operation_type="Less", version=13, domain="")
    for op in ("LessOrEqual", "GreaterOrEqual"):
        try:
            o2t_registry.get_converter(operation_type=op, version=16, domain="")
        except NotImplementedError:
            o2t_registry.add_converter(operation_type=op, version=16)(convert)


_patch_comparisons()


# ---------------------------------------------------------------------------- ONNX -> torch


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or (node.output[0] if node.output else f"{node.op_type}_{index}")


def _unsupported(op: str, node: str, detail: str, others: list[dict[str, str]] | None = None) -> WorkerError:
    msg = f"{TARGET}: unsupported operator {op} (node {node!r})"
    if detail:
        msg += f": {detail}"
    return WorkerError(
        "unsupported_op", msg, op=op, node=node, target=TARGET, detail=detail, all=others or []
    )


def _prescan(model: onnx.ModelProto) -> None:
    """Name every node onnx2torch has no converter for, before it fails on the first one unnamed."""
    opsets = {o.domain: o.version for o in model.opset_import}
    missing = []
    for i, node in enumerate(model.graph.node):
        try:
            o2t_registry.get_converter(
                operation_type=node.op_type, version=opsets.get(node.domain, 1), domain=node.domain
            )
        except NotImplementedError:
            missing.append({"op": node.op_type, "node": _node_label(node, i)})
    if missing:
        first = missing[0]
        detail = "onnx2torch has no converter for it" + (
            " (needs torchvision, which the coreml toolchain omits)"
            if first["op"] in NEEDS_TORCHVISION
            else ""
        )
        if len(missing) > 1:
            detail += f"; {len(missing)} unsupported nodes in all: " + ", ".join(
                f"{m['op']}({m['node']})" for m in missing[:8]
            )
        raise _unsupported(first["op"], first["node"], detail, missing)


def onnx_to_torch(model_path: str) -> torch.nn.Module:
    """onnx2torch.convert, turning its unnamed NotImplementedError into (op, node, target)."""
    model = onnx.load(model_path)
    _prescan(model)
    current: dict[str, str] = {}
    original = o2t_converter.get_converter

    def tracking_get_converter(**kw: Any) -> Any:
        conv = original(**kw)

        def wrapped(node: Any, graph: Any) -> Any:
            # converters also raise NotImplementedError for attributes they do not handle
            current.update(op=node.operation_type, node=node.name or node.unique_name)
            return conv(node, graph)

        return wrapped

    o2t_converter.get_converter = tracking_get_converter
    try:
        module = onnx2torch.convert(model)
    except NotImplementedError as e:
        raise _unsupported(current.get("op", "?"), current.get("node", "?"), str(e)) from e
    finally:
        o2t_converter.get_converter = original
    return module.eval()


# ---------------------------------------------------------------------------- torch -> Core ML


def _core_ml_inputs(
    specs: list[dict[str, Any]], example: tuple[Any, ...], max_batch: int, io_dtypes: dict[str, str]
) -> list[Any]:
    """TensorTypes named as the ONNX inputs. Dims come as edgekit resolved them for Core ML: an int
    is fixed, [lo, hi] a RangeDim (`--input-shape x:1,3,48,32..640`), None the dynamic batch axis
    (1..max_batch). Defaults are the traced example's sizes, which are known to work."""
    out = []
    for spec, ex in zip(specs, example, strict=True):
        dims: list[Any] = []
        for i, d in enumerate(spec["shape"]):
            if isinstance(d, int) and d > 0:
                dims.append(d)
            elif isinstance(d, list):
                dims.append(ct.RangeDim(lower_bound=d[0], upper_bound=d[1], default=int(ex.shape[i])))
            else:
                dims.append(ct.RangeDim(lower_bound=1, upper_bound=max_batch, default=int(ex.shape[i])))
        dtype = np.dtype(io_dtypes.get(spec["dtype"], spec["dtype"])).type
        out.append(ct.TensorType(name=spec["name"], shape=ct.Shape(dims), dtype=dtype))
    return out


def _example(
    inputs: dict[str, np.ndarray], specs: list[dict[str, Any]], batchable: bool
) -> tuple[torch.Tensor, ...]:
    """One traced call from the sample stack. With a batch axis, two samples concatenated along it:
    a batch of 1 lets the trace treat the batch dim as a broadcastable constant."""

    def pick(x: np.ndarray) -> np.ndarray:
        return np.concatenate(list(x[:2])) if batchable and len(x) >= 2 else x[0]

    return tuple(torch.from_numpy(np.array(pick(inputs[s["name"]]), copy=True)) for s in specs)


def onnx_io(model_path: str, card_inputs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Input specs and output names as the ONNX graph spells them (the card is checked against them).

    Shapes and dtypes come from the card by position: it may pin dims the graph leaves symbolic.
    """
    graph = onnx.load(model_path, load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    names = [i.name for i in graph.input if i.name not in inits]
    specs = [{**c, "name": n} for c, n in zip(card_inputs, names, strict=False)]
    return specs, [o.name for o in graph.output]


def to_mlprogram(module: torch.nn.Module, ctx: dict[str, Any], fp16: bool) -> Any:
    traced = torch.jit.trace(module, ctx["example"], check_trace=False)
    max_batch = int(ctx["req"].get("options", {}).get("max_batch", 64))
    # float outputs stay fp32 whatever the compute precision, as the card (and every other target)
    # says; integer outputs keep the type coremltools infers (Core ML has no int64)
    card_out = ctx["req"]["outputs"]
    outputs = [
        ct.TensorType(name=n, dtype=np.float32)
        if i >= len(card_out) or card_out[i]["dtype"].startswith("float")
        else ct.TensorType(name=n)
        for i, n in enumerate(ctx["out_names"])
    ]
    return ct.convert(
        traced,
        inputs=_core_ml_inputs(ctx["in_specs"], ctx["example"], max_batch, ctx["req"]["io_dtypes"]),
        outputs=outputs,
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS16,
        compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
    )


def _coreml_unsupported(e: Exception) -> WorkerError | None:
    """coremltools names the missing TorchScript op, not the ONNX node: say so."""
    m = re.search(r"convert function for op '([\w:.]+)' not implemented", str(e))
    if not m:
        return None
    return _unsupported(m.group(1), "?", f"coremltools cannot convert the TorchScript op {m.group(1)!r}")


def compress(mlmodel: Any, how: tuple[str, int] | None, threshold: int) -> Any:
    if how is None:
        return mlmodel
    kind, bits = how
    if kind == "linear":
        op_cfg: Any = cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=threshold
        )
        return cto.linear_quantize_weights(mlmodel, config=cto.OptimizationConfig(global_config=op_cfg))
    op_cfg = cto.OpPalettizerConfig(mode="kmeans", nbits=bits, weight_threshold=threshold)
    return cto.palettize_weights(mlmodel, config=cto.OptimizationConfig(global_config=op_cfg))


# ---------------------------------------------------------------------------- checks on the saved file


def _feature(f: Any) -> dict[str, Any]:
    arr = f.type.multiArrayType
    dtype = {65568: "float32", 65552: "float16", 131104: "int32"}.get(arr.dataType, str(arr.dataType))
    ranges = [[r.lowerBound, r.upperBound] for r in arr.shapeRange.sizeRanges]
    shape: list[Any] = []
    for i, d in enumerate(arr.shape):
        # a range dim is symbolic (the card writes None or a name); a fixed range is that int
        shape.append(d if not ranges or ranges[i][0] == ranges[i][1] else None)
    return {"name": f.name, "dtype": dtype, "shape": shape, "ranges": ranges}


def core_ml_name(name: str) -> str:
    """The name Core ML gives a tensor: MIL names are identifiers, so coremltools sanitizes
    (`input.1` -> `input_1`, `403` -> `var_403`). Apps keep the card's names via the name map."""
    return NameSanitizer(prefix="_").sanitize_name(name, allow_prefix_underscore=False)


def name_map(spec_side: list[dict[str, Any]], card_side: list[dict[str, Any]]) -> dict[str, str]:
    """card name -> spec name, for the names Core ML had to change."""
    return {
        c["name"]: s["name"] for s, c in zip(spec_side, card_side, strict=False) if c["name"] != s["name"]
    }


def _io_mismatches(
    spec_side: list[dict[str, Any]], card_side: list[dict[str, Any]], what: str, io_dtypes: dict[str, str]
) -> list[str]:
    problems = []
    names_ok = len(spec_side) == len(card_side) and all(
        s["name"] in (c["name"], core_ml_name(c["name"])) for s, c in zip(spec_side, card_side, strict=False)
    )
    if not names_ok:
        problems.append(
            f"{what} names {[s['name'] for s in spec_side]} != card {[c['name'] for c in card_side]}"
        )
        return problems
    for s, c in zip(spec_side, card_side, strict=True):
        want = [d if isinstance(d, int) and d > 0 else None for d in c["shape"]]
        # mlprogram outputs carry no shape in the spec unless set: only a stated shape can disagree.
        # A dim the card leaves dynamic may come out static: inputs pinned for this target (the
        # report's input_shapes) fix the outputs' dims too.
        fits = (
            s["shape"]
            and len(s["shape"]) == len(want)
            and all(w is None or w == d for d, w in zip(s["shape"], want, strict=True))
        )
        if s["shape"] and not fits:
            problems.append(f"{what} {s['name']} shape {s['shape']} != card {c['shape']}")
        if s["dtype"] != io_dtypes.get(c["dtype"], c["dtype"]):
            problems.append(f"{what} {s['name']} dtype {s['dtype']} != card {c['dtype']}")
    return problems


def _mil_ops(spec: Any) -> tuple[list[Any], Counter[str], Counter[str]]:
    fn = spec.mlProgram.functions["main"]
    ops = list(fn.block_specializations[fn.opset].operations)
    counts = Counter(op.type for op in ops)
    # dtypes that compute ops produce: fp16 programs must compute in fp16, not just store it
    compute = Counter()
    for op in ops:
        if op.type.startswith("const"):
            continue
        for out in op.outputs:
            compute[_TENSOR_DTYPES.get(out.type.tensorType.dataType, "other")] += 1
    return ops, counts, compute


# MIL.proto DataType numbers (coremltools.proto.MIL_pb2.DataType)
_TENSOR_DTYPES = {
    10: "float16",
    11: "float32",
    12: "float64",
    21: "int8",
    23: "int32",
    24: "int64",
    25: "int4",
    31: "uint8",
    35: "uint4",
    36: "uint2",
    37: "uint1",
    38: "uint6",
    39: "uint3",
    1: "bool",
}


def _weights(spec: Any, threshold: int) -> dict[str, Any]:
    """Per weight tensor: how it is stored. Read from the saved spec's const/constexpr ops."""
    ops, _, _ = _mil_ops(spec)
    tensors = []
    for op in ops:
        kind = _weight_storage(op)
        if kind is None:
            continue
        shape = [int(d.constant.size) for d in op.outputs[0].type.tensorType.dimensions]
        n = math.prod(shape) if shape else 1
        if n < 16 or _TENSOR_DTYPES.get(op.outputs[0].type.tensorType.dataType) not in ("float16", "float32"):
            continue  # pads, strides, reshape targets: not weights
        tensors.append({"name": op.outputs[0].name, "shape": shape, "elements": n, "storage": kind})
    total = sum(t["elements"] for t in tensors)
    compressed = sum(t["elements"] for t in tensors if t["storage"].startswith(("int", "lut")))
    return {
        "tensors": tensors,
        "storage": dict(Counter(t["storage"] for t in tensors)),
        "compressed_tensors": sum(t["storage"].startswith(("int", "lut")) for t in tensors),
        "compressed_fraction": compressed / total if total else 0.0,
        "weight_threshold": threshold,
    }


def _weight_storage(op: Any) -> str | None:
    if op.type == "const":
        return _TENSOR_DTYPES.get(op.outputs[0].type.tensorType.dataType, "other")
    if op.type == "constexpr_affine_dequantize":
        qd = op.attributes["quantized_data"].type.tensorType.dataType
        return f"{_TENSOR_DTYPES.get(qd, 'other')}-linear"
    if op.type == "constexpr_lut_to_dense":
        lut = op.attributes["lut"].type.tensorType.dimensions
        return f"lut-{int(math.log2(int(lut[-1].constant.size)))}bit"
    if op.type.startswith("constexpr"):
        return op.type
    return None


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def static_checks(path: Path, req: dict[str, Any], threshold: int) -> dict[str, Any]:
    """Load the saved package as a user would (no runtime on Linux) and describe what is inside."""
    loaded = ct.models.MLModel(str(path), skip_model_load=True)
    spec = loaded.get_spec()
    ins = [_feature(f) for f in spec.description.input]
    outs = [_feature(f) for f in spec.description.output]
    io = req["io_dtypes"]  # edgekit/formats.py: the coreml row's io_dtypes
    mismatches = _io_mismatches(ins, req["inputs"], "input", io) + _io_mismatches(
        outs, req["outputs"], "output", io
    )
    _, counts, compute = _mil_ops(spec)
    weight_bin = path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    return {
        "spec_loads": True,
        "spec_version": spec.specificationVersion,
        "spec_inputs": ins,
        "spec_outputs": outs,
        "io_matches_card": not mismatches,
        "name_map": name_map(ins, req["inputs"]) | name_map(outs, req["outputs"]),
        "io_mismatches": mismatches,
        "mil_ops": dict(counts),
        "compute_dtypes": dict(compute),
        "weights": _weights(spec, threshold),
        "weight_bytes": weight_bin.stat().st_size if weight_bin.exists() else 0,
        "package_bytes": _dir_bytes(path),
    }


# ---------------------------------------------------------------------------- simulated outputs


def _float_consts(mlmodel: Any) -> dict[str, np.ndarray]:
    md = cto.get_weights_metadata(mlmodel, weight_threshold=0)
    return {k: np.asarray(v.val) for k, v in md.items() if np.asarray(v.val).dtype.kind == "f"}


def map_consts_to_torch(reference: Any, module: torch.nn.Module) -> dict[str, str]:
    """Const name in the uncompressed program -> state_dict key, matched by shape and exact value.

    Names are not a stable key (coremltools renames and may fold tensors), values are: an
    uncompressed const equals the torch tensor cast to its dtype bit for bit.
    """
    by_key: dict[tuple[tuple[int, ...], bytes], str] = {}
    for key, t in module.state_dict().items():
        if t.dtype.is_floating_point and t.ndim >= 1:
            arr = t.detach().numpy()
            for dt in (np.float32, np.float16):
                by_key.setdefault((arr.shape, arr.astype(dt).tobytes()), key)
    mapping = {}
    for name, val in _float_consts(reference).items():
        hit = by_key.get((val.shape, val.tobytes()))
        if hit is not None:
            mapping[name] = hit
    return mapping


def _match_reference_name(name: str, ref_names: list[str]) -> str | None:
    # compression passes append suffixes (x_to_fp16 -> x_to_fp16_quantized / _palettized)
    hits = [r for r in ref_names if name == r or name.startswith(r + "_")]
    return max(hits, key=len) if hits else None


def load_package_weights(
    module: torch.nn.Module, mlmodel: Any, mapping: dict[str, str]
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A copy of the torch module carrying the package's (decompressed) weights."""
    plain = cto.decompress_weights(mlmodel) if _is_compressed(mlmodel) else mlmodel
    consts = _float_consts(plain)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    loaded, unmapped = 0, []
    for name, val in consts.items():
        ref = _match_reference_name(name, list(mapping))
        if ref is None or val.size < 2:
            if val.size >= 16:
                unmapped.append(name)
            continue
        key = mapping[ref]
        if tuple(state[key].shape) != val.shape:
            unmapped.append(name)
            continue
        state[key] = torch.from_numpy(val.astype(np.float32))
        loaded += 1
    sim = copy.deepcopy(module)
    sim.load_state_dict(state)
    return sim.eval(), {"weights_loaded": loaded, "unmapped_weights": unmapped}


def _is_compressed(mlmodel: Any) -> bool:
    fn = mlmodel.get_spec().mlProgram.functions["main"]
    return any(op.type.startswith("constexpr") for op in fn.block_specializations[fn.opset].operations)


def _forward(
    module: torch.nn.Module, inputs: list[np.ndarray], dtype: torch.dtype, batchable: bool, chunk: int = 256
) -> list[np.ndarray]:
    """Outputs for a sample stack, stacked per sample like edgekit's validation does."""

    def call(args: list[np.ndarray]) -> list[np.ndarray]:
        tensors = [torch.from_numpy(np.array(x, copy=True)) for x in args]  # 0-d samples stay 0-d
        tensors = [t.to(dtype) if t.is_floating_point() else t for t in tensors]
        res = module(*tensors)
        res = res if isinstance(res, (tuple, list)) else (res,)
        return [r.float().numpy() for r in res]

    n = inputs[0].shape[0] if inputs else 1
    with torch.no_grad():
        if not batchable:
            per = [call([x[i] for x in inputs]) for i in range(n)]
            return [np.stack([p[j] for p in per]) for j in range(len(per[0]))]
        outs: list[list[np.ndarray]] = []
        for i in range(0, n, chunk):
            m = min(chunk, n - i)
            ys = call([x[i : i + m].reshape(-1, *x.shape[2:]) for x in inputs])
            outs.append([y.reshape(m, y.shape[0] // m, *y.shape[1:]) for y in ys])
    return [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))]


def simulate(
    sim: torch.nn.Module, inputs: list[np.ndarray], fp16: bool, batchable: bool
) -> tuple[list[np.ndarray], str]:
    """Run in fp16 where torch CPU can (the program computes in fp16), else fp32 with a note."""
    if fp16:
        try:
            return _forward(copy.deepcopy(sim).half(), inputs, torch.float16, batchable), "fp16"
        except (RuntimeError, NotImplementedError) as e:
            why = f"fp32 (torch CPU lacks an fp16 kernel here: {str(e)[:80]}; fp16 rounding of weights only)"
            return _forward(sim, inputs, torch.float32, batchable), why
    return _forward(sim, inputs, torch.float32, batchable), "fp32"


# ---------------------------------------------------------------------------- driver


def export_mode(mode: str, base: Any, ctx: dict[str, Any]) -> dict[str, Any]:
    req, out_dir = ctx["req"], Path(ctx["req"]["out_dir"])
    t0 = time.perf_counter()
    how = _compression(req, mode)
    model = compress(base, how, ctx["threshold"])
    path = out_dir / f"{req['name']}-{mode}.mlpackage"
    model.save(str(path))
    seconds = time.perf_counter() - t0 + ctx["convert_seconds"]
    checks = static_checks(path, req, ctx["threshold"])
    t1 = time.perf_counter()
    sim, info = load_package_weights(ctx["module"], model, ctx["mapping"])
    outs, act = simulate(sim, ctx["inputs"], fp16=_fp16(req, mode), batchable=ctx["batchable"])
    # not beside the artifact: simulated outputs are evidence for the report, not something to ship
    sim_dir = Path(req.get("sim_dir") or out_dir)
    sim_dir.mkdir(parents=True, exist_ok=True)
    sim_path = sim_dir / f"{req['name']}-{mode}.simulated.npz"
    if ctx["rows"]:
        outs = [o.reshape(-1, *o.shape[2:]) for o in outs]
    np.savez(sim_path, **dict(zip(ctx["out_names"], outs, strict=True)))
    info.update(activations=act, seconds=round(time.perf_counter() - t1, 3))
    checks["simulation"] = info
    note = SIM_NOTE.format(decomp=" (decompressed)" if how else "", act=act)
    if info["unmapped_weights"]:
        note += f"; {len(info['unmapped_weights'])} package weights could not be mapped back (kept torch's)"
    return {
        "mode": mode,
        "path": str(path),
        "simulated_outputs": str(sim_path),
        "runtime_note": note,
        "checks": checks,
        "seconds": seconds,
        "error": None,
        "error_kind": None,
    }


def convert_precision(fp16: bool, ctx: dict[str, Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    try:
        base = to_mlprogram(ctx["module"], ctx, fp16)
    except Exception as e:
        known = _coreml_unsupported(e)
        if known:
            raise known from e
        raise
    return base, time.perf_counter() - t0


def handle(req: dict[str, Any]) -> dict[str, Any]:
    out_dir = Path(req["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    module = onnx_to_torch(req["model"])
    in_specs, out_names = onnx_io(req["model"], req["inputs"])
    data = np.load(req["inputs_npz"])
    inputs = [np.asarray(data[s["name"]]) for s in in_specs]
    # edgekit passes a stack of whole inputs (rank + 1); rows of a batch (the input's own rank)
    # are read as samples of batch 1 and their outputs handed back as rows
    rows = bool(inputs) and all(x.ndim == len(s["shape"]) for x, s in zip(inputs, in_specs, strict=True))
    if rows:
        inputs = [x[:, None] for x in inputs]
    ctx: dict[str, Any] = {
        "req": req,
        "module": module,
        "in_specs": in_specs,
        "out_names": out_names,
        "inputs": inputs,
        "batchable": bool(req.get("batchable")) or rows,
        "rows": rows,
        "example": _example(
            dict(zip([s["name"] for s in in_specs], inputs, strict=True)),
            in_specs,
            bool(req.get("batchable")),
        ),
        "threshold": int(req.get("options", {}).get("weight_threshold", 2048)),
    }
    results = []
    for fp16 in (False, True):
        modes = [m for m in req["modes"] if _fp16(req, m) == fp16]
        if not modes:
            continue
        base, secs = convert_precision(fp16, ctx)
        ctx["mapping"] = map_consts_to_torch(base, module)
        ctx["convert_seconds"] = secs / len(modes)  # one shared conversion, split evenly
        for mode in modes:
            results.append(_safe_export(mode, base, ctx))
    order = {m: i for i, m in enumerate(req["modes"])}
    results.sort(key=lambda r: order.get(r["mode"], 99))
    return {
        "versions": versions("coremltools", "torch", "onnx2torch", "onnx", "numpy", "scikit-learn"),
        "results": results,
    }


def _safe_export(mode: str, base: Any, ctx: dict[str, Any]) -> dict[str, Any]:
    """One mode failing (e.g. a compression pass) must not discard the others."""
    try:
        return export_mode(mode, base, ctx)
    except Exception as e:
        return {
            "mode": mode,
            "error": f"{TARGET} {mode}: {type(e).__name__}: {e}",
            "error_kind": "backend_crash",
        }


if __name__ == "__main__":
    main(handle)
