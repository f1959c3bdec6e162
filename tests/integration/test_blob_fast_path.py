"""Blob requests answered on the server's event loop (web/fast_blobs.py)
against the Flask route, on real waitress servers on loopback: the same
answers for every request form, the fast path taken only for published,
verified, unchanged blobs, and everything unusual left to waitress."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import threading
import time

import pytest

from provisioner.db import open_db
from provisioner.images.manifest import ImageManifest
from provisioner.service import Service
from provisioner.settings import parse
from provisioner.web import fast_blobs
from provisioner.web.app import create_app
from provisioner.web.server import close_server, make_server, run_until_closed

from images_helpers import flip_bit

SIZE = (3 << 20) + 12345


@contextlib.contextmanager
def server(app):
    srv = make_server(app, "127.0.0.1", 0, threads=2)
    closing = threading.Event()
    thread = threading.Thread(target=run_until_closed, args=(srv, closing), daemon=True)
    thread.start()
    try:
        yield srv.socket.getsockname()[1]
    finally:
        closing.set()
        close_server(srv)
        thread.join(5)


@pytest.fixture
def blob(tmp_path):
    """One published image; yields (svc, digest hex, its bytes, fast port,
    Flask-only port, the fast path's FastBlobs)."""
    settings = parse({"state_dir": str(tmp_path / "state"), "network": {"interface": "lo", "dhcp": "proxy"}})
    svc = Service(settings, open_db(settings.db_path))
    data = os.urandom(SIZE)
    with svc.image_store().staging() as st:
        files = {"rootfs.squashfs": st.path / "rootfs.squashfs", "kernel": st.path / "kernel",
                 "modules.cpio": st.path / "modules.cpio"}
        files["rootfs.squashfs"].write_bytes(data)
        files["kernel"].write_bytes(b"k" * 1000)
        files["modules.cpio"].write_bytes(b"m" * 1000)
        manifest = ImageManifest(name="fast", version="1", created=0, artifacts=(), kernel_version="x",
                                 source={"kind": "import", "sha256": "0" * 64})
        published = svc.publish_image(st, manifest, files, actor="test")
    digest = published.manifest.artifact("rootfs.squashfs").sha256
    fast_app = create_app(settings)
    flask_app = create_app(settings)
    del flask_app.extensions["provisioner.fast_blobs"]  # this one answers everything through Flask
    with server(fast_app) as fast_port, server(flask_app) as flask_port:
        yield svc, digest, data, fast_port, flask_port, fast_app.extensions["provisioner.fast_blobs"]


def exchange(port: int, request: bytes, *, expect: int = 1) -> list[tuple[int, dict[str, str], bytes]]:
    """Send raw request bytes; read `expect` responses (to GETs, or all to
    HEADs) off the connection."""
    method = request.split(b" ", 1)[0].decode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        resp_file = _KeptOpen(sock.makefile("rb"))
        out = []
        for _ in range(expect):
            resp = http.client.HTTPResponse(sock, method=method)
            resp.fp = resp_file
            resp.begin()
            body = resp.read()
            out.append((resp.status, {k.lower(): v for k, v in resp.getheaders()}, body))
        return out


class _KeptOpen:
    """http.client closes a response's file at its end; the next pipelined
    response is in the same buffer."""

    def __init__(self, f) -> None:
        self._f = f

    def __getattr__(self, name: str):
        return getattr(self._f, name)

    def close(self) -> None:
        pass


def get(path: str, *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: appliance", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def tail(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in ("date", "connection")}


REQUESTS = [
    (), ("Range: bytes=0-0",), ("Range: bytes=-4096",), (f"Range: bytes={SIZE - 100}-",),
    ("Range: bytes=1000-99999999",), ("Range: bytes=-99999999",), (f"Range: bytes={SIZE}-",),
    ("Range: bytes=0-9,20-29",), ("Range: lines=0-9",), ("Range: bytes=9-0",),
    ("If-None-Match: *",), ('If-None-Match: "nope"',), ("Range: bytes=0-9", 'If-Range: "nope"'),
]


def test_the_fast_path_answers_as_flask_does(blob):
    svc, digest, data, fast_port, flask_port, fast = blob
    path = f"/artifacts/sha256/{digest}"
    assert exchange(fast_port, get(path))[0][2] == data  # hashed by Flask, then known good
    hits = fast.hits
    cases = [*REQUESTS, (f'If-None-Match: "{digest}"',), ("Range: bytes=0-9", f'If-Range: "{digest}"')]
    for headers in cases:
        for method in ("GET", "HEAD"):
            (ours,) = exchange(fast_port, get(path, *headers, method=method))
            (theirs,) = exchange(flask_port, get(path, *headers, method=method))
            assert (ours[0], tail(ours[1]), ours[2]) == (theirs[0], tail(theirs[1]), theirs[2]), (method, headers)
            if ours[0] in (200, 206) and method == "GET":
                first, last = (0, SIZE - 1) if ours[0] == 200 else map(
                    int, ours[1]["content-range"].split()[1].split("/")[0].split("-"))
                assert ours[2] == data[first:last + 1]
    assert fast.hits == hits + 2 * len(cases)


def test_many_requests_on_one_kept_alive_connection(blob):
    # A 416 and a 304 carry no body and a HEAD none either: the connection
    # must stay in step for the next request.
    _svc, digest, data, port, _flask, fast = blob
    path = f"/artifacts/sha256/{digest}"
    exchange(port, get(path, "Range: bytes=0-0"))  # verified now
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    hits = fast.hits
    for headers, status, body in [
        ({"Range": f"bytes={SIZE}-"}, 416, b""), ({"Range": "bytes=-10"}, 206, data[-10:]),
        ({"If-None-Match": f'"{digest}"'}, 304, b""), ({}, 200, data), ({"Range": "bytes=5-9"}, 206, data[5:10]),
    ]:
        for method in ("HEAD", "GET"):
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            got = resp.read()
            assert resp.status == status and got == (b"" if method == "HEAD" else body), (method, headers)
    assert fast.hits == hits + 10
    conn.close()


def test_connection_close_is_honoured(blob):
    _svc, digest, data, port, _flask, fast = blob
    path = f"/artifacts/sha256/{digest}"
    exchange(port, get(path, "Range: bytes=0-0"))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(get(path, "Range: bytes=-3", "Connection: close"))
        received = b""
        while chunk := sock.recv(65536):  # ends: the server closed
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206 ") and b"\r\nConnection: close" in head and body == data[-3:]


def test_pipelined_and_fragmented_requests_are_left_to_waitress(blob):
    _svc, digest, data, port, _flask, fast = blob
    path = f"/artifacts/sha256/{digest}"
    exchange(port, get(path, "Range: bytes=0-0"))
    hits = fast.hits
    answers = exchange(port, get(path, "Range: bytes=0-1") + get(path, "Range: bytes=-2") + get(path), expect=3)
    assert [(s, b) for s, _h, b in answers] == [(206, data[:2]), (206, data[-2:]), (200, data)]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        for byte in get(path, "Range: bytes=-5", "Connection: close"):
            sock.sendall(bytes([byte]))
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 206 ") and received.endswith(data[-5:])
    assert fast.hits == hits  # none of these went through the fast path


def test_real_clients_take_the_fast_path(blob, tmp_path):
    _svc, digest, data, port, _flask, fast = blob
    url = f"http://127.0.0.1:{port}/artifacts/sha256/{digest}"
    subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True, timeout=60)
    hits = fast.hits
    out = tmp_path / "part"
    out.write_bytes(data[:1000])
    subprocess.run(["curl", "-sf", "-C", "-", "-o", str(out), url], check=True, timeout=60)  # a resume
    assert out.read_bytes() == data
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", f"/artifacts/sha256/{digest}", headers={"Range": "bytes=-4096"})
    assert conn.getresponse().read() == data[-4096:]
    conn.close()
    assert fast.hits == hits + 2


def test_unverified_changed_and_unknown_blobs_take_the_flask_route(blob, monkeypatch):
    svc, digest, data, port, _flask, fast = blob
    path = f"/artifacts/sha256/{digest}"
    hits = fast.hits
    # Never served yet: Flask hashes it first.
    assert exchange(port, get(path, "Range: bytes=0-3"))[0][:3:2] == (206, data[:4])
    assert fast.hits == hits
    # Unknown digests and the manifest of nothing: Flask's 404s.
    status, _h, body = exchange(port, get(f"/artifacts/sha256/{'0' * 64}"))[0]
    assert status == 404 and b"no published image" in body
    # Changed on disk after it was verified: not served, by either route.
    assert exchange(port, get(path, "Range: bytes=0-3"))[0][0] == 206
    hits = fast.hits
    flip_bit(svc.image_store().path(digest), 100)
    status, _h, body = exchange(port, get(path, "Range: bytes=0-3"))[0]
    assert status == 500 and b"corrupt" in body
    assert fast.hits == hits
    assert any(e.kind == "image.corrupt" for e in svc.events())


def test_a_removed_image_stops_being_served(blob, monkeypatch):
    svc, digest, _data, port, _flask, fast = blob
    path = f"/artifacts/sha256/{digest}"
    assert exchange(port, get(path, "Range: bytes=0-3"))[0][0] == 206
    assert exchange(port, get(path, "Range: bytes=0-3"))[0][0] == 206
    svc.remove_image("fast@1", actor="test")
    deadline = time.monotonic() + fast_blobs.RECHECK + 5
    while exchange(port, get(path, "Range: bytes=0-3"))[0][0] != 404:
        assert time.monotonic() < deadline, "still served after the image was removed"
        time.sleep(0.05)
