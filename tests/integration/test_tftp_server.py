"""The TFTP server against real clients (curl, atftp, tftp-hpa) and hand-made
packets, on 127.0.0.1 with an ephemeral port and a temporary root."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self

import pytest

from provisioner.net.tftp import MAX_BLKSIZE, TftpEvent, TftpServer

IPXE = Path("/usr/lib/ipxe")
FILES = ("ipxe.efi", "undionly.kpxe")
EFI_SIZE = (IPXE / "ipxe.efi").stat().st_size

pytestmark = pytest.mark.skipif(
    not all(shutil.which(c) for c in ("curl", "atftp", "tftp")) or not (IPXE / "ipxe.efi").exists(),
    reason="needs curl, atftp, tftp-hpa and Debian's ipxe package",
)


class Events:
    """Collects TftpEvents from the server thread; waits for one kind."""

    def __init__(self) -> None:
        self.items: list[TftpEvent] = []
        self._cond = threading.Condition()

    def __call__(self, event: TftpEvent) -> None:
        with self._cond:
            self.items.append(event)
            self._cond.notify_all()

    def wait_for(self, kind: str, filename: str | None = None, timeout: float = 5) -> TftpEvent:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.items:
                    if event.kind == kind and (filename is None or event.filename == filename):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {kind} event for {filename}; got {self.items}")
                self._cond.wait(left)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    base = tmp_path / "tftp"
    base.mkdir()
    for name in FILES:
        shutil.copyfile(IPXE / name, base / name)
    (base / "etc").symlink_to("/etc")
    (base / "empty.bin").write_bytes(b"")
    (base / "exact.bin").write_bytes(bytes(range(256)) * 2)  # exactly one 512-byte block
    return base


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def server(root: Path, events: Events) -> Iterator[TftpServer]:
    with TftpServer(root, host="127.0.0.1", port=0, timeout=1, on_event=events) as srv:
        yield srv


def port(server: TftpServer) -> int:
    return server.address[1]


# --- real clients ------------------------------------------------------------


def curl_get(server: TftpServer, name: str, out: Path, blksize: int | None = None) -> subprocess.CompletedProcess:
    cmd = ["curl", "-sS", "--max-time", "20", "-o", str(out)]
    if blksize:
        cmd += ["--tftp-blksize", str(blksize)]
    return subprocess.run(cmd + [f"tftp://127.0.0.1:{port(server)}/{name}"], capture_output=True, timeout=30, check=False)


def atftp_get(server: TftpServer, name: str, out: Path, *options: str) -> subprocess.CompletedProcess:
    cmd = ["atftp"]
    for opt in options:
        cmd += ["--option", opt]
    cmd += ["-g", "-r", name, "-l", str(out), "127.0.0.1", str(port(server))]
    return subprocess.run(cmd, capture_output=True, timeout=30, check=False)


def hpa(server: TftpServer, command: str, mode: str = "binary") -> bytes:
    """Run tftp-hpa; it reports errors on stdout and exits 0, so return its output."""
    cmd = ["tftp", "-m", mode, "127.0.0.1", str(port(server)), "-c", *command.split()]
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30, check=False)
    return result.stdout


@pytest.mark.parametrize("name", FILES)
def test_curl_blksize_1468_is_byte_identical(server: TftpServer, events: Events, tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    result = curl_get(server, name, out, blksize=1468)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == (IPXE / name).read_bytes()
    done = events.wait_for("done", name)
    assert done.bytes_sent == (IPXE / name).stat().st_size


@pytest.mark.parametrize("name", FILES)
def test_atftp_blksize_1468_and_tsize_is_byte_identical(server: TftpServer, tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    result = atftp_get(server, name, out, "blksize 1468", "tsize 0")
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == (IPXE / name).read_bytes()


@pytest.mark.parametrize("name", FILES)
def test_tftp_hpa_default_512_is_byte_identical(server: TftpServer, tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    output = hpa(server, f"get {name} {out}")
    assert output == b"", output
    assert out.read_bytes() == (IPXE / name).read_bytes()


@pytest.mark.parametrize("name", ["empty.bin", "exact.bin"])
def test_files_ending_on_a_block_boundary(server: TftpServer, root: Path, tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    result = atftp_get(server, name, out)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == (root / name).read_bytes()


def test_eight_parallel_downloads(server: TftpServer, events: Events, tmp_path: Path) -> None:
    def fetch(i: int) -> bytes:
        out = tmp_path / f"out{i}"
        if i % 2:
            result = curl_get(server, "ipxe.efi", out, blksize=1468)
        else:
            result = atftp_get(server, "ipxe.efi", out, "blksize 1468", "tsize 0")
        assert result.returncode == 0, result.stderr
        return out.read_bytes()

    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(fetch, range(8)))
    expected = (IPXE / "ipxe.efi").read_bytes()
    assert all(body == expected for body in bodies)
    deadline = time.monotonic() + 5
    while sum(e.kind == "done" for e in events.items) < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sum(e.kind == "done" for e in events.items) == 8


def test_netascii_is_refused(server: TftpServer, tmp_path: Path) -> None:
    output = hpa(server, f"get ipxe.efi {tmp_path / 'out'}", mode="netascii")
    assert b"Error code 4: Illegal TFTP operation" in output


def test_write_request_is_refused_by_a_real_client(server: TftpServer, root: Path, tmp_path: Path) -> None:
    local = tmp_path / "upload.bin"
    local.write_bytes(b"payload")
    output = hpa(server, f"put {local} upload.bin")
    assert b"Error code 2: Access violation" in output
    assert not (root / "upload.bin").exists()


@pytest.mark.parametrize("name", ["../etc/passwd", "/etc/passwd", "etc/passwd", "..\\x", "etc/../../x"])
def test_traversal_is_refused_by_a_real_client(server: TftpServer, tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    output = hpa(server, f"get {name} {out}")
    assert b"Error code 2: Access violation" in output
    assert not out.exists() or out.stat().st_size == 0


# --- hand-made packets ---------------------------------------------------------


def request(opcode: int, name: bytes, mode: bytes = b"octet", **options: str) -> bytes:
    packet = struct.pack("!H", opcode) + name + b"\0" + mode + b"\0"
    for key, value in options.items():
        packet += key.encode() + b"\0" + value.encode() + b"\0"
    return packet


def parse_options(body: bytes) -> dict[str, str]:
    parts = body.split(b"\0")[:-1]
    return {parts[i].decode(): parts[i + 1].decode() for i in range(0, len(parts), 2)}


class RawClient:
    def __init__(self, server: TftpServer):
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(3)
        self.peer: tuple[str, int] | None = None

    def send_request(self, packet: bytes) -> None:
        self.sock.sendto(packet, ("127.0.0.1", port(self.server)))

    def reply(self, timeout: float = 3) -> tuple[int, int, bytes]:
        self.sock.settimeout(timeout)
        data, self.peer = self.sock.recvfrom(65536)
        opcode, number = struct.unpack("!HH", data[:4]) if len(data) >= 4 else (struct.unpack("!H", data[:2])[0], 0)
        return opcode, number, data[2:] if opcode == 6 else data[4:]

    def send(self, packet: bytes) -> None:
        assert self.peer is not None
        self.sock.sendto(packet, self.peer)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(server: TftpServer) -> Iterator[RawClient]:
    client = RawClient(server)
    yield client
    client.close()


def test_tsize_is_answered_only_when_asked(raw: RawClient, server: TftpServer) -> None:
    raw.send_request(request(1, b"ipxe.efi", tsize="0", blksize="1468"))
    opcode, _, body = raw.reply()
    assert opcode == 6
    assert parse_options(body) == {"tsize": str(EFI_SIZE), "blksize": "1468"}
    raw.send(struct.pack("!HH", 5, 0) + b"done\0")

    other = RawClient(server)
    try:
        other.send_request(request(1, b"ipxe.efi", blksize="1468"))
        opcode, _, body = other.reply()
        assert opcode == 6 and parse_options(body) == {"blksize": "1468"}
        third = RawClient(server)
        third.send_request(request(1, b"ipxe.efi"))
        opcode, block, data = third.reply()
        assert (opcode, block, len(data)) == (3, 1, 512)  # no options: DATA straight away
        third.close()
    finally:
        other.close()


def test_windowsize_and_unknown_options_are_left_out_of_the_oack(raw: RawClient) -> None:
    raw.send_request(request(1, b"ipxe.efi", BLKSIZE="65464", windowsize="4", foo="bar", tsize="0"))
    opcode, _, body = raw.reply()
    assert opcode == 6
    assert parse_options(body) == {"blksize": str(MAX_BLKSIZE), "tsize": str(EFI_SIZE)}
    raw.send(struct.pack("!HH", 4, 0))
    opcode, block, data = raw.reply()
    assert (opcode, block, len(data)) == (3, 1, MAX_BLKSIZE)


def test_uefi_size_probe_then_abort_then_good_download(
    raw: RawClient, server: TftpServer, events: Events, tmp_path: Path
) -> None:
    # EDK2's PxeBcTftpGetFileSize: RRQ with tsize, read the OACK, ERROR 8.
    raw.send_request(request(1, b"ipxe.efi", tsize="0", blksize="1468"))
    opcode, _, body = raw.reply()
    assert opcode == 6 and parse_options(body)["tsize"] == str(EFI_SIZE)
    raw.send(struct.pack("!HH", 5, 8) + b"User aborted the transfer\0")
    aborted = events.wait_for("aborted", "ipxe.efi")
    assert "client error 8" in aborted.detail
    out = tmp_path / "out"
    result = curl_get(server, "ipxe.efi", out, blksize=1468)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == (IPXE / "ipxe.efi").read_bytes()


@pytest.mark.parametrize(
    ("name", "code"),
    [
        (b"../etc/passwd", 2),
        (b"/etc/passwd", 2),
        (b"etc/passwd", 2),
        (b"..\\x", 2),
        (b"sub/../../../etc/passwd", 2),
        (b"missing.efi", 1),
        (b"etc", 2),  # a symlink to a directory outside the root
        (b".", 1),  # the root itself is not a file
    ],
)
def test_refusals_carry_the_right_error(raw: RawClient, events: Events, name: bytes, code: int) -> None:
    raw.send_request(request(1, name))
    opcode, number, _ = raw.reply()
    assert (opcode, number) == (5, code)
    assert events.wait_for("refused").filename == name.decode()


@pytest.mark.parametrize(
    "packet",
    [
        b"\x00\x01ipxe.efi\x00../../etc/passwd\x00",  # read as mode "../../etc/passwd"
        b"\x00\x01ipxe.efi\x00../../etc/passwd\x00octet\x00",  # a dangling option: dropped
    ],
)
def test_nul_inside_the_name_cannot_smuggle_a_path(server: TftpServer, packet: bytes) -> None:
    # The NUL ends the name; what follows is read as the mode and options.
    client = RawClient(server)
    try:
        client.send_request(packet)
        try:
            opcode, number, _ = client.reply(timeout=1.5)
        except TimeoutError:
            return  # dropped as malformed
        assert (opcode, number) == (5, 4)
    finally:
        client.close()


def test_write_request_is_refused(raw: RawClient, root: Path) -> None:
    raw.send_request(request(2, b"new.bin", blksize="1468"))
    opcode, number, _ = raw.reply()
    assert (opcode, number) == (5, 2)
    assert not (root / "new.bin").exists()


GARBAGE = [
    b"",
    b"\x00",
    b"\x00\x01",
    b"\x00\x04\x00",  # 3-byte ACK: a struct.error inside tftpy
    b"\x00\x63hello\x00octet\x00",  # opcode 99
    b"\x00\x03\x00\x01data",  # DATA on the listening port
    b"\x00\x01ipxe.efi",  # RRQ without terminators
    b"\x00\x01ipxe.efi\x00octet",  # mode without terminator
    b"\x00\x01\xff\xfe.efi\x00octet\x00",  # non-ASCII name
    request(1, b"ipxe.efi", blksize="abc"),  # tftpy would int() this
    b"\x00\x01ipxe.efi\x00octet\x00blksize\x00",  # odd option count
    b"\x00\x01ipxe.efi\x00octet\x00\x00\x00",  # empty option name
    request(1, b"ipxe.efi", **{f"opt{i:04d}": "1" for i in range(400)}),  # huge option list
    bytes(range(256)) * 8,
]


def test_garbage_is_dropped_and_service_goes_on(server: TftpServer, events: Events, tmp_path: Path) -> None:
    for packet in GARBAGE:
        client = RawClient(server)  # a fresh port each, so none is taken for a retransmission
        client.send_request(packet)
        client.close()
    # Garbage sent to a transfer port must not kill the loop either.
    client = RawClient(server)
    client.send_request(request(1, b"undionly.kpxe", blksize="1468"))
    assert client.reply()[0] == 6
    for packet in (b"\x00\x04\x00", b"\x00", b"\x00\x09\x00\x00", b"\x00\x03\x00\x01x", b"\x00\x04\x00\x07"):
        client.send(packet)
    client.send(struct.pack("!HH", 4, 0))
    opcode, block, data = client.reply()
    assert (opcode, block, len(data)) == (3, 1, 1468)  # the transfer itself carries on
    client.close()
    assert server._thread is not None and server._thread.is_alive()
    out = tmp_path / "out"
    result = curl_get(server, "ipxe.efi", out, blksize=1468)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == (IPXE / "ipxe.efi").read_bytes()
    assert events.wait_for("done", "ipxe.efi")


def test_lost_ack_is_resent_once_per_timeout_and_duplicates_do_not_resend(raw: RawClient, events: Events) -> None:
    raw.send_request(request(1, b"undionly.kpxe"))
    assert raw.reply()[:2] == (3, 1)
    started = time.monotonic()
    raw.send(struct.pack("!HH", 4, 0))  # a stale ACK: must not cause a resend
    opcode, block, _ = raw.reply(timeout=3)
    waited = time.monotonic() - started
    assert (opcode, block) == (3, 1)
    assert 0.8 <= waited <= 1.6, waited  # the 1 s timer, not tftpy's 5 s
    raw.send(struct.pack("!HH", 4, 1))
    assert raw.reply()[:2] == (3, 2)


def test_silent_client_times_out_and_frees_the_transfer(root: Path, events: Events) -> None:
    with TftpServer(root, host="127.0.0.1", port=0, timeout=0.2, retries=2, on_event=events) as srv:
        client = RawClient(srv)
        client.send_request(request(1, b"ipxe.efi"))
        seen = [client.reply()[:2] for _ in range(3)]  # first send and two resends
        assert seen == [(3, 1)] * 3
        timeout = events.wait_for("timeout", "ipxe.efi", timeout=3)
        assert timeout.bytes_sent == 0
        assert not srv._transfers
        client.close()


def test_a_failing_callback_does_not_stop_the_server(root: Path, tmp_path: Path) -> None:
    def explode(event: TftpEvent) -> None:
        raise RuntimeError("callback bug")

    with TftpServer(root, host="127.0.0.1", port=0, on_event=explode) as srv:
        for i in range(2):
            out = tmp_path / f"out{i}"
            result = curl_get(srv, "undionly.kpxe", out)
            assert result.returncode == 0, result.stderr
            assert out.read_bytes() == (IPXE / "undionly.kpxe").read_bytes()


def test_stop_joins_and_frees_the_port(root: Path) -> None:
    srv = TftpServer(root, host="127.0.0.1", port=0)
    srv.start()
    bound = srv.address
    thread = srv._thread
    srv.stop()
    assert thread is not None and not thread.is_alive()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(bound)  # free again
    probe.close()


def test_start_raises_when_the_port_is_taken(root: Path) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        srv = TftpServer(root, host="127.0.0.1", port=taken.getsockname()[1])
        with pytest.raises(OSError):
            srv.start()
        srv.stop()
    finally:
        taken.close()


class LossySocket:
    """A transfer socket whose every `every`-th send fails the way a local
    firewall drop does (EPERM), to exercise the resend timer."""

    def __init__(self, sock: socket.socket, every: int):
        self._sock, self._every, self._count = sock, every, 0

    def send(self, data: bytes) -> int:
        self._count += 1
        if self._count % self._every == 0:
            raise PermissionError(1, "Operation not permitted")
        return self._sock.send(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


def test_lost_sends_are_resent_and_the_download_completes(root: Path, events: Events, tmp_path: Path) -> None:
    srv = TftpServer(root, host="127.0.0.1", port=0, timeout=0.2, on_event=events)
    real = srv._transfer_socket
    srv._transfer_socket = lambda local, client: LossySocket(real(local, client), every=9)  # type: ignore[method-assign]
    with srv:
        out = tmp_path / "out"
        result = atftp_get(srv, "undionly.kpxe", out, "blksize 1468", "tsize 0")
        assert result.returncode == 0, result.stderr
        assert out.read_bytes() == (IPXE / "undionly.kpxe").read_bytes()
        assert events.wait_for("done", "undionly.kpxe").seconds >= 0.2 * 5  # it did wait on the timer
