"""What to answer for a GET or HEAD of a file: status, headers and which
bytes, from the request's conditional and Range headers. Pure: the Flask
route and the event-loop fast path for blobs (web/fast_blobs.py) both send
what this decides, so the two can never disagree.

Single byte ranges only; a multi-range request gets the whole file, which
RFC 9110 allows (section 14.2).
"""

from __future__ import annotations

import dataclasses
import functools

from werkzeug.http import http_date, parse_range_header, quote_etag, unquote_etag

IMMUTABLE = "public, max-age=31536000, immutable"
REASONS = {200: "OK", 206: "Partial Content", 304: "Not Modified", 416: "Range Not Satisfiable"}


@dataclasses.dataclass(frozen=True)
class FileReply:
    status: int
    headers: tuple[tuple[str, str], ...]
    start: int = 0  # where the body starts in the file
    length: int = 0  # body bytes to send: 0 for HEAD, 304 and 416

    @property
    def reason(self) -> str:
        return REASONS[self.status]


def file_reply(*, method: str, size: int, mtime: float, tag: str, mimetype: str = "application/octet-stream",
               immutable: bool = False, if_none_match: str | None = None, if_range: str | None = None,
               range_header: str | None = None) -> FileReply:
    """`tag` is the unquoted entity tag; `mtime` seconds since the epoch."""
    headers = [
        ("ETag", quote_etag(tag)),
        ("Accept-Ranges", "bytes"),
        ("Last-Modified", _http_date(int(mtime))),
        ("Cache-Control", IMMUTABLE if immutable else "no-cache"),
    ]
    if _matches(if_none_match, tag):
        # No representation metadata beyond the validator (RFC 9110 15.4.5).
        return FileReply(304, tuple(h for h in headers if h[0] != "Last-Modified"))
    start, length, status = 0, size, 200
    bounds = _single_range(range_header, size) if _if_range_ok(if_range, tag) else None
    if bounds is not None:
        start, stop = bounds
        if start >= size:
            # Caches key on the URL, not the range: this answer must not be
            # stored in place of the file, however immutable the file is.
            return FileReply(416, (("Accept-Ranges", "bytes"), ("Cache-Control", "no-store"),
                                   ("Content-Range", f"bytes */{size}"), ("Content-Length", "0")))
        length, status = stop - start, 206
        headers.append(("Content-Range", f"bytes {start}-{stop - 1}/{size}"))
    headers += [("Content-Type", mimetype), ("Content-Length", str(length))]
    return FileReply(status, tuple(headers), start, 0 if method == "HEAD" else length)


def _single_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, stop) of a single byte range, clamped to the file; start is
    at or past the end for an unsatisfiable one. None: answer the whole
    file (no Range, another unit, several ranges, or an empty file)."""
    rng = parse_range_header(header)
    if rng is None or rng.units != "bytes" or len(rng.ranges) != 1 or size == 0:
        return None
    first, stop = rng.ranges[0]  # stop is exclusive; a suffix is (-n, None)
    if first < 0:
        # A suffix longer than the file is the whole file (RFC 9110 14.1.2).
        return max(size + first, 0), size
    return first, size if stop is None else min(stop, size)


@functools.lru_cache(maxsize=256)
def _http_date(seconds: int) -> str:
    return http_date(seconds)


def _matches(header: str | None, tag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    return any(unquote_etag(part.strip())[0] == tag for part in header.split(","))


def _if_range_ok(value: str | None, tag: str) -> bool:
    # If-Range with a date (or a weak or other tag) never matches a strong
    # tag comparison: the client then gets the whole, current file.
    if value is None:
        return True
    etag, weak = unquote_etag(value.strip())
    return etag == tag and not weak
