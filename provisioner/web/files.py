"""File responses for Flask routes, as web/file_reply.py decides them.

The body stays the WSGI server's own file wrapper, positioned at the range
start with the length in Content-Length, so that the server can hand the
file to the kernel (sendfile) instead of copying it through Python.
"""

from __future__ import annotations

import os
from pathlib import Path

from flask import Response, request

from provisioner.errors import NotFound
from provisioner.web.file_reply import file_reply


def file_response(path: Path, *, etag: str | None = None, mimetype: str = "application/octet-stream",
                  immutable: bool = False) -> Response:
    try:
        f = open(path, "rb")
    except (FileNotFoundError, IsADirectoryError):
        raise NotFound(f"{path.name} is not available") from None
    try:
        st = os.fstat(f.fileno())
        reply = file_reply(
            method=request.method, size=st.st_size, mtime=st.st_mtime,
            tag=etag or f"{st.st_size:x}-{st.st_mtime_ns:x}", mimetype=mimetype, immutable=immutable,
            if_none_match=request.headers.get("If-None-Match"), if_range=request.headers.get("If-Range"),
            range_header=request.headers.get("Range"),
        )
        headers = list(reply.headers)
        if not reply.length:
            f.close()
            # HEAD keeps the Content-Length of the body it would get.
            resp = Response(status=reply.status, headers=headers)
            if reply.status in (304, 416):
                del resp.headers["Content-Type"]  # werkzeug's default; there is no body
            return resp
        f.seek(reply.start)
        wrapper = request.environ.get("wsgi.file_wrapper")
        body = wrapper(f) if wrapper else _limited(f, reply.length)
        return Response(body, status=reply.status, headers=headers, direct_passthrough=True)
    except BaseException:
        f.close()
        raise


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
