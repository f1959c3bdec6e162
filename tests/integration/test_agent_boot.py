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
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from provisioner.agent import build_agent, builder, read_manifest
from provisioner.settings import AgentSettings

pytestmark = pytest.mark.e2e

QEMU = shutil.which("qemu-system-x86_64")
MAC = "52:54:00:12:34:56"
UUID = "8d3e2a52-3c41-4f6e-9a57-0b1c2d3e4f50"
TOKEN = "tok-e2e-0123456789abcdef"
SERIALS = ("SERIAL1", "SERIAL2")
MKFS = shutil.which("mkfs.ext4")
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
    cache = cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        pytest.skip(f"cannot create the package cache {cache}; set PROVISIONER_TEST_CACHE")
    if not os.access(cache, os.W_OK):
        pytest.skip(f"the package cache {cache} is not writable; set PROVISIONER_TEST_CACHE")
    out = tmp_path_factory.mktemp("agent")
    started = time.monotonic()
    build_agent(out, cache, log=print)
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


@dataclass
class Boot:
    returncode: int | None  # None: QEMU was killed because it did not stop
    serial: str
    seconds: float


def disk_image(path: Path, size: int, ext4: bool = False) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    if ext4 and MKFS:
        subprocess.run([MKFS, "-q", "-F", "-t", "ext4", str(path)], check=True)
    return path


def virtio_pc(tmp_path: Path) -> list[str]:
    """i440fx, BIOS, one virtio NIC, two virtio disks (the second with ext4)."""
    blank = disk_image(tmp_path / "d1.img", 64 << 20)
    used = disk_image(tmp_path / "d2.img", 32 << 20, ext4=True)
    return [
        "-machine", "pc",
        "-netdev", "user,id=n0", "-device", f"virtio-net-pci,netdev=n0,mac={MAC}",
        "-drive", f"file={blank},format=raw,if=none,id=d1",
        "-device", f"virtio-blk-pci,drive=d1,serial={SERIALS[0]}",
        "-drive", f"file={used},format=raw,if=none,id=d2",
        "-device", f"virtio-blk-pci,drive=d2,serial={SERIALS[1]}",
    ]  # fmt: skip


def boot(
    artifacts: Path, tmp_path: Path, port: int, token: str, machine: list[str], until: threading.Event | None = None
) -> Boot:
    """Boot the agent on the given QEMU machine; return when QEMU exits by
    itself, or after killing it at BOOT_TIMEOUT."""
    initrd = tmp_path / "initrd"
    concat_initrds([artifacts / "agent.cpio", artifacts / "modules.cpio"], initrd)
    log = tmp_path / "serial.log"
    append = " ".join(
        [
            # The appliance's default agent.kernel_args: /dev/console is tty0,
            # so this also checks that markers reach the serial console.
            AgentSettings.kernel_args,
            "panic=5",  # with -no-reboot, a panic ends QEMU instead of hanging the test
            f"provisioner.url=http://10.0.2.2:{port}",
            f"provisioner.token={token}",
            "provisioner.mode=discover",
            "BOOTIF=01-" + MAC.replace(":", "-"),
        ]
    )
    cmd = [
        QEMU, "-accel", "tcg,thread=single", "-m", "1024", "-smp", "2",
        "-nographic", "-monitor", "none", "-serial", f"file:{log}", "-no-reboot",
        "-uuid", UUID,
        "-kernel", str(artifacts / "kernel"), "-initrd", str(initrd), "-append", append,
        *machine,
    ]  # fmt: skip
    started = time.monotonic()
    deadline = started + BOOT_TIMEOUT
    with (tmp_path / "qemu.log").open("wb") as qemu_log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=subprocess.STDOUT)
    try:
        if until is not None and until.wait(BOOT_TIMEOUT):
            print(f"TCG boot-to-report {time.monotonic() - started:.1f}s")
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:
            proc.kill()  # only the QEMU we started, by its PID
            proc.wait()
            code = None
        else:
            code = proc.returncode
    seconds = time.monotonic() - started
    print(f"TCG boot-to-poweroff {seconds:.1f}s")
    serial = log.read_text(errors="replace") if log.exists() else ""
    serial += "\n--- qemu output ---\n" + (tmp_path / "qemu.log").read_text(errors="replace")
    return Boot(code, serial, seconds)


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
@pytest.mark.timeout(BOOT_TIMEOUT + 300)
def test_agent_discovers_and_powers_off(artifacts: Path, api_server, tmp_path: Path) -> None:
    api, port = api_server
    result = boot(artifacts, tmp_path, port, TOKEN, virtio_pc(tmp_path), until=api.reported)

    assert api.reports, "no report; serial log:\n" + tail(result.serial)
    assert result.returncode == 0, "QEMU did not power off by itself; serial log:\n" + tail(result.serial)
    assert "provisioner-agent: phase=report-sent" in result.serial
    assert "provisioner-agent: phase=poweroff" in result.serial

    hw = api.reports[0]["hardware"]
    disks = {d["serial"]: d for d in hw["disks"]}
    assert set(SERIALS) <= set(disks), hw["disks"]
    assert disks["SERIAL1"]["size_bytes"] == 64 << 20
    assert disks["SERIAL2"]["size_bytes"] == 32 << 20
    assert disks["SERIAL1"]["transport"] == "virtio"
    assert disks["SERIAL1"]["by_path"].startswith("pci-0000:00:")
    assert disks["SERIAL1"]["signatures"] == []
    if MKFS:
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


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
@pytest.mark.timeout(BOOT_TIMEOUT + 300)
def test_rejected_token_reports_error_and_powers_off(artifacts: Path, api_server, tmp_path: Path) -> None:
    """A refused plan must end in a clear console message and a power-off,
    never in a machine hanging in the agent."""
    api, port = api_server
    result = boot(artifacts, tmp_path, port, "not-the-token", virtio_pc(tmp_path))
    assert result.returncode == 0, "QEMU did not power off by itself; serial log:\n" + tail(result.serial)
    assert "provisioner-agent: phase=error" in result.serial
    assert "403" in result.serial
    assert not api.reports and api.plans == 0
    assert [e["phase"] for e in api.events if e.get("token") == "not-the-token"] == ["network-up", "error"]


OVMF = next((p for p in (Path("/usr/share/qemu/OVMF.fd"), Path("/usr/share/ovmf/OVMF.fd")) if p.exists()), None)


@pytest.mark.skipif(QEMU is None or OVMF is None, reason="needs qemu-system-x86_64 and OVMF")
@pytest.mark.timeout(BOOT_TIMEOUT + 300)
def test_agent_on_a_server_like_uefi_machine(artifacts: Path, api_server, tmp_path: Path) -> None:
    """q35 with UEFI, an AHCI SATA disk, an NVMe disk, the boot NIC on e1000e
    and a second NIC: the drivers come from modules.cpio by modalias, and
    the BOOTIF NIC is the one used and marked."""
    api, port = api_server
    sata = disk_image(tmp_path / "sata.img", 48 << 20, ext4=True)
    nvme = disk_image(tmp_path / "nvme.img", 16 << 20)
    machine = [
        "-machine", "q35", "-bios", str(OVMF),
        "-netdev", "user,id=n1", "-device", "virtio-net-pci,netdev=n1,mac=52:54:00:00:00:99",
        "-netdev", "user,id=n0", "-device", f"e1000e,netdev=n0,mac={MAC}",
        "-drive", f"file={sata},format=raw,if=none,id=s1",
        "-device", "ide-hd,drive=s1,bus=ide.0,serial=SATA-SERIAL-1",
        "-drive", f"file={nvme},format=raw,if=none,id=v1",
        "-device", "nvme,drive=v1,serial=NVME-SERIAL-1",
    ]  # fmt: skip
    result = boot(artifacts, tmp_path, port, TOKEN, machine, until=api.reported)
    assert api.reports, "no report; serial log:\n" + tail(result.serial)
    assert result.returncode == 0, "QEMU did not power off by itself; serial log:\n" + tail(result.serial)

    hw = api.reports[0]["hardware"]
    assert hw["firmware"] == "uefi"
    disks = {d["serial"]: d for d in hw["disks"]}
    assert disks["SATA-SERIAL-1"]["transport"] == "sata"
    assert disks["SATA-SERIAL-1"]["by_path"] == "pci-0000:00:1f.2-ata-1"
    assert disks["SATA-SERIAL-1"]["size_bytes"] == 48 << 20
    assert disks["SATA-SERIAL-1"]["model"] == "QEMU HARDDISK"
    assert disks["SATA-SERIAL-1"]["wwn"] is None  # QEMU gives only a t10. identifier
    if MKFS:
        assert disks["SATA-SERIAL-1"]["signatures"] == ["ext4"]
    assert disks["NVME-SERIAL-1"]["transport"] == "nvme"
    assert disks["NVME-SERIAL-1"]["by_path"].endswith("-nvme-1")
    assert disks["NVME-SERIAL-1"]["size_bytes"] == 16 << 20
    nics = {n["mac"]: n for n in hw["nics"]}
    assert nics[MAC]["driver"] == "e1000e" and nics[MAC]["boot"] is True
    assert nics["52:54:00:00:00:99"]["driver"] == "virtio_net" and nics["52:54:00:00:00:99"]["boot"] is False
    assert hw["system"]["uuid"] == UUID


def test_rebuild_downloads_nothing_and_is_reproducible(artifacts: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    again = build_agent(tmp_path / "again", cache_dir(), log=lines.append)
    assert not [line for line in lines if "download" in line], lines
    first = read_manifest(artifacts)
    assert again == first
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == [
        ".build.lock", "agent.cpio", "kernel", "manifest.json", "modules.cpio",
    ]  # fmt: skip


def test_failed_build_leaves_previous_artifacts(artifacts: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    shutil.copytree(artifacts, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*_args: object) -> None:
        raise RuntimeError("simulated failure while unpacking the kernel")

    monkeypatch.setattr(builder, "unpack", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        build_agent(out, cache_dir(), log=lambda _msg: None, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(cache_dir().glob(".agent-work-*"))


def test_unchanged_inputs_skip_the_build_and_damage_does_not(artifacts: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    manifest = build_agent(artifacts, cache_dir(), log=lines.append)
    assert any("up to date" in line for line in lines), lines
    assert manifest == read_manifest(artifacts) and manifest.inputs
    copy = tmp_path / "copy"
    shutil.copytree(artifacts, copy)
    assert builder.up_to_date(copy, manifest.inputs) == manifest
    assert builder.up_to_date(copy, "other inputs") is None
    kernel = bytearray((copy / "kernel").read_bytes())
    kernel[4096] ^= 0x01
    (copy / "kernel").write_bytes(bytes(kernel))
    assert builder.up_to_date(copy, manifest.inputs) is None, "a damaged artifact is rebuilt"
