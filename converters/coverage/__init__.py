"""The conformance matrix: ONNX's own backend node tests, one per op type, through every target.

Each case goes through edgekit's real pipeline (`converters.pipeline.convert`, fp32, one target
at a time), exactly what a user gets, and is classified against the outputs ONNX ships with it:
matched / mismatch / refused (with the reason) / failed (crash, timeout). A row the pipeline
reported ok whose outputs are not allclose to ONNX's is counted as "ok but wrong": that number
must be 0.

- cases.py     collect and select the node tests, write each as model + eval data + expected
- classify.py  one pipeline outcome -> matched / mismatch / refused / failed, reasons grouped
- runner.py    run (case, target) pairs in a long-lived child interpreter with a time limit
- render.py    docs/coverage.md (op x target) and docs/coverage.json
- __main__.py  `python -m converters.coverage` (what `make coverage` runs)
"""
