"""Field types shared by the signed wire formats (manifest, root), each with explicit bounds,
and the one place a pydantic ValidationError becomes a `malformed` refusal."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from edgekit.trust.errors import MALFORMED, VerificationError
from edgekit.trust.names import check_safe_name
from edgekit.trust.timeutil import parse_iso

# Integers that fit a signed 64-bit column on every side (SQLite on the fleet, JSON state files).
MAX_UINT63 = 2**63 - 1

# Forward compatible (a newer fleet may add fields; they are ignored), strict (no "5" -> 5, no
# true -> 1), immutable.
WIRE = ConfigDict(extra="ignore", strict=True, frozen=True)

Uint63 = Annotated[int, Field(ge=0, le=MAX_UINT63)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
# Printable, bounded free text (versions, channels, ids): no control characters, so it is safe
# to log and to put in a status message.
Label = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]
# Longer printable text (a source's origin, a parity bound): same rule, more room.
Text = Annotated[str, StringConstraints(max_length=512, pattern=r"^[^\x00-\x1f\x7f]*$")]


def _safe_name(value: str) -> str:
    return check_safe_name("name", value)


def _iso(value: str) -> str:
    parse_iso(value)  # ValueError -> a validation error; the text itself is kept as signed
    return value


SafeName = Annotated[str, AfterValidator(_safe_name)]
Timestamp = Annotated[str, StringConstraints(max_length=64), AfterValidator(_iso)]

M = TypeVar("M", bound=BaseModel)


def _shown(part: object) -> str:
    # Locations include dict keys from the document: bounded and escaped before they reach a log.
    text = repr(str(part))[1:-1]
    return text if len(text) <= 40 else text[:40] + "..."


def validate_wire(model: type[M], data: Any, what: str) -> M:
    """`model` from parsed JSON, or VerificationError(malformed) naming the first bad field.
    The message carries locations and pydantic's message only, never the (untrusted) value."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errs = e.errors(include_url=False, include_input=False, include_context=False)
        first = errs[0]
        loc = ".".join(_shown(p) for p in first["loc"]) or "(top)"
        more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
        raise VerificationError(MALFORMED, f"{what}: {loc}: {first['msg'][:200]}{more}") from None
