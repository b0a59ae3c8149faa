"""Per-model routing between the local runtime and the cloud endpoint.

Policies:
  local-first  local; the cloud answers when the model is missing, local inference fails,
               misses its deadline, or a classifier's top-1 confidence is below the threshold
  cloud-first  cloud; local answers when the cloud is unreachable, slow, erroring or the breaker is open
  local-only   never the cloud
  cloud-only   never local; cloud down -> 503
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

LOCAL_FIRST = "local-first"
CLOUD_FIRST = "cloud-first"
LOCAL_ONLY = "local-only"
CLOUD_ONLY = "cloud-only"
POLICIES = (LOCAL_FIRST, CLOUD_FIRST, LOCAL_ONLY, CLOUD_ONLY)

# fallback reasons (also metric label values)
MISSING_MODEL = "missing_model"
LOCAL_ERROR = "local_error"
DEADLINE = "deadline_exceeded"
LOW_CONFIDENCE = "low_confidence"


@dataclass
class Policy:
    mode: str = LOCAL_FIRST
    # local-first: route to cloud when top-1 probability < threshold (classifiers only)
    confidence_threshold: float | None = None
    # local-first: local inference slower than this goes to the cloud (None = no deadline)
    local_deadline_ms: float | None = None
    # cloud deadline for this model (None = the cloud client's timeout)
    cloud_deadline_ms: float | None = None
    # name of the model on the cloud server (default: same name)
    cloud_model: str | None = None
    # which output carries class scores (default: the first output)
    scores_output: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in POLICIES:
            raise ValueError(f"unknown fallback policy {self.mode!r}; expected one of {POLICIES}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Policy:
        d = dict(d or {})
        if "policy" in d:
            d["mode"] = d.pop("policy")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def top1_confidence(scores: np.ndarray) -> float:
    """Lowest top-1 probability over the batch. Logits are softmaxed; probabilities kept."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[None, :]
    s = s.reshape(s.shape[0], -1)
    if s.shape[1] == 0:
        return 1.0
    sums = s.sum(axis=1)
    is_prob = bool(np.all(s >= 0) and np.allclose(sums, 1.0, atol=1e-3))
    if not is_prob:
        e = np.exp(s - s.max(axis=1, keepdims=True))
        s = e / e.sum(axis=1, keepdims=True)
    return float(s.max(axis=1).min())
