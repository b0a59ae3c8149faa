"""Client for the cloud endpoint: any Open Inference Protocol V2 server (Triton, KServe, edgekit serve).

Every call has a deadline (the whole call, retries included), a bounded number of retries for
transport errors and 5xx answers, and goes through a circuit breaker. 4xx answers are the
caller's fault: they are passed on as-is, never retried and never count against the link.
An answer that cannot be used (undecodable body, not a V2 response) counts against the link and
is named `cloud_bad_response`; anything else that escapes an attempt still frees the breaker's
half-open probe slot on its way out.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np

from agent.breaker import CircuitBreaker
from agent.oip import HEADER_LENGTH, decode_response, encode_request

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

UNREACHABLE = "cloud_unreachable"
TIMEOUT = "cloud_timeout"
BREAKER_OPEN = "breaker_open"
HTTP_ERROR = "cloud_http_error"
BAD_RESPONSE = "cloud_bad_response"


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
        import httpx  # here, not at import: a box with no cloud endpoint starts without it

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
            left = end - time.monotonic()
            if left <= 0:
                break
            if not self.breaker.allow():
                raise last or CloudError(BREAKER_OPEN, "cloud circuit breaker is open")
            try:
                link_ok, outcome = self._attempt(model, body, headers, left, budget)
            except BaseException:
                self.breaker.release()  # no verdict on the link, but the probe slot must not leak
                raise
            if link_ok:
                self.breaker.record_success()
            else:
                self.breaker.record_failure()
            if isinstance(outcome, CloudResult):
                return outcome
            if link_ok:
                raise outcome  # the caller's error (4xx): not retried
            last = outcome
            if outcome.kind == UNREACHABLE and attempt < self.retries:
                time.sleep(min(0.05 * 2**attempt, max(0.0, end - time.monotonic())))
        raise last or CloudError(TIMEOUT, f"cloud deadline of {budget * 1000:.0f} ms exceeded")

    def _attempt(
        self, model: str, body: bytes, headers: dict[str, str], left: float, budget: float
    ) -> tuple[bool, CloudResult | CloudError]:
        """One POST, classified: (did the link work?, the result or the error to act on)."""
        import httpx  # loaded by __init__: a dict lookup

        try:
            r = self._client.post(
                f"{self.url}/v2/models/{quote(model, safe='')}/infer",
                content=body,
                headers=headers,
                timeout=left,
            )
        except httpx.TimeoutException as e:
            return False, CloudError(TIMEOUT, f"cloud did not answer within {budget * 1000:.0f} ms ({e!r})")
        except httpx.TransportError as e:
            return False, CloudError(UNREACHABLE, f"cloud unreachable: {e!r}")
        except httpx.HTTPError as e:  # e.g. a body whose Content-Encoding lies
            return False, CloudError(BAD_RESPONSE, f"cloud answer unusable: {type(e).__name__}: {e}")
        if r.status_code >= 500:
            return False, CloudError(HTTP_ERROR, f"cloud answered {r.status_code}: {_err(r)}", r.status_code)
        if r.status_code >= 400:
            return True, CloudError(HTTP_ERROR, _err(r), r.status_code)
        try:
            h = r.headers.get(HEADER_LENGTH)
            doc, outputs = decode_response(r.content, int(h) if h else None)
            version = doc.get("model_version")
        except Exception as e:  # the remote's bytes are untrusted input: whatever breaks, it is its answer
            return False, CloudError(BAD_RESPONSE, f"cloud answer is not a V2 response: {type(e).__name__}")
        return True, CloudResult(outputs, version, doc)

    def ready(self, model: str | None = None) -> bool:
        path = f"/v2/models/{model}/ready" if model else "/v2/health/ready"
        import httpx

        try:
            return self._client.get(self.url + path, timeout=self.timeout).status_code == 200
        except httpx.HTTPError:
            return False


def _err(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error", r.text))
    except ValueError:
        return r.text[:200]
