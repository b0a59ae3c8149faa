"""The model card: what a model expects and returns. It travels with every artifact.

Built from the ONNX graph (names, shapes, dtypes) plus what the user tells us
(layout, preprocessing, labels). Agents, bundles and the fleet read only this file.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Dim = int | str | None  # int = fixed, str = symbolic (e.g. "batch"), None = unknown


@dataclass
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name, e.g. "float32"
    shape: list[Dim]
    layout: str | None = None  # "NCHW", "NHWC" or None when not an image

    def fixed_shape(self, batch: int = 1) -> list[int]:
        """The shape with every non-fixed dim replaced by `batch` (first) or 1."""
        out = []
        for i, d in enumerate(self.shape):
            out.append(d if isinstance(d, int) and d > 0 else (batch if i == 0 else 1))
        return out

    def accepts(self, shape: tuple[int, ...]) -> bool:
        if len(shape) != len(self.shape):
            return False
        return all(
            not (isinstance(d, int) and d > 0) or d == s for d, s in zip(self.shape, shape, strict=True)
        )


@dataclass
class ModelCard:
    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    task: str = "classification"  # "classification" enables top-1 and confidence routing
    labels: list[str] | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)  # format, path, sha256
    opset: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        d = dict(data)
        d["inputs"] = [TensorSpec(**t) for t in d.get("inputs", [])]
        d["outputs"] = [TensorSpec(**t) for t in d.get("outputs", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise KeyError(name)

    def sample_inputs(self, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
        """Deterministic random inputs matching the card (for parity when no data is given)."""
        rng = np.random.default_rng(seed)
        out = {}
        for t in self.inputs:
            shape = t.fixed_shape(batch)
            dt = np.dtype(t.dtype)
            if np.issubdtype(dt, np.floating):
                out[t.name] = rng.standard_normal(shape).astype(dt)
            else:
                out[t.name] = rng.integers(0, 10, size=shape).astype(dt)
        return out


def guess_layout(shape: list[Dim]) -> str | None:
    """An image-like rank-4 tensor: channels first if dim 1 is small, else channels last."""
    if len(shape) != 4:
        return None
    c1, c3 = shape[1], shape[3]
    if isinstance(c1, int) and c1 in (1, 3, 4) and not (isinstance(c3, int) and c3 in (1, 3, 4)):
        return "NCHW"
    if isinstance(c3, int) and c3 in (1, 3, 4):
        return "NHWC"
    return "NCHW"
