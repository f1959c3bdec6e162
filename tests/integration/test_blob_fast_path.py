"""Blob requests answered on the server's event loop (web/fast_blobs.py)
against the Flask route, on real waitress servers on loopback: the same
answers for every request form, the fast path taken only for published,
verified, unchanged blobs, and everything unusual left to waitress."""

from __future__ import annotations

import dataclasses
import http.client
import os
import socket
import subprocess
import time
from typing import Any

import pytest

from provisioner.db import open_db
from provisioner.images.manifest import ImageManifest
from provisioner.service import Service
from provisioner.settings import parse
from provisioner.web import fast_blobs
from provisioner.web.app import create_app
from provisioner.web.fast_blobs import FastBlobs

from images_helpers import flip_bit, running

SIZE = (3 << 20) + 12345


@dataclasses.dataclass(frozen=True)
class Served:
    svc: Service
    digest: str  # the blob's sha256 hex
    data: bytes  # its content
    server: Any  # the appliance's server (fast path on)
    flask_port: int  # a second server on the same state, every request through Flask

    @property
    def port(self) -> int:
        return self.server.socket.getsockname()[1]

    @property
    def path(self) -> str:
        return f"/artifacts/sha256/{self.digest}"

    @property
    def fast(self) -> FastBlobs:
        return self.server.fast_blobs


@pytest.fixture
def blob(tmp_path):
    """One published image, served twice."""
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
    with running(fast_app, threads=2) as fast_srv, running(flask_app, threads=2) as flask_srv:
        yield Served(svc, digest, data, fast_srv, flask_srv.socket.getsockname()[1])


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
    b = blob
    assert exchange(b.port, get(b.path))[0][2] == b.data  # hashed by Flask, then known good
    hits = b.fast.hits
    cases = [*REQUESTS, (f'If-None-Match: "{b.digest}"',), ("Range: bytes=0-9", f'If-Range: "{b.digest}"')]
    for headers in cases:
        for method in ("GET", "HEAD"):
            (ours,) = exchange(b.port, get(b.path, *headers, method=method))
            (theirs,) = exchange(b.flask_port, get(b.path, *headers, method=method))
            assert (ours[0], tail(ours[1]), ours[2]) == (theirs[0], tail(theirs[1]), theirs[2]), (method, headers)
            assert "connection" not in ours[1]  # kept alive
            # The one known difference: waitress closes the connection after
            # a Flask 304, which has no Content-Length.
            assert (theirs[1].get("connection") == "close") == (theirs[0] == 304)
            if ours[0] in (200, 206) and method == "GET":
                first, last = (0, SIZE - 1) if ours[0] == 200 else map(
                    int, ours[1]["content-range"].split()[1].split("/")[0].split("-"))
                assert ours[2] == b.data[first:last + 1]
    assert b.fast.hits == hits + 2 * len(cases)


def test_many_requests_on_one_kept_alive_connection(blob):
    # A 416 and a 304 carry no body and a HEAD none either: the connection
    # must stay in step for the next request.
    b = blob
    exchange(b.port, get(b.path, "Range: bytes=0-0"))  # verified now
    conn = http.client.HTTPConnection("127.0.0.1", b.port, timeout=10)
    hits = b.fast.hits
    for headers, status, body in [
        ({"Range": f"bytes={SIZE}-"}, 416, b""), ({"Range": "bytes=-10"}, 206, b.data[-10:]),
        ({"If-None-Match": f'"{b.digest}"'}, 304, b""), ({}, 200, b.data), ({"Range": "bytes=5-9"}, 206, b.data[5:10]),
    ]:
        for method in ("HEAD", "GET"):
            conn.request(method, b.path, headers=headers)
            resp = conn.getresponse()
            got = resp.read()
            assert resp.status == status and got == (b"" if method == "HEAD" else body), (method, headers)
    assert b.fast.hits == hits + 10
    conn.close()


def test_connection_close_is_honoured(blob):
    b = blob
    exchange(b.port, get(b.path, "Range: bytes=0-0"))
    with socket.create_connection(("127.0.0.1", b.port), timeout=10) as sock:
        sock.sendall(get(b.path, "Range: bytes=-3", "Connection: close"))
        received = b""
        while chunk := sock.recv(65536):  # ends: the server closed
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206 ") and b"\r\nConnection: close" in head and body == b.data[-3:]


def test_pipelined_and_fragmented_requests_are_left_to_waitress(blob):
    b = blob
    exchange(b.port, get(b.path, "Range: bytes=0-0"))
    hits = b.fast.hits
    answers = exchange(b.port, get(b.path, "Range: bytes=0-1") + get(b.path, "Range: bytes=-2") + get(b.path), expect=3)
    assert [(s, b) for s, _h, b in answers] == [(206, b.data[:2]), (206, b.data[-2:]), (200, b.data)]
    with socket.create_connection(("127.0.0.1", b.port), timeout=10) as sock:
        for byte in get(b.path, "Range: bytes=-5", "Connection: close"):
            sock.sendall(bytes([byte]))
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 206 ") and received.endswith(b.data[-5:])
    assert b.fast.hits == hits  # none of these went through the fast path


def test_real_clients_take_the_fast_path(blob, tmp_path):
    b = blob
    url = f"http://127.0.0.1:{b.port}{b.path}"
    subprocess.run(["curl", "-sf", "-o", "/dev/null", url], check=True, timeout=60)
    hits = b.fast.hits
    out = tmp_path / "part"
    out.write_bytes(b.data[:1000])
    subprocess.run(["curl", "-sf", "-C", "-", "-o", str(out), url], check=True, timeout=60)  # a resume
    assert out.read_bytes() == b.data
    conn = http.client.HTTPConnection("127.0.0.1", b.port, timeout=10)
    conn.request("GET", b.path, headers={"Range": "bytes=-4096"})
    assert conn.getresponse().read() == b.data[-4096:]
    conn.close()
    assert b.fast.hits == hits + 2


def test_unverified_changed_and_unknown_blobs_take_the_flask_route(blob):
    b = blob
    hits = b.fast.hits
    # Never served yet: Flask hashes it first.
    assert exchange(b.port, get(b.path, "Range: bytes=0-3"))[0][:3:2] == (206, b.data[:4])
    assert b.fast.hits == hits
    # A b.digest no published image has: Flask's 404.
    status, _h, body = exchange(b.port, get(f"/artifacts/sha256/{'0' * 64}"))[0]
    assert status == 404 and b"no published image" in body
    # Changed on disk after it was verified: not served, by either route.
    assert exchange(b.port, get(b.path, "Range: bytes=0-3"))[0][0] == 206
    hits = b.fast.hits
    flip_bit(b.svc.image_store().path(b.digest), 100)
    status, _h, body = exchange(b.port, get(b.path, "Range: bytes=0-3"))[0]
    assert status == 500 and b"corrupt" in body
    assert b.fast.hits == hits
    assert any(e.kind == "image.corrupt" for e in b.svc.events())


def test_a_removed_image_stops_being_served(blob):
    b = blob
    assert exchange(b.port, get(b.path, "Range: bytes=0-3"))[0][0] == 206
    assert exchange(b.port, get(b.path, "Range: bytes=0-3"))[0][0] == 206
    b.svc.remove_image("fast@1", actor="test")
    deadline = time.monotonic() + fast_blobs.RECHECK + 5
    while exchange(b.port, get(b.path, "Range: bytes=0-3"))[0][0] != 404:
        assert time.monotonic() < deadline, "still served after the image was removed"
        time.sleep(0.05)


def test_a_long_kept_alive_connection_does_not_accumulate_output_buffers(blob):
    # A large Flask answer moves the channel's last buffer past its
    # in-memory stage; bodiless fast answers after it (HEAD, 304) must not
    # pile up in that buffer, which never shrinks while it is the last.
    b = blob
    for i in range(150):
        b.svc.record("test.filler", f"event {i} " + "x" * 100, actor="test")
    exchange(b.port, get(b.path, "Range: bytes=0-0"))  # verified now
    conn = http.client.HTTPConnection("127.0.0.1", b.port, timeout=10)
    conn.request("GET", "/api/v1/events?limit=150")
    assert len(conn.getresponse().read()) > 16 << 10
    hits = b.fast.hits
    for _ in range(200):
        for headers in ({}, {"If-None-Match": f'"{b.digest}"'}):
            conn.request("HEAD", b.path, headers=headers)
            conn.getresponse().read()
    assert b.fast.hits == hits + 400
    (channel,) = [c for c in b.server._map.values() if hasattr(c, "outbufs")]
    assert len(channel.outbufs) <= 2
    assert all(buf.buf is None for buf in channel.outbufs), "a file- or BytesIO-backed buffer is still kept"
    conn.close()


def open_blob_fds(blob_path: str) -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == blob_path
        except OSError:
            pass
    return count


def test_stopping_the_server_closes_the_files_of_downloads_in_flight(blob):
    b = blob
    blob_path = str(b.svc.image_store().path(b.digest))
    with running(create_app(b.svc.settings), threads=2) as srv:
        exchange(srv.socket.getsockname()[1], get(b.path, "Range: bytes=0-0"))  # verified now
        clients = []
        for _ in range(3):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that reads nothing
            sock.connect(srv.socket.getsockname())
            sock.sendall(get(b.path))
            clients.append(sock)
        deadline = time.monotonic() + 10
        while open_blob_fds(blob_path) < 3:
            assert time.monotonic() < deadline, "the downloads did not start"
            time.sleep(0.02)
        assert srv.fast_blobs.hits == 3
    assert open_blob_fds(blob_path) == 0
    for sock in clients:
        sock.close()
