"""Recognise the one request the event loop answers itself: a whole, plain
`GET` or `HEAD` of /artifacts/sha256/<64 hex> over HTTP/1.1, alone in what
one recv() returned. Pure and deliberately strict: anything it is not sure
of (a body, a query, an obs-fold, a duplicate or malformed header, a second
pipelined request, bytes outside VCHAR) returns None, and waitress parses
the same bytes as usual. Saying no costs a little speed, never correctness.
"""

from __future__ import annotations

import dataclasses
import re

# RFC 9110 5.1 token for the name, 5.5 field-vchar/SP/HTAB for the value.
_HEADER = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)?[ \t]*")
_REQUEST_LINE = re.compile(rb"(GET|HEAD) (/artifacts/sha256/[0-9a-f]{64}) HTTP/1\.1")
_BODY_HEADERS = {b"content-length", b"transfer-encoding", b"expect", b"upgrade"}


@dataclasses.dataclass(frozen=True)
class SimpleRequest:
    method: str
    path: str
    range: str | None = None
    if_range: str | None = None
    if_none_match: str | None = None
    close: bool = False  # Connection: close


def parse_simple_request(data: bytes) -> SimpleRequest | None:
    end = data.find(b"\r\n\r\n")
    if end < 0 or end + 4 != len(data):
        return None
    lines = data[:end].split(b"\r\n")
    first = _REQUEST_LINE.fullmatch(lines[0])
    if first is None:
        return None
    fields: dict[bytes, bytes] = {}
    for line in lines[1:]:
        m = _HEADER.fullmatch(line)
        if m is None:
            return None
        name = m[1].lower()
        if name in fields or name in _BODY_HEADERS:
            return None
        fields[name] = m[2] or b""
    connection = fields.get(b"connection", b"").lower()
    if connection not in (b"", b"keep-alive", b"close"):
        return None

    def text(name: bytes) -> str | None:
        value = fields.get(name)
        return None if value is None else value.decode("ascii")

    return SimpleRequest(
        method=first[1].decode(), path=first[2].decode(), range=text(b"range"), if_range=text(b"if-range"),
        if_none_match=text(b"if-none-match"), close=connection == b"close",
    )
