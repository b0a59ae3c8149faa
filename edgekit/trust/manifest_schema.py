"""The typed `signed` part of an update manifest (see edgekit.trust.manifest for the format).

Forward compatible: unknown fields, top-level or per artifact, are ignored (a newer fleet may
add some). Validated and bounded:
- `model`, artifact keys and artifact `file` names are safe names (edgekit.trust.names);
- `sha256` is exactly 64 lowercase hex digits, `sequence` is 0..2**63-1, `size` 0..MAX_ARTIFACT_BYTES;
- `url` is printable ASCII, at most 2048 chars, http(s) or relative (joined to the agent's base URL);
- free-text fields (fleet, device, channel, rollout, version, precision) are 1..128 printable chars;
- at most MAX_ARTIFACTS artifacts; timestamps parse as ISO 8601 with a timezone;
- an artifact's optional `delta` list (binary patches from blobs devices may already hold, see
  edgekit.delta) has at most MAX_DELTAS entries; `algorithm` is free text so a newer fleet's
  algorithm is skipped by an older agent, not refused;
- the optional `provenance` (the conversion report, see edgekit.provenance) has at most one row
  per artifact, bounded text, finite numbers; its rows must name the same sha256 and size as the
  artifacts they describe (checked in edgekit.trust.manifest: `provenance_mismatch`);
- the optional `mode` is "active" (absent means active) or "shadow": a shadow release is
  installed beside the active version and compared with it on mirrored requests, never served;
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

from edgekit.trust.fields import WIRE, Label, SafeName, Sha256Hex, Text, Timestamp, Uint63

MAX_ARTIFACTS = 64
MAX_ARTIFACT_BYTES = 2**40  # 1 TiB: far above any edge model, far below what overflows anything
MAX_TENSORS = 64
MAX_DIMS = 32
MAX_DELTAS = 16  # per artifact: one per version devices commonly run, far fewer in practice
MAX_TOOLCHAINS = 16
MAX_VERSIONS = 32  # tool -> version pairs per artifact row

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


Size = Annotated[int, Field(ge=0, le=MAX_ARTIFACT_BYTES)]


class DeltaEntry(BaseModel):
    """A binary patch that turns the blob `from_sha256` into this artifact. Its own bytes are
    checked against `sha256`/`size`, and its result against the artifact's signed digest."""

    model_config = WIRE
    from_sha256: Sha256Hex
    url: Url
    sha256: Sha256Hex
    size: Size
    algorithm: Label


class ArtifactEntry(BaseModel):
    """One artifact as it appears on the wire, under its key in `artifacts`."""

    model_config = WIRE
    url: Url
    sha256: Sha256Hex
    size: Size
    file: SafeName
    precision: Label
    delta: list[DeltaEntry] | None = Field(default=None, max_length=MAX_DELTAS)


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


LockDigest = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{8,64}$")]


class ToolchainInfo(BaseModel):
    model_config = WIRE
    lock: LockDigest  # digest of the toolchain's lock file (converters/toolchains)


class Parity(BaseModel):
    """The artifact against the fp32 reference, on the conversion's validation samples."""

    model_config = WIRE
    max_abs_error: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    cosine: Annotated[float, Field(ge=-1, le=1, allow_inf_nan=False)] | None = None
    bound: Text | None = None


class Accuracy(BaseModel):
    model_config = WIRE
    top1: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    top1_drop_pts: Annotated[float, Field(ge=-100, le=100, allow_inf_nan=False)] | None = None


class ProvenanceRow(BaseModel):
    """What the conversion report says about one artifact of the manifest (same key)."""

    model_config = WIRE
    sha256: Sha256Hex
    size: Size
    target: Label | None = None
    precision: Label | None = None
    runtime: Label | None = None
    toolchain: SafeName | None = None
    versions: dict[Label, Label] = Field(default_factory=dict, max_length=MAX_VERSIONS)
    parity: Parity | None = None
    accuracy: Accuracy | None = None
    latency_ms: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None


# Drift baseline (edgekit.drift): what the conversion's calibration inputs and reference outputs
# looked like, per tensor, so devices histogram what they serve in the same bins (PSI needs them).
MAX_DRIFT_TENSORS = 16  # inputs and outputs of one model
MAX_DRIFT_BINS = 16  # value and confidence histograms
MAX_DRIFT_CLASSES = 32  # class histogram; higher class indices share the last bin
Finite = Annotated[float, Field(allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class DriftBaseline(BaseModel):
    """One tensor's baseline: the per-row mean's count, mean, std and histogram (as fractions)
    over `edges` (inner bin edges, open-ended outer bins); for a classifier's output, the
    class and top-1 confidence histograms too."""

    model_config = WIRE
    name: Label
    io: Literal["input", "output"]
    count: Annotated[int, Field(ge=0, le=2**53)]
    mean: Finite
    std: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    edges: list[Finite] = Field(default_factory=list, max_length=MAX_DRIFT_BINS - 1)
    hist: list[Fraction] = Field(default_factory=list, max_length=MAX_DRIFT_BINS)
    classes: list[Fraction] | None = Field(default=None, max_length=MAX_DRIFT_CLASSES)
    conf: list[Fraction] | None = Field(default=None, max_length=MAX_DRIFT_BINS)


class Provenance(BaseModel):
    """Where the release came from: the conversion report, cut to what a device can check."""

    model_config = WIRE
    source_sha256: Sha256Hex | None = None
    source_format: Label | None = None
    source_origin: Text | None = None
    calibration_sha256: Sha256Hex | None = None
    eval_sha256: Sha256Hex | None = None
    reference_top1: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    edgekit_version: Label | None = None
    converted_at: Timestamp | None = None
    published_at: Timestamp | None = None
    toolchains: dict[SafeName, ToolchainInfo] = Field(default_factory=dict, max_length=MAX_TOOLCHAINS)
    artifacts: dict[SafeName, ProvenanceRow] = Field(default_factory=dict, max_length=MAX_ARTIFACTS)
    drift: list[DriftBaseline] | None = Field(default=None, max_length=MAX_DRIFT_TENSORS)


MODES = ("active", "shadow")
Mode = Literal[MODES]  # type: ignore[valid-type]


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
    provenance: Provenance | None = None
    mode: Mode = "active"
    issued_at: Timestamp
    expires_at: Timestamp

    def artifact(self, key: str) -> Artifact:
        return Artifact(format=key, **self.artifacts[key].model_dump())


WIRE_ARTIFACT_FIELDS = tuple(ArtifactEntry.model_fields)
# Omitted from the signed JSON when absent, so a manifest without them is byte-identical to
# what agents that predate them verify.
OPTIONAL_ARTIFACT_FIELDS = frozenset({"delta"})
