"""Feeds calibration samples to onnxruntime's static quantizer, one sample at a time."""

from __future__ import annotations

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from converters.data import Dataset


class DatasetReader(CalibrationDataReader):
    """One sample per step: calibration statistics must not depend on the batch dimension."""

    def __init__(self, data: Dataset, limit: int = 200):
        self._data = data.head(limit)
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._data):
            return None
        i = self._i
        self._i += 1
        return self._data.feed(i)  # one whole input per step (converters/data.py)

    def rewind(self) -> None:
        self._i = 0
