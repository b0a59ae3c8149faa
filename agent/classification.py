"""The classification extension: a requested output with `parameters: {"classification": k}`
(tritonclient's `InferRequestedOutput(name, class_count=k)`) is answered with the top k classes
instead of the raw scores, as Triton does: a BYTES tensor of "score:index" strings, or
"score:index:label" when the model card has labels, best first, the score written with six
decimals (C++ std::to_string, which Triton uses).

Shapes: an output [C] gives [k]; [B, C] gives [B, k], one row per batch item. k larger than C is
clamped to C (Triton does the same). Anything else - a rank-0 or rank-3+ output, a non-numeric
one, k < 1 - is a 400 naming the output: the parameter is never silently ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agent.oip_types import OIPError

PARAMETER = "classification"


def check_applies(output: str, dtype: np.dtype | str, rank: int) -> None:
    """OIPError(400) unless top-k classification can apply to an output of this dtype and rank."""
    kind = np.dtype(dtype).kind
    if kind not in "iuf":
        raise OIPError(
            400, f"output {output!r}: classification needs numeric scores, not {np.dtype(dtype).name}"
        )
    if rank not in (1, 2):
        raise OIPError(
            400,
            f"output {output!r}: classification needs scores shaped [classes] or [batch, classes], "
            f"not rank {rank}",
        )


def classify(output: str, scores: np.ndarray, k: int, labels: Sequence[str] | None = None) -> np.ndarray:
    """The top `k` classes of `scores` as "score:index[:label]" strings (an object array of bytes)."""
    scores = np.asarray(scores)
    check_applies(output, scores.dtype, scores.ndim)
    rows = scores.reshape(1, -1) if scores.ndim == 1 else scores
    classes = rows.shape[1]
    k = min(k, classes)
    if labels is not None and len(labels) != classes:
        labels = None  # a card whose labels do not match the output would name the wrong classes
    # Stable sort on the negated scores: equal scores keep index order, as a top-k should.
    order = np.argsort(-rows.astype(np.float64), axis=1, kind="stable")[:, :k]
    out = np.empty((rows.shape[0], k), dtype=object)
    for b in range(rows.shape[0]):
        for j, idx in enumerate(order[b].tolist()):
            text = f"{float(rows[b, idx]):f}:{idx}"
            if labels is not None:
                text += f":{labels[idx]}"
            out[b, j] = text.encode()
    return out.reshape(k) if scores.ndim == 1 else out
