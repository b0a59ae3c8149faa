"""Opset down-conversion for backends that know only older opsets (onnx2torch: 17, onnx2tf: 20).

onnx.version_converter does the work; around it:
- ops newer than the limit that have an ONNX function body are expanded first (the converter has
  no adapter below the opset that introduced an op, and one such op blocked the whole model);
- afterwards, attributes the older schema does not know are dropped where they hold the newer
  schema's default (Cast's `saturate` survives the converter, and the checker then rejects it).
"""

from __future__ import annotations

import logging

import onnx
import onnx.defs
from onnx import version_converter

from converters.passes._rewrite import iter_nodes, opset_version
from converters.passes.functions import expand_newer_than

log = logging.getLogger(__name__)


def expand_new_ops(model: onnx.ModelProto, limit: int | None) -> list[str]:
    """expand-<Op> for every op that did not exist at opset `limit` (see expand_newer_than); run
    before the target's passes, so their CastLike expansion and constant folding see the bodies."""
    if not limit or opset_version(model) <= limit:
        return []
    try:
        return [f"expand-{op}" for op in expand_newer_than(model, limit)]
    except Exception as e:  # as with any pass: an improvement, never a reason to fail
        log.warning("cannot expand ops newer than opset %d: %s", limit, e)
        return []


def downgrade_opset(model: onnx.ModelProto, limit: int | None) -> list[str]:
    """Convert `model` in place down to opset `limit`; the names of what was done."""
    current = opset_version(model)
    if not limit or current <= limit:
        return []
    done = expand_new_ops(model, limit)  # what the target's passes brought in, if anything
    try:
        converted = version_converter.convert_version(model, limit)
    except Exception as e:  # the converter lacks adapters for some ops; let the backend try
        log.warning("cannot convert opset %d down to %d: %s", current, limit, e)
        return done
    _drop_default_attributes_unknown_at(converted, limit)
    model.CopyFrom(converted)
    return [*done, f"opset-{current}-to-{limit}"]


def _drop_default_attributes_unknown_at(model: onnx.ModelProto, opset: int) -> None:
    for node in iter_nodes(model.graph):
        if node.domain not in ("", "ai.onnx") or not onnx.defs.has(node.op_type):
            continue
        try:
            known = onnx.defs.get_schema(node.op_type, opset, "").attributes
        except onnx.defs.SchemaError:
            continue
        newest = onnx.defs.get_schema(node.op_type).attributes
        keep = []
        for a in node.attribute:
            default = newest[a.name].default_value if a.name in newest else None
            if a.name not in known and default is not None and _same_value(a, default):
                continue
            keep.append(a)
        if len(keep) != len(node.attribute):
            del node.attribute[:]
            node.attribute.extend(keep)


def _same_value(a: onnx.AttributeProto, default: onnx.AttributeProto) -> bool:
    if default.type == onnx.AttributeProto.UNDEFINED:
        return False
    return onnx.helper.get_attribute_value(a) == onnx.helper.get_attribute_value(default)
