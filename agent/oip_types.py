"""OIP (KServe V2) datatypes and the error every OIP layer raises: the base the codecs share."""

from __future__ import annotations

import numpy as np

DATATYPE_TO_NUMPY: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
NUMPY_TO_DATATYPE = {v: k for k, v in DATATYPE_TO_NUMPY.items()}


class OIPError(Exception):
    """An error that becomes an OIP error body `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def datatype_of(dtype: str | np.dtype) -> str:
    name = np.dtype(dtype).name
    try:
        return NUMPY_TO_DATATYPE[name]
    except KeyError:
        raise OIPError(400, f"unsupported tensor dtype {name}") from None
