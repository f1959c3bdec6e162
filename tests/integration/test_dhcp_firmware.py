"""Real firmware against our DHCP server, in a namespace we make: QEMU's
iPXE ROM (SeaBIOS) must end up fetching the boot script URL we handed it,
and OVMF's own PXE client (EDK2, no option ROM) must ask TFTP for
snponly.efi; each in full mode and as ProxyDHCP next to dnsmasq.

Slow under TCG (about 15 s a boot), so marked e2e; needs root and QEMU.
"""

from __future__ import annotations

import http.server
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network

import pytest

from provisioner.lab.netns import in_netns
from provisioner.net.dhcp.config import DhcpConfig
from provisioner.net.dhcp.server import DhcpServer

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="no QEMU"),
]

SERVER_IP = "10.78.0.1"
SITE_IP = "10.78.0.254"
MAC = "52:54:00:de:00:01"
BOOT_PATH = "/boot/ipxe?mac=52-54-00-de-00-01"


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=20)


@pytest.fixture
def lab():
    """One namespace with a bridge (our address, QEMU's tap) and a second
    "site" namespace on the same bridge where dnsmasq plays the site's DHCP
    server at its own address, as it would in real life."""
    sfx = secrets.token_hex(3)
    ns, site = f"dt-fw-{sfx}", f"dt-site-{sfx}"
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "netns", "add", site)
        sh("ip", "-n", ns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", ns, "addr", "add", f"{SERVER_IP}/24", "dev", "br0")
        sh("ip", "-n", ns, "link", "set", "br0", "up")
        sh("ip", "-n", ns, "tuntap", "add", "tap0", "mode", "tap")
        sh("ip", "-n", ns, "link", "set", "tap0", "master", "br0", "up")
        sh("ip", "-n", ns, "link", "add", "vsite", "type", "veth", "peer", "name", "site0", "netns", site)
        sh("ip", "-n", ns, "link", "set", "vsite", "master", "br0", "up")
        sh("ip", "-n", site, "addr", "add", f"{SITE_IP}/24", "dev", "site0")
        sh("ip", "-n", site, "link", "set", "site0", "up")
        yield ns, site
    finally:
        for name in (site, ns):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)


def site_dnsmasq(site: str, tmp_path) -> list[str]:
    # The site's plain DHCP server: addresses only, no boot options.
    return ["ip", "netns", "exec", site, "/usr/sbin/dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
            "--interface=site0", "--bind-interfaces", "--dhcp-range=10.78.0.100,10.78.0.150,1h",
            f"--dhcp-leasefile={tmp_path}/leases", "--no-ping"]


@contextmanager
def http_recorder(ns: str):
    """Records the paths iPXE asks for; answers with a script that stops it."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.path)
            body = b"#!ipxe\nshell\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with in_netns(ns):
        httpd = http.server.HTTPServer((SERVER_IP, 8080), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield seen
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def dhcp_server(ns: str, mode: str, db):
    cfg = DhcpConfig(mode=mode, server_ip=A(SERVER_IP), subnet=IPv4Network("10.78.0.0/24"),
                     base_url=f"http://{SERVER_IP}:8080", interface="br0",
                     pool_first=A("10.78.0.100"), pool_last=A("10.78.0.150"))
    events: list[tuple] = []
    server = DhcpServer(cfg, db, on_event=lambda *e: events.append(e))
    with in_netns(ns):
        server.bind()
    server.start()
    try:
        yield events
    finally:
        server.shutdown()


@contextmanager
def process(argv: list[str]):
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()  # ours, by PID
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def boot_bios(ns: str, seen: list[str], limit: float = 90.0) -> None:
    argv = ["ip", "netns", "exec", ns, "qemu-system-x86_64", "-machine", "pc,graphics=off", "-accel", "tcg",
            "-m", "256", "-nodefaults", "-display", "none", "-monitor", "none", "-serial", "null",
            "-boot", "order=n,menu=off", "-no-reboot",
            "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={MAC},bootindex=1"]
    with process(argv):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and BOOT_PATH not in seen:
            time.sleep(0.5)


def test_ipxe_boots_from_our_full_dhcp(lab, tmp_path):
    ns, _ = lab
    with http_recorder(ns) as seen, dhcp_server(ns, "full", tmp_path / "p.db") as events:
        boot_bios(ns, seen)
    assert BOOT_PATH in seen, [e[:3] for e in events]
    kinds = [e[0] for e in events]
    assert "dhcp.offer" in kinds and "dhcp.ack" in kinds


def test_ipxe_boots_from_our_proxy_next_to_dnsmasq(lab, tmp_path):
    ns, site = lab
    with process(site_dnsmasq(site, tmp_path)), http_recorder(ns) as seen, \
            dhcp_server(ns, "proxy", tmp_path / "p.db") as events:
        boot_bios(ns, seen)
    assert BOOT_PATH in seen, [e[:3] for e in events]
    # Debian 12's iPXE takes the boot file straight from our ProxyDHCPOFFER
    # (observed with tcpdump: no ProxyDHCPREQUEST follows), and no address
    # comes from us.
    assert [e[0] for e in events] == ["dhcp.offer"]
    assert not any(e[3].get("ip") for e in events)


@contextmanager
def tftp_recorder(ns: str):
    """Records the file names of TFTP read requests (no transfer)."""
    with in_netns(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((SERVER_IP, 69))
    names: list[str] = []
    stop = threading.Event()

    def loop() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                data, _ = sock.recvfrom(2048)
            except socket.timeout:
                continue
            if data[:2] == b"\x00\x01":
                names.append(data[2:].split(b"\0")[0].decode("latin-1"))

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield names
    finally:
        stop.set()
        t.join()
        sock.close()


def boot_uefi(ns: str, names: list[str], tmp_path, limit: float = 150.0) -> None:
    vars_file = tmp_path / "vars.fd"
    shutil.copy("/usr/share/OVMF/OVMF_VARS_4M.fd", vars_file)
    argv = ["ip", "netns", "exec", ns, "qemu-system-x86_64", "-machine", "q35,graphics=off", "-accel", "tcg",
            "-m", "512", "-nodefaults", "-display", "none", "-monitor", "none", "-serial", "null", "-no-reboot",
            "-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
            "-drive", f"if=pflash,format=raw,file={vars_file}",
            "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
            # romfile= leaves out iPXE, so EDK2's own PXE client does the DHCP.
            "-device", f"virtio-net-pci,netdev=n0,mac={MAC},bootindex=1,romfile="]
    with process(argv):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and not names:
            time.sleep(0.5)


@pytest.mark.skipif(not os.path.exists("/usr/share/OVMF/OVMF_CODE_4M.fd"), reason="no OVMF")
@pytest.mark.parametrize("mode", ["full", "proxy"])
def test_edk2_pxe_asks_tftp_for_snponly(mode, lab, tmp_path):
    ns, site = lab
    site_server = process(site_dnsmasq(site, tmp_path)) if mode == "proxy" else process(["true"])
    with site_server, tftp_recorder(ns) as names, dhcp_server(ns, mode, tmp_path / "p.db") as events:
        boot_uefi(ns, names, tmp_path)
    assert names and names[0] == "snponly.efi", [e[:3] for e in events]
    if mode == "proxy":
        # No 43 for UEFI, so the firmware asked the boot server on 4011.
        assert any("PXE boot server" in e[2] for e in events)
