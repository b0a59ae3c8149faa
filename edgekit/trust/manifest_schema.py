"""The typed `signed` part of an update manifest (see edgekit.trust.manifest for the format).

Forward compatible: unknown fields, top-level or per artifact, are ignored (a newer fleet may
add some). Validated and bounded:
- `model`, artifact keys and artifact `file` names are safe names (edgekit.trust.names);
- `sha256` is exactly 64 lowercase hex digits, `sequence` is 0..2**63-1, `size` 0..MAX_ARTIFACT_BYTES;
- `url` is printable ASCII, at most 2048 chars, http(s) or relative (joined to the agent's base URL);
- free-text fields (fleet, device, channel, rollout, version, precision) are 1..128 printable chars;
- at most MAX_ARTIFACTS artifacts; timestamps parse as ISO 8601 with a timezone;
- the smoke test's tensors have a known numeric dtype, at most 32 dims, and exactly the bytes
  their shape needs, so decoding them on the device cannot fail.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, model_validator

from edgekit.trust.fields import WIRE, Label, SafeName, Sha256Hex, Timestamp, Uint63

MAX_ARTIFACTS = 64
MAX_ARTIFACT_BYTES = 2**40  # 1 TiB: far above any edge model, far below what overflows anything
MAX_TENSORS = 64
MAX_DIMS = 32

_ITEMSIZE = {
    "bool": 1,
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "uint16": 2,
    "float16": 2,
    "int32": 4,
    "uint32": 4,
    "float32": 4,
    "int64": 8,
    "uint64": 8,
    "float64": 8,
}


def _http_or_relative(url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme and scheme.lower() not in ("http", "https"):
        raise ValueError(f"url scheme {scheme[:16]!r} is not http(s)")
    return url


Url = Annotated[
    str,
    StringConstraints(min_length=1, max_length=2048, pattern=r"^[\x21-\x7e]+$"),
    AfterValidator(_http_or_relative),
]
TensorName = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class ArtifactEntry(BaseModel):
    """One artifact as it appears on the wire, under its key in `artifacts`."""

    model_config = WIRE
    url: Url
    sha256: Sha256Hex
    size: int = Field(ge=0, le=MAX_ARTIFACT_BYTES)
    file: SafeName
    precision: Label


class Artifact(ArtifactEntry):
    """An artifact of a verified manifest, with the key it was listed under as `format`."""

    format: SafeName


class Tensor(BaseModel):
    model_config = WIRE
    dtype: Literal[tuple(_ITEMSIZE)]  # type: ignore[valid-type]
    shape: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(max_length=MAX_DIMS)
    data_b64: str

    @model_validator(mode="after")
    def _bytes_match_shape(self) -> Tensor:
        try:
            data = base64.b64decode(self.data_b64, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError("data_b64 is not base64") from e
        need = math.prod(self.shape) * _ITEMSIZE[self.dtype]
        if len(data) != need:
            raise ValueError(f"{len(data)} bytes of data, shape and dtype need {need}")
        return self


class Tolerance(BaseModel):
    model_config = WIRE
    atol: float = Field(ge=0, allow_inf_nan=False)
    min_cosine: float = Field(ge=-1, le=1, allow_inf_nan=False)


class SmokeTest(BaseModel):
    model_config = WIRE
    inputs: dict[TensorName, Tensor] = Field(max_length=MAX_TENSORS)
    outputs: dict[TensorName, Tensor] = Field(min_length=1, max_length=MAX_TENSORS)
    outputs_sha256: Sha256Hex | None = None
    tolerance: dict[Label, Tolerance] | None = Field(default=None, max_length=MAX_TENSORS)


class ManifestBody(BaseModel):
    model_config = WIRE
    fleet: Label
    device: Label
    channel: Label
    rollout: Label | None = None
    model: SafeName
    version: Label
    sequence: Uint63
    artifacts: dict[SafeName, ArtifactEntry] = Field(min_length=1, max_length=MAX_ARTIFACTS)
    model_card: dict[str, Any]
    smoke_test: SmokeTest | None = None
    issued_at: Timestamp
    expires_at: Timestamp

    def artifact(self, key: str) -> Artifact:
        return Artifact(format=key, **self.artifacts[key].model_dump())


WIRE_ARTIFACT_FIELDS = tuple(ArtifactEntry.model_fields)
