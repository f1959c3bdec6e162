"""Build the real agent from Debian packages and boot it in QEMU (TCG).

The guest reaches a small in-test implementation of the agent API on the
host's loopback through QEMU's user-mode network (10.0.2.2). The test
asserts the hardware report and that the agent powers the machine off.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from provisioner.agent import build_agent

pytestmark = pytest.mark.e2e

QEMU = shutil.which("qemu-system-x86_64")
MAC = "52:54:00:12:34:56"
UUID = "8d3e2a52-3c41-4f6e-9a57-0b1c2d3e4f50"
TOKEN = "tok-e2e-0123456789abcdef"
SERIALS = ("SERIAL1", "SERIAL2")
BOOT_TIMEOUT = 900  # seconds; TCG on a shared 2-core machine is slow


def cache_dir() -> Path:
    return Path(os.environ.get("PROVISIONER_TEST_CACHE", "/var/cache/provisioner-test"))


class AgentApi:
    """The agent API of docs/contracts.md, with one valid token."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.reports: list[dict] = []
        self.plans = 0
        self.used = False
        self.reported = threading.Event()
        self.lock = threading.Lock()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, doc: dict) -> None:
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                url = urlparse(self.path)
                if url.path != "/api/v1/agent/plan":
                    return self._send(404, {"error": "not found"})
                token = parse_qs(url.query).get("token", [""])[0]
                with api.lock:
                    if token != TOKEN or api.used:
                        return self._send(403, {"error": "bad token"})
                    api.plans += 1
                self._send(200, {"mode": "discover", "mac": MAC, "host": None})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                try:
                    doc = json.loads(self.rfile.read(length))
                except ValueError:
                    return self._send(400, {"error": "malformed body"})
                if not isinstance(doc, dict):
                    return self._send(400, {"error": "malformed body"})
                with api.lock:
                    if self.path == "/api/v1/agent/event":
                        api.events.append(doc)
                        if doc.get("token") != TOKEN or api.used:
                            return self._send(403, {"error": "bad token"})
                        return self._send(200, {})
                    if self.path == "/api/v1/agent/report":
                        if doc.get("token") != TOKEN or api.used:
                            return self._send(403, {"error": "bad token"})
                        if not isinstance(doc.get("hardware"), dict):
                            return self._send(400, {"error": "no hardware"})
                        api.used = True
                        api.reports.append(doc)
                        api.reported.set()
                        return self._send(200, {"host": "node-1"})
                self._send(404, {"error": "not found"})

        return Handler


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("the agent build unpacks packages and runs depmod as root")
    out = tmp_path_factory.mktemp("agent")
    started = time.monotonic()
    build_agent(out, cache_dir(), log=print)
    print(f"agent build took {time.monotonic() - started:.1f}s")
    return out


@pytest.fixture()
def api_server():
    api = AgentApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), api.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def concat_initrds(parts: list[Path], dest: Path) -> None:
    # What iPXE does with several initrd= images: concatenate, each padded
    # to a 4-byte boundary.
    with dest.open("wb") as out:
        for part in parts:
            data = part.read_bytes()
            out.write(data + b"\0" * (-len(data) % 4))


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no serial log)"


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
@pytest.mark.timeout(BOOT_TIMEOUT + 600)
def test_agent_discovers_and_powers_off(artifacts: Path, api_server, tmp_path: Path) -> None:
    api, port = api_server
    initrd = tmp_path / "initrd"
    concat_initrds([artifacts / "agent.cpio", artifacts / "modules.cpio"], initrd)

    blank = tmp_path / "d1.img"
    with blank.open("wb") as f:
        f.truncate(64 << 20)
    used = tmp_path / "d2.img"
    with used.open("wb") as f:
        f.truncate(32 << 20)
    mkfs = shutil.which("mkfs.ext4") or shutil.which("mke2fs")
    if mkfs:
        subprocess.run([mkfs, "-q", "-F", "-t", "ext4", str(used)], check=True)

    log = tmp_path / "serial.log"
    append = " ".join(
        [
            "console=ttyS0",
            "panic=5",  # with -no-reboot, a panic ends QEMU instead of hanging the test
            f"provisioner.url=http://10.0.2.2:{port}",
            f"provisioner.token={TOKEN}",
            "provisioner.mode=discover",
            "BOOTIF=01-" + MAC.replace(":", "-"),
        ]
    )
    cmd = [
        QEMU, "-accel", "tcg,thread=single", "-machine", "pc", "-m", "1024", "-smp", "2",
        "-nographic", "-monitor", "none", "-serial", f"file:{log}", "-no-reboot",
        "-uuid", UUID,
        "-kernel", str(artifacts / "kernel"), "-initrd", str(initrd), "-append", append,
        "-netdev", "user,id=n0", "-device", f"virtio-net-pci,netdev=n0,mac={MAC}",
        "-drive", f"file={blank},format=raw,if=none,id=d1",
        "-device", f"virtio-blk-pci,drive=d1,serial={SERIALS[0]}",
        "-drive", f"file={used},format=raw,if=none,id=d2",
        "-device", f"virtio-blk-pci,drive=d2,serial={SERIALS[1]}",
    ]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert api.reported.wait(BOOT_TIMEOUT), "no report within %ss; serial log:\n%s" % (BOOT_TIMEOUT, tail(log))
        report_at = time.monotonic() - started
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("QEMU did not power off after the report; serial log:\n" + tail(log))
        exit_at = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()  # only the QEMU we started, by its PID
            proc.wait()
    print(f"TCG boot-to-report {report_at:.1f}s, boot-to-poweroff {exit_at:.1f}s")

    serial = log.read_text(errors="replace")
    assert "provisioner-agent: phase=report-sent" in serial
    assert "provisioner-agent: phase=poweroff" in serial
    assert proc.returncode == 0, serial[-3000:]

    hw = api.reports[0]["hardware"]
    disks = {d["serial"]: d for d in hw["disks"]}
    assert set(SERIALS) <= set(disks), hw["disks"]
    assert disks["SERIAL1"]["size_bytes"] == 64 << 20
    assert disks["SERIAL2"]["size_bytes"] == 32 << 20
    assert disks["SERIAL1"]["transport"] == "virtio"
    assert disks["SERIAL1"]["by_path"].startswith("pci-0000:00:")
    assert disks["SERIAL1"]["signatures"] == []
    if mkfs:
        assert disks["SERIAL2"]["signatures"] == ["ext4"]
    for d in hw["disks"]:
        assert set(d) == {
            "name", "size_bytes", "serial", "wwn", "model", "vendor", "by_path",
            "rotational", "removable", "readonly", "transport", "signatures",
        }  # fmt: skip

    nics = hw["nics"]
    assert [n["mac"] for n in nics] == [MAC]
    assert nics[0]["driver"] == "virtio_net" and nics[0]["boot"] is True and nics[0]["link"] is True

    assert hw["memory_bytes"] == 1024 << 20
    assert hw["cpu"]["count"] == 2 and hw["cpu"]["model"]
    assert hw["system"]["uuid"] == UUID
    assert hw["system"]["vendor"] == "QEMU"
    assert hw["firmware"] == "bios"
    assert hw["kernel"] == json.loads((artifacts / "manifest.json").read_text())["kernel_version"]

    phases = [e["phase"] for e in api.events]
    assert "network-up" in phases and "error" not in phases
    assert api.plans == 1
