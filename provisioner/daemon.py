"""`provisioner serve`: check everything, then start DHCP, TFTP and HTTP, and
stop them cleanly on SIGTERM or SIGINT.

Settings and the interface are checked before anything binds, so a wrong
file stops the daemon with one line naming the key.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from provisioner.core.bootfiles import BOOT_FILES
from provisioner.errors import ConfigError
from provisioner.eventsink import EventSink
from provisioner.settings import InterfaceInfo, Settings, base_url, resolve_interface

log = logging.getLogger("provisioner.daemon")

def check_ipxe_binaries(settings: Settings) -> None:
    for key in BOOT_FILES.values():
        path: Path = getattr(settings.ipxe, key)
        if not path.is_file():
            raise ConfigError(f"config: ipxe.{key}: {path} does not exist (install Debian's ipxe package)")


def prepare_tftp_root(settings: Settings) -> Path:
    """Copy the iPXE binaries into the TFTP root. Copies, not symlinks: the
    TFTP server refuses links that leave its root."""
    root = settings.tftp_root
    root.mkdir(parents=True, exist_ok=True)
    for name, key in BOOT_FILES.items():
        src: Path = getattr(settings.ipxe, key)
        dst = root / name
        if dst.is_file() and not dst.is_symlink() and _same_content(src, dst):
            continue
        tmp = root / f".{name}.tmp"
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    return root


def _same_content(a: Path, b: Path) -> bool:
    sa, sb = a.stat(), b.stat()
    return sa.st_size == sb.st_size and a.read_bytes() == b.read_bytes()


def run(settings: Settings) -> int:
    from provisioner.db import open_db
    from provisioner.net.tftp import TftpServer
    from provisioner.web.app import create_app
    from provisioner.web.server import close_server, make_server, run_until_closed

    info = resolve_interface(settings)
    check_ipxe_binaries(settings)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    open_db(settings.db_path).conn.close()
    tftp_root = prepare_tftp_root(settings)
    base = base_url(settings, info)

    sink = EventSink(settings.db_path)
    sink.start()

    def on_tftp(ev) -> None:
        if ev.kind == "done":
            sink.emit("tftp.sent", f"sent {ev.filename} ({ev.bytes_sent} bytes in {ev.seconds:.2f} s) to {ev.client[0]}",
                      actor="tftp", data={"client": ev.client[0], "file": ev.filename})
        elif ev.kind in ("refused", "failed", "timeout"):
            sink.emit(f"tftp.{ev.kind}", f"{ev.filename}: {ev.detail} (from {ev.client[0]})",
                      actor="tftp", data={"client": ev.client[0], "file": ev.filename})

    stoppers: list = []  # in start order; stopped in reverse
    stopped = threading.Event()
    http = None
    try:
        app = create_app(settings, base_url=base)
        with _binding("HTTP", "http.port", settings.http.port):
            http = make_server(app, settings.http.bind, settings.http.port, threads=settings.http.threads)
        tftp = TftpServer(tftp_root, host="0.0.0.0", port=settings.tftp.port, timeout=settings.tftp.timeout,
                          on_event=on_tftp)
        with _binding("TFTP", "tftp.port", settings.tftp.port):
            tftp.start()
        stoppers.append(tftp.stop)
        if settings.network.dhcp != "off":
            with _binding("DHCP", "network.dhcp", "67 and 4011"):
                dhcp = start_dhcp(settings, info, sink)
            stoppers.append(dhcp.shutdown)

        def stop(signum, _frame):
            log.info("signal %d: stopping", signum)
            stopped.set()
            close_server(http)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        log.info(
            "serving on %s (%s/%d): dhcp=%s, tftp port %d, http %s",
            info.name, info.address, info.network.prefixlen, settings.network.dhcp, settings.tftp.port, base,
        )
        sink.emit("appliance.started", f"serving on {info.name} {info.address}, dhcp {settings.network.dhcp}",
                  actor="daemon")
        run_until_closed(http, stopped)
    finally:
        for stop_server in reversed(stoppers):
            try:
                stop_server()
            except Exception:
                log.exception("stopping %r failed", stop_server)
        if http is not None:
            try:
                close_server(http)
            except Exception:
                log.exception("closing the HTTP server failed")
        sink.emit("appliance.stopped", "stopped", actor="daemon")
        sink.stop()
    return 0


@contextmanager
def _binding(what: str, key: str, port: int | str) -> Iterator[None]:
    """A server that cannot bind stops the daemon with one line naming the
    setting, like any other configuration error."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(
            f"config: {key}: cannot bind {what} on port {port}: {exc.strerror or exc} "
            f"(is another {what} server running on this machine?)"
        ) from exc


def start_dhcp(settings: Settings, info: InterfaceInfo, sink: EventSink):
    from provisioner.net.dhcp.config import DhcpConfig
    from provisioner.net.dhcp.server import DhcpServer

    def on_event(kind: str, mac: str | None, message: str, data: dict) -> None:
        sink.emit(kind, message, mac=mac, actor="dhcp", data=data)

    server = DhcpServer(DhcpConfig.from_settings(settings, info), settings.db_path, on_event=on_event)
    server.start()
    return server
