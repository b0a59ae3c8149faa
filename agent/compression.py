"""HTTP body compression for the OIP routes: gzip and deflate, both ways, bounded.

Requests: `Content-Encoding: gzip|deflate` bodies are inflated before decoding, so the binary
extension's `Inference-Header-Content-Length` counts the *decompressed* JSON header (as Triton
and tritonclient's `request_compression_algorithm` have it). The inflated size is bounded by the
same limit as a plain body: a small body that inflates past it (a zip bomb) is a 413 after at
most `limit` bytes were produced, never an unbounded allocation.

Responses: a client that sends `Accept-Encoding: gzip` or `deflate` (tritonclient's
`response_compression_algorithm`) gets the body compressed. "deflate" is the zlib format
(RFC 9110 section 8.4.1.2), which is what tritonclient writes and reads.
"""

from __future__ import annotations

import zlib

from agent.oip_types import OIPError

GZIP, DEFLATE, IDENTITY = "gzip", "deflate", "identity"
_WBITS = {GZIP: 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, DEFLATE: zlib.MAX_WBITS}
_CHUNK = 1 << 16
MIN_COMPRESS = 256  # below this the headers outweigh any saving


def decode_body(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The request body with its Content-Encoding undone, or OIPError (415 unknown coding, 400
    corrupt data, 413 inflating past `limit`)."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    for coding in reversed(codings):  # applied in the order listed: undo the last one first
        if coding == IDENTITY:
            continue
        wbits = _WBITS.get(coding)
        if wbits is None:
            raise OIPError(415, f"unsupported Content-Encoding {coding!r} (gzip, deflate or identity)")
        body = _inflate(body, wbits, limit, coding)
    return body


def _inflate(data: bytes, wbits: int, limit: int, coding: str) -> bytes:
    d = zlib.decompressobj(wbits)
    out: list[bytes] = []
    size = 0
    try:
        pending = data
        while True:
            chunk = d.decompress(pending, _CHUNK)
            size += len(chunk)
            if size > limit:
                raise OIPError(413, f"request body inflates past the {limit}-byte limit ({coding})")
            out.append(chunk)
            pending = d.unconsumed_tail
            if d.eof or (not pending and not chunk):  # done, or input spent with nothing pending
                break
    except zlib.error as e:
        raise OIPError(400, f"request body is not valid {coding} data: {e}") from None
    if not d.eof:
        raise OIPError(400, f"request body is truncated {coding} data")
    if d.unused_data:
        raise OIPError(400, f"{len(d.unused_data)} bytes follow the end of the {coding} data")
    return b"".join(out)


def choose_encoding(accept_encoding: str | None) -> str | None:
    """The coding to answer with for an Accept-Encoding header: gzip, deflate, or None (as is)."""
    best, best_q = None, 0.0
    for part in (accept_encoding or "").split(","):
        coding, _, params = part.strip().partition(";")
        coding = coding.strip().lower()
        if coding not in (GZIP, DEFLATE):
            continue
        q = 1.0
        for p in params.split(";"):
            key, _, value = p.strip().partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > best_q or (q == best_q and coding == GZIP):  # gzip on a tie: the more common one
            best, best_q = coding, q
    return best


def encode_body(body: bytes, coding: str) -> bytes:
    # Level 1: on a loopback or LAN link, time spent compressing is latency; most of the gain of
    # compressing float tensors comes at the lowest level anyway.
    if coding == GZIP:
        c = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    else:
        c = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS)
    return c.compress(body) + c.flush()
