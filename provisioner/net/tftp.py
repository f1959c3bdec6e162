"""Read-only TFTP server for the iPXE binaries.

Built on tftpy 0.8.7: its wire codec (`TftpPacketFactory` for requests,
`TftpPacketOACK` and `TftpPacketERR` for replies) is used as is. Its server
loop is not, for reasons measured on this machine (see
docs/benchmarks.md, "What tftpy 0.8.7 does on its own"):

- One exception outside `TftpException` (a `struct.error` from a 3-byte ACK,
  a `UnicodeDecodeError` from a non-ASCII file name, a `ValueError` from
  `blksize=abc`, the `flock` on a BytesIO) ends `listen()` for good.
- A stalled session is resent to and counted as retried on every pass of
  the loop, not once per timeout, so with many clients busy a single lost
  packet drops the transfer after three passes (milliseconds).
- Paths are checked with `abspath`, so a symlink in the root that points
  outside it is served; a WRQ writes into the root.
- Every packet walks every session (select list, owner lookup, timeouts),
  and most log calls format their message eagerly.

So the loop here is our own: one thread, epoll, one connected UDP socket
per transfer (a fresh TID, and the kernel drops packets from other ports),
data read with `pread` from the open file, and every handler guarded so a
bad packet or a failing `on_event` callback costs at most its own transfer.

Protocol choices (RFC 1350/2347/2348/2349):
- Octet mode only; netascii and mail are refused with "Illegal TFTP
  operation" (the iPXE binaries are binary, and a netascii client would
  mangle them).
- Options: `blksize` (8..65464 accepted, clamped to 1468 so a block fits an
  Ethernet frame) and `tsize` (answered only when asked: some EFI clients
  fail on an unsolicited one). Anything else, `windowsize` and `timeout`
  included, is left out of the OACK, which RFC 2347 allows.
- A client ERROR (EDK2 sends ERROR 8 right after its tsize probe) ends the
  transfer normally, as "aborted".
- Duplicate ACKs never trigger a resend (Sorcerer's Apprentice); only the
  resend timer does, `timeout` seconds after the last send, `retries` times.
- Names with `..` components, a leading `/`, a backslash, or resolving
  (through symlinks) outside the root are refused with "Access violation".
"""

from __future__ import annotations

import logging
import os
import select
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from tftpy.TftpPacketFactory import TftpPacketFactory
from tftpy.TftpPacketTypes import (
    TftpPacketERR,
    TftpPacketOACK,
    TftpPacketRRQ,
    TftpPacketWRQ,
)
from tftpy.TftpShared import TftpErrors

log = logging.getLogger(__name__)

# 1500-byte Ethernet MTU minus IPv4 (20), UDP (8) and TFTP (4) headers. Larger
# blocks would be fragmented, and firmware TFTP stacks drop fragments.
MAX_BLKSIZE = 1468
MIN_BLKSIZE = 8  # RFC 2348
RFC_MAX_BLKSIZE = 65464
DEFAULT_BLKSIZE = 512
# A request is filename, mode and a few options; anything far larger is
# garbage or an attempt to make us parse a huge option list.
MAX_REQUEST = 2048
MAX_OPTIONS = 16
MAX_TRANSFERS = 512
DEFAULT_RETRIES = 5
# How often the loop looks for transfers whose resend timer ran out.
_SCAN_INTERVAL = 0.05

_OP_RRQ, _OP_WRQ, _OP_DATA, _OP_ACK, _OP_ERROR = 1, 2, 3, 4, 5
_HEADER = struct.Struct("!HH")
# Linux's value; Python's socket module does not export it.
_IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
_PKTINFO = struct.Struct("=i4s4s")  # ifindex, spec_dst, addr

EventKind = Literal["done", "aborted", "refused", "timeout", "failed"]


@dataclass(frozen=True, slots=True)
class TftpEvent:
    """What happened to one request; passed to `on_event`.

    kind: "done" (whole file acknowledged), "aborted" (the client sent an
    ERROR, e.g. EDK2's tsize probe), "refused" (we answered with an ERROR),
    "timeout" (the client went silent), "failed" (a local error).
    """

    kind: EventKind
    client: tuple[str, int]
    filename: str
    bytes_sent: int = 0
    seconds: float = 0.0
    detail: str = ""


class _Refused(Exception):
    """A request we answer with a TFTP ERROR packet."""

    def __init__(self, code: int, why: str):
        super().__init__(why)
        self.code = code
        self.why = why


@dataclass(slots=True)
class _Transfer:
    sock: socket.socket
    client: tuple[str, int]
    filename: str
    fd: int
    size: int
    blksize: int
    block: int  # number of the last packet sent; 0 while the OACK is out
    offset: int  # file offset of the next block
    last: bytes  # last packet sent, kept for resends
    final: bool  # the last packet sent is the short, closing block
    deadline: float
    started: float
    retries: int = 0


def resolve_in_root(root: Path, name: str) -> Path:
    """Map a requested name to a regular file inside `root` (already
    resolved), or raise _Refused. Symlinks are followed but must stay inside
    the root, so the daemon can link files in while nothing leaks out."""
    if not name or "\x00" in name:
        raise _Refused(TftpErrors.FileNotFound, "empty or NUL in name")
    if "\\" in name:
        # Windows-style separators: "..\x" must not become a path trick on a
        # server that someday maps them, and no boot file needs one.
        raise _Refused(TftpErrors.AccessViolation, "backslash in name")
    if name.startswith("/"):
        raise _Refused(TftpErrors.AccessViolation, "absolute path")
    if ".." in name.split("/"):
        raise _Refused(TftpErrors.AccessViolation, "'..' in path")
    real = Path(os.path.realpath(root / name))
    if real != root and root not in real.parents:
        raise _Refused(TftpErrors.AccessViolation, f"resolves outside the root to {real}")
    return real


def _open_regular(path: Path) -> tuple[int, int]:
    try:
        # O_NOFOLLOW: the path is already resolved; a symlink swapped in
        # since then is refused rather than followed.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _Refused(TftpErrors.FileNotFound, "no such file") from None
    except OSError as exc:
        raise _Refused(TftpErrors.AccessViolation, f"cannot open: {exc.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _Refused(TftpErrors.FileNotFound, "not a regular file")
    return fd, st.st_size


def negotiate(options: dict[str, str], size: int) -> tuple[int, dict[str, str]]:
    """Return the block size to use and the options to OACK (empty: no OACK)."""
    blksize = DEFAULT_BLKSIZE
    accepted: dict[str, str] = {}
    for raw_key, value in list(options.items())[:MAX_OPTIONS]:
        key = raw_key.lower()  # RFC 2347: option names are case-insensitive
        if key == "blksize":
            try:
                wanted = int(value)
            except ValueError:
                continue
            if wanted < MIN_BLKSIZE or wanted > RFC_MAX_BLKSIZE:
                continue  # invalid per RFC 2348: ignore rather than fail
            blksize = min(wanted, MAX_BLKSIZE)
            accepted["blksize"] = str(blksize)
        elif key == "tsize":
            accepted["tsize"] = str(size)
        # windowsize, timeout, multicast and unknown options: not in the
        # OACK, so the client falls back to plain RFC 1350 behaviour.
    return blksize, accepted


class TftpServer:
    """A read-only octet-mode TFTP server for the files under `root`.

    `on_event` is called from the server thread with a TftpEvent for every
    request; it must return quickly, and its exceptions are logged and
    ignored. One instance serves once: start()/stop() or serve_forever().
    """

    def __init__(
        self,
        root: Path,
        host: str = "0.0.0.0",
        port: int = 69,
        timeout: float = 1,
        on_event: Callable[[TftpEvent], None] | None = None,
        retries: int = DEFAULT_RETRIES,
    ):
        self.root = Path(root).resolve(strict=True)
        if not self.root.is_dir():
            raise NotADirectoryError(str(self.root))
        self.host = host
        self.port = port
        self.timeout = float(timeout)
        self.retries = retries
        self.on_event = on_event
        self._sock: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._epoll: select.epoll | None = None
        self._transfers: dict[int, _Transfer] = {}  # by socket fd
        self._clients: set[tuple[str, int]] = set()
        self._factory = TftpPacketFactory()
        self._now = time.monotonic()  # the loop's clock, read once per wakeup

    # --- lifecycle -----------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); useful after binding port 0."""
        if self._sock is None:
            raise RuntimeError("TftpServer is not bound")
        return self._sock.getsockname()

    def bind(self) -> None:
        if self._sock is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.host, self.port))
            if self.host == "0.0.0.0":
                # Learn which local address each request was sent to, so the
                # transfer answers from that address on a multi-homed host.
                sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        log.info("tftp: serving %s on %s:%d", self.root, *sock.getsockname())

    def start(self) -> None:
        """Bind (errors raise here), then serve from a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("TftpServer already started")
        self.bind()
        self._thread = threading.Thread(target=self.serve_forever, name="tftp", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, close every transfer and the socket, join the thread.
        Safe to call from a signal handler in the serving thread."""
        self._stopping.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
            self._thread = None
        elif self._epoll is None and self._sock is not None:
            # Bound but never served: nothing else will close the sockets.
            self._sock.close()
            self._sock = None
            self._wake_r.close()
            self._wake_w.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Serve in the calling thread until stop() is called."""
        self.bind()
        assert self._sock is not None
        listen_fd, wake_fd = self._sock.fileno(), self._wake_r.fileno()
        epoll = select.epoll()
        self._epoll = epoll
        epoll.register(listen_fd, select.EPOLLIN)
        epoll.register(wake_fd, select.EPOLLIN)
        transfers = self._transfers
        next_scan = 0.0
        try:
            while not self._stopping.is_set():
                try:
                    ready = epoll.poll(_SCAN_INTERVAL if transfers else -1)
                except OSError as exc:  # never expected; do not spin on it
                    log.error("tftp: epoll failed: %s", exc)
                    time.sleep(0.1)
                    continue
                self._now = now = time.monotonic()
                for fd, _ in ready:
                    # The hot path (an ACK on a transfer) comes first.
                    transfer = transfers.get(fd)
                    try:
                        if transfer is not None:
                            self._on_packet(transfer)
                        elif fd == listen_fd:
                            self._on_request()
                        elif fd == wake_fd:
                            self._drain_wake()
                    except Exception:
                        # The last line of defence: a bug triggered by one
                        # packet must not end the loop for every other client
                        # (tftpy's failure mode).
                        log.exception("tftp: unexpected error handling a packet; serving on")
                        if transfer is not None:
                            self._finish(transfer, "failed", "internal error")
                if now >= next_scan and transfers:
                    next_scan = now + _SCAN_INTERVAL
                    try:
                        self._check_timeouts(now)
                    except Exception:
                        log.exception("tftp: unexpected error checking timeouts; serving on")
        finally:
            for transfer in list(transfers.values()):
                self._finish(transfer, "failed", "server stopping")
            epoll.close()
            self._sock.close()
            self._sock = None
            self._wake_r.close()
            self._wake_w.close()
            log.info("tftp: stopped")

    # --- packet handling -------------------------------------------------

    def _drain_wake(self) -> None:
        try:
            self._wake_r.recv(64)
        except BlockingIOError:
            pass

    def _on_request(self) -> None:
        assert self._sock is not None
        try:
            data, anc, _flags, client = self._sock.recvmsg(MAX_REQUEST + 1, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            # ICMP errors from earlier sends surface here; nothing to do.
            log.debug("tftp: recvmsg on the listening socket: %s", exc)
            return
        local = self.host
        for level, kind, payload in anc:
            if level == socket.IPPROTO_IP and kind == _IP_PKTINFO and len(payload) >= _PKTINFO.size:
                local = socket.inet_ntoa(_PKTINFO.unpack_from(payload)[1])
        client = (client[0], client[1])
        if len(data) > MAX_REQUEST or len(data) < 4:
            log.warning("tftp: dropped a %d-byte packet from %s:%d", len(data), *client)
            return
        opcode = _HEADER.unpack_from(data)[0]
        if opcode not in (_OP_RRQ, _OP_WRQ):
            log.warning("tftp: dropped opcode %d on the listening port from %s:%d", opcode, *client)
            return
        if client in self._clients:
            # A retransmitted request for a transfer already running: its
            # own resend timer answers, a second transfer would not help.
            return
        try:
            packet = self._factory.parse(data)
        except Exception as exc:  # noqa: BLE001 - tftpy raises struct, Unicode and its own errors
            log.warning("tftp: dropped a malformed request from %s:%d: %s", *client, exc)
            return
        filename = packet.filename or ""
        if isinstance(packet, TftpPacketWRQ):
            self._refuse(local, client, filename, TftpErrors.AccessViolation, "write request")
            return
        assert isinstance(packet, TftpPacketRRQ)
        if packet.mode != "octet":
            self._refuse(local, client, filename, TftpErrors.IllegalTftpOp, f"mode {packet.mode!r}")
            return
        if len(self._transfers) >= MAX_TRANSFERS:
            log.warning("tftp: %d transfers running, dropped request from %s:%d", MAX_TRANSFERS, *client)
            return
        try:
            path = resolve_in_root(self.root, filename)
            fd, size = _open_regular(path)
        except _Refused as refusal:
            self._refuse(local, client, filename, refusal.code, refusal.why)
            return
        try:
            self._begin(local, client, filename, fd, size, packet.options or {})
        except BaseException:
            os.close(fd)
            raise

    def _begin(
        self, local: str, client: tuple[str, int], filename: str, fd: int, size: int, options: dict[str, str]
    ) -> None:
        blksize, accepted = negotiate(options, size)
        sock = self._transfer_socket(local, client)
        transfer = _Transfer(
            sock=sock, client=client, filename=filename, fd=fd, size=size, blksize=blksize,
            block=0, offset=0, last=b"", final=False, deadline=0.0, started=self._now,
        )
        assert self._epoll is not None
        self._epoll.register(sock.fileno(), select.EPOLLIN)
        self._transfers[sock.fileno()] = transfer
        self._clients.add(client)
        log.info("tftp: %s:%d reads %s (blksize %d%s)", *client, filename, blksize,
                 ", tsize" if "tsize" in accepted else "")
        if accepted:
            oack = TftpPacketOACK()
            oack.options = accepted
            self._send(transfer, oack.encode().buffer)
        else:
            self._send_next(transfer)

    def _transfer_socket(self, local: str, client: tuple[str, int]) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((local, 0))
            # Connected: a fresh TID per transfer, and the kernel discards
            # datagrams from any other address or port.
            sock.connect(client)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def _refuse(self, local: str, client: tuple[str, int], filename: str, code: int, why: str) -> None:
        log.warning("tftp: refused %r from %s:%d: %s", filename, *client, why)
        err = TftpPacketERR()
        err.errorcode = code
        try:
            with self._transfer_socket(local, client) as sock:
                sock.send(err.encode().buffer)
        except OSError as exc:
            log.debug("tftp: could not send the error to %s:%d: %s", *client, exc)
        self._emit(TftpEvent("refused", client, filename, detail=why))

    def _on_packet(self, transfer: _Transfer) -> None:
        try:
            data = transfer.sock.recv(MAX_REQUEST)
        except ConnectionRefusedError:
            # ICMP port unreachable: the client is gone.
            self._finish(transfer, "aborted", "client port unreachable")
            return
        except OSError:
            return  # nothing readable after all (EAGAIN, EINTR)
        if len(data) < 4:
            return
        opcode, number = _HEADER.unpack_from(data)
        if opcode == _OP_ACK:
            if number != transfer.block & 0xFFFF:
                return  # duplicate or stray ACK: the timer handles losses
            if transfer.final:
                self._finish(transfer, "done")
                return
            transfer.retries = 0
            self._send_next(transfer)
        elif opcode == _OP_ERROR:
            message = data[4:].split(b"\x00", 1)[0].decode("ascii", "replace")
            self._finish(transfer, "aborted", f"client error {number}: {message}")
        # Anything else on a transfer port is ignored.

    def _send_next(self, transfer: _Transfer) -> None:
        chunk = os.pread(transfer.fd, transfer.blksize, transfer.offset)
        transfer.offset += len(chunk)
        transfer.block += 1
        transfer.final = len(chunk) < transfer.blksize
        self._send(transfer, _HEADER.pack(_OP_DATA, transfer.block & 0xFFFF) + chunk)

    def _send(self, transfer: _Transfer, packet: bytes) -> None:
        transfer.last = packet
        transfer.deadline = self._now + self.timeout
        try:
            transfer.sock.send(packet)
        except ConnectionRefusedError:
            self._finish(transfer, "aborted", "client port unreachable")
        except OSError as exc:
            # A full socket buffer, or EPERM from a local firewall that drops
            # the packet on output: either way the packet is lost, and the
            # resend timer covers lost packets.
            log.debug("tftp: send to %s:%d failed: %s", *transfer.client, exc)

    def _check_timeouts(self, now: float) -> None:
        for transfer in [t for t in self._transfers.values() if now >= t.deadline]:
            if transfer.retries >= self.retries:
                self._finish(transfer, "timeout", f"no ACK for block {transfer.block} after {transfer.retries} resends")
                continue
            transfer.retries += 1
            self._send(transfer, transfer.last)

    def _finish(self, transfer: _Transfer, kind: EventKind, detail: str = "") -> None:
        fd = transfer.sock.fileno()
        if fd < 0 or self._transfers.pop(fd, None) is None:
            return  # already finished
        self._clients.discard(transfer.client)
        if self._epoll is not None:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass
        transfer.sock.close()
        os.close(transfer.fd)
        seconds = time.monotonic() - transfer.started
        sent = transfer.offset if kind == "done" else max(0, transfer.offset - transfer.blksize)
        level = logging.INFO if kind in ("done", "aborted") else logging.WARNING
        log.log(level, "tftp: %s %s:%d %s, %d bytes in %.2fs %s", kind, *transfer.client,
                transfer.filename, sent, seconds, detail)
        self._emit(TftpEvent(kind, transfer.client, transfer.filename, sent, seconds, detail))

    def _emit(self, event: TftpEvent) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:
            log.exception("tftp: on_event callback failed; ignored")


__all__ = ["MAX_BLKSIZE", "TftpEvent", "TftpServer", "negotiate", "resolve_in_root"]
