"""expand-<Op>: replace a node by the ONNX function body its schema defines, inlined.

ONNX defines many ops as functions of simpler ops (LayerNormalization, Gelu, Mish, HardSwish,
CastLike, Range, ReduceLogSumExp, ...): `OpSchema.function_body`, or a body built for the node's
attributes and input types (`get_context_dependent_function_with_opset_version`). The node is
turned into a call of a model-local function holding that body and `onnx.inliner` inlines it, so
the rewrite is ONNX's own definition of the op, not ours. One pass per op type, because a target
wants only the ops it lacks expanded (native kernels are faster): DEFAULT_PASSES picks them.

A body written for an older opset than the model's is used only when every op in it is unchanged
between the two versions; otherwise the node stays (the inliner refuses mixed opsets).
"""

from __future__ import annotations

import logging

import onnx
import onnx.defs
from onnx import inliner

from converters.passes._rewrite import infer_shapes, opset_version
from converters.passes.registry import register

log = logging.getLogger(__name__)

_DOMAIN = "edgekit.legalize.expand"


def function_ops() -> list[str]:
    """Default-domain ops whose schema (at some version) has a function body."""
    return sorted(
        {
            s.name
            for s in onnx.defs.get_all_schemas_with_history()
            if s.domain == "" and (s.has_function or s.has_context_dependent_function)
        }
    )


def _types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    g = model.graph
    types = {vi.name: vi.type for vi in [*g.input, *g.value_info, *g.output]}
    for init in g.initializer:
        t = onnx.TypeProto()
        t.tensor_type.elem_type = init.data_type
        for d in init.dims:
            t.tensor_type.shape.dim.add().dim_value = d
        types[init.name] = t
    return types


def _with_defaults(node: onnx.NodeProto, schema: onnx.defs.OpSchema) -> onnx.NodeProto:
    """The node with every defaulted attribute written out: bodies refer to attributes by name."""
    out = onnx.NodeProto()
    out.CopyFrom(node)
    have = {a.name for a in node.attribute}
    for name, attr in schema.attributes.items():
        if name not in have and attr.default_value.type != onnx.AttributeProto.UNDEFINED:
            out.attribute.append(attr.default_value)
    return out


def _signature(schema: onnx.defs.OpSchema) -> tuple:
    attrs = tuple(sorted((n, a.default_value.SerializeToString()) for n, a in schema.attributes.items()))
    return attrs, len(schema.inputs), len(schema.outputs), schema.min_input, schema.max_input


def _same_ops(body: onnx.FunctionProto, body_opset: int, model_opset: int) -> bool:
    """May a body written for `body_opset` run as `model_opset`? Yes when every op in it is the same
    version in both, or its newer version has the same attributes (with the same defaults) and
    inputs and outputs: such revisions only widened type constraints (CastLike-25, Sigmoid-13...).
    Revisions that changed meaning changed the signature too (Split-18, ReduceMean-18, Pad-19)."""
    for n in body.node:
        if n.domain not in ("", "ai.onnx"):
            return False
        try:
            a = onnx.defs.get_schema(n.op_type, body_opset, "")
            b = onnx.defs.get_schema(n.op_type, model_opset, "")
        except onnx.defs.SchemaError:
            return False
        if a.since_version != b.since_version and _signature(a) != _signature(b):
            return False
    return True


def _body_version(schema: onnx.defs.OpSchema, versions: list[int], model_opset: int) -> int | None:
    """The body to use: the newest written for an opset <= the model's; else (ONNX added bodies to
    old ops late: HardSwish-14 has one only from opset 22) the oldest newer one, if the op's
    signature did not change between the model's version and that one."""
    older = [v for v in versions if v <= model_opset]
    if older:
        return max(older)
    newer = [v for v in versions if v > model_opset]
    if not newer:
        return None
    later = onnx.defs.get_schema(schema.name, min(newer), schema.domain)
    return min(newer) if _signature(later) == _signature(schema) else None


def body_for(
    node: onnx.NodeProto, model_opset: int, types: dict[str, onnx.TypeProto] | None
) -> onnx.FunctionProto | None:
    """The function body defining `node` at `model_opset`, or None (no body, unknown input types,
    or a body for an older opset whose ops changed since)."""
    try:
        schema = onnx.defs.get_schema(node.op_type, model_opset, "")
    except onnx.defs.SchemaError:
        return None
    full = _with_defaults(node, schema)
    if schema.has_function:
        version = _body_version(schema, schema.function_opset_versions, model_opset)
        if version is None:
            return None
        body = schema.get_function_with_opset_version(version)
    elif schema.has_context_dependent_function:
        version = _body_version(schema, schema.context_dependent_function_opset_versions, model_opset)
        if version is None or types is None or any(n and n not in types for n in full.input):
            return None
        raw = schema.get_context_dependent_function_with_opset_version(
            version, full.SerializeToString(), [types[n].SerializeToString() for n in full.input if n]
        )
        body = onnx.FunctionProto.FromString(raw) if raw else None
    else:
        return None
    if isinstance(body, bytes):  # the pybind API returns serialized FunctionProtos
        body = onnx.FunctionProto.FromString(body)
    if body is None or not body.node:
        return None
    body_opset = max(
        (o.version for o in body.opset_import if o.domain in ("", "ai.onnx")), default=model_opset
    )
    if body_opset != model_opset:
        if not _same_ops(body, body_opset, model_opset):
            return None
        for o in body.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = model_opset
    return body


def expand(model: onnx.ModelProto, op_types: set[str]) -> set[str]:
    """Inline the function body of every top-level node whose op is in `op_types`, in place;
    the op types that were expanded."""
    targets = [n for n in model.graph.node if n.op_type in op_types and n.domain in ("", "ai.onnx")]
    if not targets:
        return set()
    opset = opset_version(model)
    needs_types = any(
        onnx.defs.has(n.op_type) and onnx.defs.get_schema(n.op_type, opset, "").has_context_dependent_function
        for n in targets
    )
    types = _types(infer_shapes(model)) if needs_types else None
    ids, done = [], set()
    for k, node in enumerate(targets):
        body = body_for(node, opset, types)
        if body is None:
            log.info("no usable function body for %s (%s) at opset %d", node.op_type, node.name, opset)
            continue
        body.domain, body.name = _DOMAIN, f"{node.op_type}_{k}"
        schema = onnx.defs.get_schema(node.op_type, opset, "")
        full = _with_defaults(node, schema)
        del node.attribute[:]
        node.attribute.extend(full.attribute)
        done.add(node.op_type)
        node.domain, node.op_type = body.domain, body.name
        model.functions.append(body)
        ids.append((body.domain, body.name))
    if not ids:
        return set()
    model.opset_import.append(onnx.helper.make_opsetid(_DOMAIN, 1))
    inlined = inliner.inline_selected_functions(model, ids, exclude=False)
    model.CopyFrom(inlined)
    kept = [f for f in model.functions if f.domain != _DOMAIN]
    del model.functions[:]
    model.functions.extend(kept)
    imports = [o for o in model.opset_import if o.domain != _DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(imports)
    return done


def _exists_at(op_type: str, opset: int) -> bool:
    try:
        onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return False
    return True


def expand_newer_than(model: onnx.ModelProto, limit: int) -> list[str]:
    """Expand every op that did not exist yet at opset `limit` and has a function body (Gelu-20,
    Mish-18, Swish-24, RMSNormalization-23... for a backend at opset 17 or 20): the version
    converter has no adapter below the opset that introduced an op. Ops that existed at `limit`
    are left to the converter's adapters (their native kernels are faster than a body). In place;
    the op types expanded, in order."""
    done: list[str] = []
    for _ in range(4):  # a body may use other new ops; each round expands one level
        newer = {
            n.op_type
            for n in model.graph.node
            if n.domain in ("", "ai.onnx") and onnx.defs.has(n.op_type) and not _exists_at(n.op_type, limit)
        }
        expanded = expand(model, newer) if newer else set()
        if not expanded:
            break
        done += sorted(expanded - set(done))
    return done


def _make(op_type: str) -> None:
    wanted = {op_type}

    def apply(model: onnx.ModelProto) -> bool:
        return bool(expand(model, wanted))

    register(f"expand-{op_type}", doc=f"{op_type} -> its ONNX function body, inlined")(apply)


for _op in function_ops():
    _make(_op)
