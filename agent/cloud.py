"""Client for the cloud endpoint: any Open Inference Protocol V2 server (Triton, KServe, edgekit serve).

Every call has a deadline (the whole call, retries included), a bounded number of retries for
transport errors and 5xx answers, and goes through a circuit breaker. 4xx answers are the
caller's fault: they are passed on as-is, never retried and never count against the link.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from agent.breaker import CircuitBreaker
from agent.oip import HEADER_LENGTH, decode_response, encode_request

log = logging.getLogger(__name__)

UNREACHABLE = "cloud_unreachable"
TIMEOUT = "cloud_timeout"
BREAKER_OPEN = "breaker_open"
HTTP_ERROR = "cloud_http_error"


class CloudError(Exception):
    def __init__(self, kind: str, message: str, status: int | None = None):
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.message = message


@dataclass
class CloudResult:
    outputs: dict[str, np.ndarray]
    model_version: str | None
    doc: dict[str, Any]


class CloudClient:
    def __init__(
        self,
        url: str,
        *,
        timeout: float = 2.0,
        retries: int = 1,
        breaker: CircuitBreaker | None = None,
        binary: bool = True,
        headers: dict[str, str] | None = None,
        verify: bool | str = True,
        cert: tuple[str, str] | None = None,
    ):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = max(0, retries)
        self.breaker = breaker or CircuitBreaker()
        self.binary = binary
        self._client = httpx.Client(
            timeout=timeout,
            headers=headers,
            verify=verify,
            cert=cert,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )

    def close(self) -> None:
        self._client.close()

    def infer(self, model: str, inputs: dict[str, np.ndarray], deadline: float | None = None) -> CloudResult:
        """Run `model` in the cloud. `deadline` is seconds for the whole call (default: timeout)."""
        budget = self.timeout if deadline is None else deadline
        end = time.monotonic() + budget
        body, hlen = encode_request(inputs, binary=self.binary)
        headers = {"Content-Type": "application/octet-stream" if hlen is not None else "application/json"}
        if hlen is not None:
            headers[HEADER_LENGTH] = str(hlen)
        last: CloudError | None = None
        for attempt in range(self.retries + 1):
            if not self.breaker.allow():
                raise last or CloudError(BREAKER_OPEN, "cloud circuit breaker is open")
            left = end - time.monotonic()
            if left <= 0:
                break
            try:
                r = self._client.post(
                    f"{self.url}/v2/models/{model}/infer", content=body, headers=headers, timeout=left
                )
            except httpx.TimeoutException as e:
                self.breaker.record_failure()
                last = CloudError(TIMEOUT, f"cloud did not answer within {budget * 1000:.0f} ms ({e!r})")
                continue
            except httpx.TransportError as e:
                self.breaker.record_failure()
                last = CloudError(UNREACHABLE, f"cloud unreachable: {e!r}")
                if attempt < self.retries:
                    time.sleep(min(0.05 * 2**attempt, max(0.0, end - time.monotonic())))
                continue
            if r.status_code >= 500:
                self.breaker.record_failure()
                last = CloudError(HTTP_ERROR, f"cloud answered {r.status_code}: {_err(r)}", r.status_code)
                continue
            self.breaker.record_success()
            if r.status_code >= 400:
                raise CloudError(HTTP_ERROR, _err(r), r.status_code)
            h = r.headers.get(HEADER_LENGTH)
            doc, outputs = decode_response(r.content, int(h) if h else None)
            return CloudResult(outputs, doc.get("model_version"), doc)
        raise last or CloudError(TIMEOUT, f"cloud deadline of {budget * 1000:.0f} ms exceeded")

    def ready(self, model: str | None = None) -> bool:
        path = f"/v2/models/{model}/ready" if model else "/v2/health/ready"
        try:
            return self._client.get(self.url + path, timeout=self.timeout).status_code == 200
        except httpx.HTTPError:
            return False


def _err(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error", r.text))
    except ValueError:
        return r.text[:200]
