"""LabNetwork create/teardown: namespaces, bridge, taps, site veth and the
processes started in them, all gone afterwards (also after an exception)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from provisioner.lab.netns import LabError, LabNetwork, list_namespaces, stop_process

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 not installed"),
]

PREFIX = "prov-test"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[-1][0] != "Z"
    except FileNotFoundError:
        return False


def _root_links() -> set[str]:
    with IPRoute() as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def _links(ns: str) -> dict[str, object]:
    with IPRoute(netns=ns) as ipr:
        return {link.get_attr("IFLA_IFNAME"): link for link in ipr.get_links()}


@pytest.fixture
def lab():
    with LabNetwork.create(prefix=PREFIX) as network:
        yield network


def test_create_builds_bridge_in_its_own_namespace(lab):
    assert lab.name.startswith(f"{PREFIX}-") and lab.name in list_namespaces(PREFIX)
    links = _links(lab.name)
    bridge = links["br0"]
    assert bridge.get_attr("IFLA_OPERSTATE") in ("UP", "UNKNOWN")
    info = bridge.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    assert info.get_attr("IFLA_BR_FORWARD_DELAY") == 0
    assert info.get_attr("IFLA_BR_STP_STATE") == 0
    out = lab.run(["ip", "-4", "-o", "addr", "show", "dev", "br0"]).stdout
    assert "10.77.0.1/24" in out
    assert lab.run(["ip", "-o", "link", "show", "lo"]).stdout.find("UP") > 0


def test_names_are_unique():
    with LabNetwork.create(prefix=PREFIX) as a, LabNetwork.create(prefix=PREFIX) as b:
        assert a.name != b.name


def test_tap_is_enslaved_and_up_only_inside(lab):
    before = _root_links()
    tap = lab.add_tap()
    links = _links(lab.name)
    assert links[tap].get_attr("IFLA_MASTER") == links["br0"]["index"]
    assert links[tap]["flags"] & 1  # IFF_UP
    assert tap not in _root_links() - before


def _serve_healthz(lab, directory: Path):
    (directory / "healthz").write_text("ok")
    return lab.popen([sys.executable, "-m", "http.server", "--bind", lab.ip, "8080", "--directory", str(directory)])


def _get_until_ok(lab, url: str, netns: str | None = None) -> tuple[int, str]:
    deadline = time.monotonic() + 20
    while True:
        code, body = lab.http_get(url, netns=netns, timeout=2)
        if code == 200 or time.monotonic() > deadline:
            return code, body
        time.sleep(0.2)


def test_site_namespace_reaches_bridge(lab, tmp_path: Path):
    site = lab.add_site()
    assert site.netns == f"{lab.name}-site" and site.ip == "10.77.0.2"
    links = _links(lab.name)
    assert links[site.lab_side].get_attr("IFLA_MASTER") == links["br0"]["index"]
    # No ping on the box: an HTTP GET from the site to the lab bridge proves
    # the veth, the bridge port and both addresses.
    _serve_healthz(lab, tmp_path)
    assert _get_until_ok(lab, f"http://{lab.ip}:8080/healthz", netns=site.netns) == (200, "ok")
    lab.close()
    assert site.netns not in list_namespaces() and lab.name not in list_namespaces()


def test_popen_runs_inside_and_close_kills(lab):
    proc = lab.popen(["sleep", "300"])
    # ip netns exec setns()es and then execs the command: the Popen PID
    # becomes sleep itself, in the lab (wait for the exec to happen).
    deadline = time.monotonic() + 10
    while Path(f"/proc/{proc.pid}/comm").read_text().strip() != "sleep" and time.monotonic() < deadline:
        time.sleep(0.05)
    ident = subprocess.run(["ip", "netns", "identify", str(proc.pid)], capture_output=True, text=True)
    assert ident.stdout.strip() == lab.name
    lab.close()
    assert not _alive(proc.pid)
    assert lab.name not in list_namespaces()


def test_process_ignoring_sigterm_gets_killed(lab):
    code = "import signal,time,sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ok', flush=True); time.sleep(300)"
    proc = lab.popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ok"
    started = time.monotonic()
    stop_process(proc, grace=0.5)
    assert not _alive(proc.pid)
    assert time.monotonic() - started < 5


def test_children_of_a_lab_process_are_stopped(lab):
    # A shell that leaves a background child: the group goes with it.
    proc = lab.popen(["sh", "-c", "sleep 300 & echo $!; wait"], stdout=subprocess.PIPE)
    child = int(proc.stdout.readline())
    lab.close()
    assert not _alive(proc.pid)
    # The orphaned child is reaped by init, not by us: allow it a moment.
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def test_close_is_idempotent():
    lab = LabNetwork.create(prefix=PREFIX)
    lab.add_tap()
    lab.close()
    lab.close()
    assert lab.name not in list_namespaces()
    with pytest.raises(LabError):
        lab.add_tap()
    with pytest.raises(LabError):
        lab.popen(["true"])


def test_cleanup_on_exception():
    with pytest.raises(RuntimeError, match="boom"):
        with LabNetwork.create(prefix=PREFIX) as lab:
            proc = lab.popen(["sleep", "300"])
            lab.add_site()
            raise RuntimeError("boom")
    assert not _alive(proc.pid)
    assert lab.name not in list_namespaces() and f"{lab.name}-site" not in list_namespaces()


def test_failed_create_removes_namespace():
    before = set(list_namespaces(PREFIX))
    # 20 characters is over IFNAMSIZ: the kernel refuses the bridge.
    with pytest.raises(Exception):
        LabNetwork.create(prefix=PREFIX, bridge="b" * 20)
    assert set(list_namespaces(PREFIX)) == before


def test_refuses_foreign_namespace(lab):
    with pytest.raises(LabError):
        lab.popen(["true"], netns="some-other-namespace")


def test_stop_refuses_foreign_process(lab):
    other = subprocess.Popen(["sleep", "300"])
    try:
        with pytest.raises(LabError):
            lab.stop(other)
    finally:
        other.kill()
        other.wait()


def test_http_get_from_inside(lab, tmp_path: Path):
    server = _serve_healthz(lab, tmp_path)
    assert _get_until_ok(lab, f"http://{lab.ip}:8080/healthz") == (200, "ok")
    lab.stop(server)
    assert lab.http_get(f"http://{lab.ip}:8080/healthz", timeout=1)[0] == 0


def test_dhcp_observer_refuses_outside_its_namespace(lab):
    # Run in the root namespace but claiming the lab's: it must not bind.
    done = subprocess.run(
        [sys.executable, "-m", "provisioner.lab.dhcpsniff", "--netns", lab.name, "br0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "refusing" in done.stderr


_SOLICIT = """
import socket, struct, sys, time
idx = socket.if_nametoindex("lan0")
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.settimeout(1)
for attempt in range(20):
    try:
        s.sendto(struct.pack("!BBHI", 133, 0, 0, 0), ("ff02::2", 0, 0, idx))
    except OSError:  # link-local address still tentative (DAD)
        time.sleep(0.5)
        continue
    try:
        while True:
            data, src = s.recvfrom(1500)
            if data[0] == 134:
                print("RA", struct.unpack("!H", data[6:8])[0], flush=True)
                sys.exit(0)
    except socket.timeout:
        pass
sys.exit(1)
"""


def test_router_solicitation_gets_a_no_router_advertisement():
    with LabNetwork.create(prefix=PREFIX, answer_router_solicitations=True) as lab:
        site = lab.add_site()
        # The site's link-local address needs DAD (~1-2 s) before it can send.
        done = lab.run([sys.executable, "-c", _SOLICIT], netns=site.netns, timeout=30, check=False)
        # Router lifetime 0: "no default router here".
        assert done.returncode == 0 and done.stdout.strip() == "RA 0", done.stdout + done.stderr
