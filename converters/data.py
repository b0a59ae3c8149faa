"""Calibration and evaluation data: `.npz` files keyed by the model's input names (+ `labels`).

A mismatch is caught here, before any conversion, with both sides of it in the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import DataError
from edgekit.modelcard import ModelCard

LABELS_KEY = "labels"


@dataclass
class Dataset:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    path: Path | None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def head(self, n: int) -> Dataset:
        labels = None if self.labels is None else self.labels[:n]
        return Dataset({k: v[:n] for k, v in self.inputs.items()}, labels, self.path)

    def save(self, path: Path) -> Path:
        np.savez(path, **self.inputs)
        return path


def load_npz(path: str | Path, card: ModelCard, purpose: str, need_labels: bool = False) -> Dataset:
    p = Path(path)
    try:
        npz = np.load(p, allow_pickle=False)
    except FileNotFoundError as e:
        raise DataError(f"{purpose} data not found: {p}") from e
    except Exception as e:
        raise DataError(f"{purpose} data {p.name} is not a readable .npz: {e}") from e
    keys = set(npz.files)
    expected = [t.name for t in card.inputs]
    missing = [n for n in expected if n not in keys]
    if missing:
        extra = sorted(keys - set(expected) - {LABELS_KEY})
        raise DataError(
            f"{purpose} data {p.name} does not match the model inputs: missing {missing}"
            + (f", unexpected {extra}" if extra else "")
            + f" (model inputs: {expected})"
        )
    inputs: dict[str, np.ndarray] = {}
    count = None
    for spec in card.inputs:
        arr = npz[spec.name]
        if not spec.accepts(tuple(arr.shape)):
            raise DataError(
                f"{purpose} data {p.name}: input {spec.name!r} has shape {list(arr.shape)}, "
                f"the model takes {spec.shape}"
            )
        if count is not None and len(arr) != count:
            raise DataError(f"{purpose} data {p.name}: inputs have different sample counts")
        count = len(arr)
        inputs[spec.name] = arr.astype(spec.dtype, copy=False)
    labels = npz[LABELS_KEY] if LABELS_KEY in keys else None
    if need_labels and labels is None:
        raise DataError(f"{purpose} data {p.name} has no {LABELS_KEY!r} array (needed for top-1)")
    if labels is not None and len(labels) != count:
        raise DataError(f"{purpose} data {p.name}: {len(labels)} labels for {count} samples")
    return Dataset(inputs, labels, p)
