"""Typed request bodies of the admin API (what `edgekit fleet ...` sends), with explicit bounds.

Unknown keys are ignored so an older server still takes a newer CLI's request; the rollout
engine keeps the domain rules (increasing waves, thresholds in [0, 1]) and says them in its
own words, the schema only bounds types and sizes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgekit.protocol import DeviceId, Labels, Name
from fleet.gates import MAX_GATES
from fleet.shadow import MAX_MIN_REQUESTS

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_BODY_DEPTH = 8
MAX_DEVICES = 20_000

Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: Annotated[Name, Field(min_length=1)]
    version: Annotated[Name, Field(min_length=1)]
    selector: Labels = Field(default_factory=dict)
    waves: Annotated[
        list[Annotated[float, Field(allow_inf_nan=False)]], Field(min_length=1, max_length=100)
    ] = [100.0]
    success_threshold: Fraction = 0.95
    max_failure_rate: Fraction = 0.05
    device_timeout: Annotated[float, Field(gt=0, le=30 * 86400, allow_inf_nan=False)] = 900.0
    devices: Annotated[list[DeviceId], Field(max_length=MAX_DEVICES)] | None = None
    # health gates: fleet.gates parses each "metric<=value" and names a bad one
    gates: Annotated[list[Annotated[Name, Field(max_length=80)]], Field(max_length=MAX_GATES)] = []
    bake: Annotated[float, Field(ge=0, le=30 * 86400, allow_inf_nan=False)] = 0.0
    on_breach: Literal["pause", "abort"] = "abort"
    # shadow canary: fleet.shadow parses each "metric>=value" and checks the request count
    shadow: bool = False
    promote: Annotated[list[Annotated[Name, Field(max_length=80)]], Field(max_length=MAX_GATES)] = []
    min_shadow_requests: Annotated[int, Field(ge=1, le=MAX_MIN_REQUESTS)] = 200
