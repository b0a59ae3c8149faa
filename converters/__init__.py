"""ONNX-centred conversion pipeline: import, optimize, quantize, export per target, validate, report."""
