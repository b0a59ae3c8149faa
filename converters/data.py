"""Calibration and evaluation data: `.npz` files keyed by the model's input names (+ `labels`).

The convention (README "Data"): an array is a stack of samples along its first axis.
- With one more axis than the model input, each entry is one whole input (any model: no batch
  axis, state inputs, sequence-first, static batch 4).
- With the input's own rank, each row is one sample of the model's batch: a model with a static
  leading dim of b takes b rows per sample (b = 1 for `[1,3,32,32]`), a dynamic leading dim one row.
In memory every input is normalised to the first form, `(samples, *run_shape)`, so `inputs[k][i]`
is a complete feed. A mismatch is caught here, before any conversion, with both sides of it named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import DataError
from edgekit.modelcard import ModelCard, TensorSpec

LABELS_KEY = "labels"


@dataclass
class Dataset:
    inputs: dict[str, np.ndarray]  # name -> (samples, *run_shape)
    labels: np.ndarray | None  # one per sample, or one per batch row of every sample
    path: Path | None
    count: int | None = None  # samples; needed when the model has no inputs at all

    def __len__(self) -> int:
        if self.count is not None:
            return self.count
        return len(next(iter(self.inputs.values()))) if self.inputs else 0

    def head(self, n: int) -> Dataset:
        n = min(n, len(self))
        labels = None
        if self.labels is not None:
            per = max(1, len(self.labels) // max(1, len(self)))
            labels = self.labels[: n * per]
        return Dataset({k: v[:n] for k, v in self.inputs.items()}, labels, self.path, n)

    def without(self, names) -> Dataset:
        """The same samples without the named inputs (frozen into the model: converters/freeze.py)."""
        kept = {k: v for k, v in self.inputs.items() if k not in set(names)}
        return Dataset(kept, self.labels, self.path, len(self))

    def feed(self, i: int) -> dict[str, np.ndarray]:
        """Sample i as one run's feeds."""
        return {k: np.asarray(v[i]) for k, v in self.inputs.items()}  # 0-d inputs stay arrays

    def save(self, path: Path) -> Path:
        """The stacked form (what toolchain workers read); `__count__` keeps input-less models."""
        np.savez(path, __count__=np.int64(len(self)), **self.inputs)
        return path

    def save_feed(self, path: Path, i: int = 0) -> Path:
        """One sample as a plain feed (the golden input that `fleet publish` signs)."""
        np.savez(path, **self.feed(i))
        return path


def stacked(arr: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    """`arr` as (samples, *run_shape) for `spec` (see the module docstring), or a DataError."""
    rank = len(spec.shape)
    if arr.ndim == rank + 1:
        out = arr
    elif arr.ndim == rank and rank >= 1:
        lead = spec.shape[0]
        per = lead if isinstance(lead, int) and lead > 0 else 1
        if arr.shape[0] % per:
            raise DataError(
                f"{where}: input {spec.name!r} has {arr.shape[0]} rows, not a multiple of the model's "
                f"fixed batch {per} {spec.shape}"
            )
        out = arr.reshape(arr.shape[0] // per, per, *arr.shape[1:])
    else:
        raise DataError(
            f"{where}: input {spec.name!r} has shape {list(arr.shape)}; the model takes {spec.shape}: give "
            f"{rank + 1} dims (a stack of whole inputs)" + (f" or {rank} (rows of its batch)" if rank else "")
        )
    if not spec.accepts(tuple(out.shape[1:])):
        raise DataError(
            f"{where}: input {spec.name!r} has shape {list(arr.shape)} (samples of {list(out.shape[1:])}), "
            f"the model takes {spec.shape}"
        )
    return out


def _cast(arr: np.ndarray, spec: TensorSpec, where: str) -> np.ndarray:
    want = np.dtype(spec.dtype)
    fractional = arr.dtype.kind == "f" and arr.size and not np.all(np.isfinite(arr) & (arr == np.round(arr)))
    if want.kind in "iub" and fractional:
        raise DataError(f"{where}: input {spec.name!r} is {spec.dtype} but the data has fractional values")
    return arr.astype(want, copy=False)


def load_npz(path: str | Path, card: ModelCard, purpose: str, need_labels: bool = False) -> Dataset:
    p = Path(path)
    try:
        npz = np.load(p, allow_pickle=False)
        keys = set(npz.files)
    except FileNotFoundError as e:
        raise DataError(f"{purpose} data not found: {p}") from e
    except Exception as e:
        raise DataError(f"{purpose} data {p.name} is not a readable .npz: {type(e).__name__}: {e}") from e
    expected = [t.name for t in card.inputs]
    missing = [n for n in expected if n not in keys]
    if missing:
        extra = sorted(keys - set(expected) - {LABELS_KEY, "__count__"})
        raise DataError(
            f"{purpose} data {p.name} does not match the model inputs: missing {missing}"
            + (f", unexpected {extra}" if extra else "")
            + f" (model inputs: {expected})"
        )
    where = f"{purpose} data {p.name}"
    inputs: dict[str, np.ndarray] = {}
    count = _count(npz, where)
    for spec in card.inputs:
        arr = _cast(stacked(read_array(npz, spec.name, where), spec, where), spec, where)
        if count is not None and len(arr) != count:
            raise DataError(f"{where}: inputs have different sample counts ({count} and {len(arr)})")
        count = len(arr)
        inputs[spec.name] = arr
    if not count:
        raise DataError(f"{where} has no samples")
    labels = read_array(npz, LABELS_KEY, where) if LABELS_KEY in keys else None
    if need_labels and labels is None:
        raise DataError(f"{where} has no {LABELS_KEY!r} array (needed for top-1)")
    if labels is not None:
        rows = count * (next(iter(inputs.values())).shape[1] if inputs and inputs_have_rows(card) else 1)
        if len(labels) not in (count, rows):
            raise DataError(f"{where}: {len(labels)} labels for {count} samples")
    return Dataset(inputs, labels, p, count)


def inputs_have_rows(card: ModelCard) -> bool:
    """Whether every input's leading axis is a batch of rows (a label per row is then allowed)."""
    return all(t.shape for t in card.inputs)


def load_stack(path: str | Path) -> Dataset:
    """A stacked .npz this module wrote (workers and backends read the pipeline's files this way)."""
    npz = np.load(path, allow_pickle=False)
    where = f"data {Path(path).name}"
    inputs = {k: read_array(npz, k, where) for k in npz.files if k != "__count__"}
    return Dataset(inputs, None, Path(path), _count(npz, where))


def read_array(npz: Any, key: str, where: str) -> np.ndarray:
    """One array of an .npz, or a DataError naming it. Never unpickled: a pickle in a data file
    runs code on load, so an object array (dicts, ragged lists, None) is refused, not read."""
    try:
        return npz[key]
    except ValueError as e:
        if "pickle" in str(e):  # numpy: "Object arrays cannot be loaded when allow_pickle=False"
            raise DataError(
                f"{where}: {key!r} is a pickled object array; edgekit does not unpickle data files",
                hint="save numeric (or string) arrays of one shape, e.g. np.asarray(x, dtype=np.float32)",
            ) from None
        raise DataError(f"{where}: cannot read {key!r}: {e}") from None
    except Exception as e:  # a damaged member of the zip
        raise DataError(f"{where}: cannot read {key!r}: {type(e).__name__}: {e}") from None


def _count(npz: Any, where: str) -> int | None:
    if "__count__" not in npz.files:
        return None
    arr = read_array(npz, "__count__", where)
    if arr.shape != () or arr.dtype.kind not in "iu":
        raise DataError(f"{where}: '__count__' must be one integer, not {arr.dtype} {list(arr.shape)}")
    return int(arr)
