"""File responses with ETag, conditional requests and single byte ranges.

We answer ranges ourselves rather than through werkzeug's range wrapper so
that the response body stays the WSGI server's own file wrapper, positioned
at the range start with the length in Content-Length: the server can then
hand the file to the kernel (sendfile) instead of copying it through Python.
A multi-range request is answered with the whole file, which RFC 9110 allows.
"""

from __future__ import annotations

import os
from pathlib import Path

from flask import Response, request
from werkzeug.http import http_date, parse_range_header, quote_etag, unquote_etag

from provisioner.errors import NotFound


def file_response(path: Path, *, etag: str | None = None, mimetype: str = "application/octet-stream",
                  immutable: bool = False) -> Response:
    try:
        f = open(path, "rb")
    except (FileNotFoundError, IsADirectoryError):
        raise NotFound(f"{path.name} is not available") from None
    try:
        st = os.fstat(f.fileno())
        size = st.st_size
        tag = etag or f"{st.st_size:x}-{st.st_mtime_ns:x}"
        headers = {
            "ETag": quote_etag(tag),
            "Accept-Ranges": "bytes",
            "Last-Modified": http_date(st.st_mtime),
            "Cache-Control": "public, max-age=31536000, immutable" if immutable else "no-cache",
        }
        if _matches(request.headers.get("If-None-Match"), tag):
            f.close()
            return Response(status=304, headers=headers)

        start, length, status = 0, size, 200
        rng = parse_range_header(request.headers.get("Range"))
        if rng is not None and _if_range_ok(tag) and len(rng.ranges) == 1:
            bounds = rng.range_for_length(size)
            if bounds is None:
                f.close()
                headers["Content-Range"] = f"bytes */{size}"
                return Response(status=416, headers=headers)
            start, stop = bounds
            length, status = stop - start, 206
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        f.seek(start)
        headers["Content-Length"] = str(length)
        if request.method == "HEAD":
            f.close()
            return Response(status=status, headers=headers, mimetype=mimetype)
        wrapper = request.environ.get("wsgi.file_wrapper")
        body = wrapper(f) if wrapper else _limited(f, length)
        resp = Response(body, status=status, headers=headers, mimetype=mimetype, direct_passthrough=True)
        return resp
    except BaseException:
        f.close()
        raise


def _matches(header: str | None, tag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    return any(unquote_etag(part.strip())[0] == tag for part in header.split(","))


def _if_range_ok(tag: str) -> bool:
    value = request.headers.get("If-Range")
    return value is None or unquote_etag(value.strip())[0] == tag


def _limited(f, length: int, chunk: int = 1 << 20):
    try:
        while length > 0:
            data = f.read(min(chunk, length))
            if not data:
                break
            length -= len(data)
            yield data
    finally:
        f.close()
