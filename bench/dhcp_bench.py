"""DISCOVER -> OFFER rate and latency: our DHCP server against dnsmasq.

Run as root from the repository root:

    .venv/bin/python bench/dhcp_bench.py [--clients 2000] [--rate 200]

Everything runs inside two network namespaces made here (server and client
joined by a veth) and deleted on exit, whatever happens. Each server runs
in turn as its own process in the server namespace; the client sends
DISCOVERs from distinct MACs at a fixed rate from the client namespace and
times each OFFER by xid. Bounded: at most --clients packets and --limit
seconds per server.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from provisioner.lab.netns import in_netns  # noqa: E402
from provisioner.net.dhcp.codec import FLAG_BROADCAST, DhcpPacket, build, parse  # noqa: E402

SERVER_IP = "10.40.0.1"
CLIENT_IP = "10.40.0.2"
POOL = ("10.40.1.0", "10.40.15.254")

OUR_SERVER = """
import sys, logging
from ipaddress import IPv4Address as A, IPv4Network as N
from provisioner.net.dhcp.config import DhcpConfig
from provisioner.net.dhcp.server import DhcpServer
cfg = DhcpConfig(mode="full", server_ip=A("{server}"), subnet=N("10.40.0.0/20"), base_url="http://{server}:8080",
                 interface="{iface}", pool_first=A("{first}"), pool_last=A("{last}"), lease_seconds=3600,
                 router=A("{server}"))
DhcpServer(cfg, "{db}").serve_forever()
"""


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=20)


@contextmanager
def namespaces():
    sfx = secrets.token_hex(3)
    ns_s, ns_c, if_s, if_c = f"db-s-{sfx}", f"db-c-{sfx}", f"bvs{sfx}", f"bvc{sfx}"
    try:
        sh("ip", "netns", "add", ns_s)
        sh("ip", "netns", "add", ns_c)
        sh("ip", "-n", ns_s, "link", "add", if_s, "type", "veth", "peer", "name", if_c, "netns", ns_c)
        sh("ip", "-n", ns_s, "addr", "add", f"{SERVER_IP}/20", "dev", if_s)
        sh("ip", "-n", ns_c, "addr", "add", f"{CLIENT_IP}/20", "dev", if_c)
        sh("ip", "-n", ns_s, "link", "set", if_s, "up")
        sh("ip", "-n", ns_c, "link", "set", if_c, "up")
        yield ns_s, ns_c, if_s, if_c
    finally:
        for ns in (ns_c, ns_s):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def discover(n: int, xid: int) -> bytes:
    mac = bytes((0x02, 0xBE, (n >> 16) & 0xFF, (n >> 8) & 0xFF, n & 0xFF, 0x01))
    return build(DhcpPacket(op=1, xid=xid, chaddr=mac, flags=FLAG_BROADCAST, options=(
        (53, b"\x01"), (60, b"PXEClient:Arch:00000:UNDI:002001"), (93, b"\x00\x00"),
        (55, bytes((1, 3, 6, 15, 43, 60, 66, 67))))))


@dataclass(frozen=True)
class Result:
    name: str
    sent: int
    answered: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float


def measure(name: str, sock: socket.socket, count: int, rate: float, limit: float, base_xid: int) -> Result:
    sent_at: dict[int, float] = {}
    latency: dict[int, float] = {}
    done = threading.Event()

    def receive() -> None:
        sock.settimeout(0.2)
        while not done.is_set():
            try:
                data, _ = sock.recvfrom(4096)
            except socket.timeout:
                continue
            now = time.perf_counter()
            try:
                p = parse(data)
            except Exception:
                continue
            t = sent_at.get(p.xid)
            if p.op == 2 and t is not None and p.xid not in latency:
                latency[p.xid] = now - t

    rx = threading.Thread(target=receive, daemon=True)
    rx.start()
    packets = [discover(base_xid + i, base_xid + i) for i in range(count)]
    start = time.perf_counter()
    for i, packet in enumerate(packets):
        due = start + i / rate
        while (wait := due - time.perf_counter()) > 0:
            time.sleep(wait)
        if time.perf_counter() - start > limit:
            break
        sent_at[base_xid + i] = time.perf_counter()
        sock.sendto(packet, ("255.255.255.255", 67))
    # Give stragglers a second, bounded by the limit.
    end = min(time.perf_counter() + 1.0, start + limit + 1.0)
    while time.perf_counter() < end and len(latency) < len(sent_at):
        time.sleep(0.05)
    done.set()
    rx.join()
    elapsed = max(max((sent_at[x] + latency[x] for x in latency), default=start) - start, 1e-9)
    ms = sorted(v * 1000 for v in latency.values()) or [float("nan")]

    def pct(q: float) -> float:
        return ms[min(len(ms) - 1, int(q * len(ms)))]

    return Result(name, len(sent_at), len(latency), elapsed, pct(0.50), pct(0.99), ms[-1])


def wait_ready(sock: socket.socket, xid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.sendto(discover(0xFFFFFF - (xid & 0xFFFF), xid), ("255.255.255.255", 67))
        sock.settimeout(0.5)
        try:
            while True:
                data, _ = sock.recvfrom(4096)
                if parse(data).xid == xid:
                    return
        except socket.timeout:
            xid += 1
            continue
    raise SystemExit("server did not answer within 10 s")


def run_server(argv: list[str], ns: str, sock: socket.socket, tag: int, args) -> Result:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(sock, tag)
        return measure(argv[0].rsplit("/", 1)[-1], sock, args.clients, args.rate, args.limit, tag << 16)
    finally:
        proc.terminate()  # our own child, by PID
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--limit", type=float, default=30.0, help="seconds per server")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    args.clients = min(args.clients, 3000)
    results = []
    with namespaces() as (ns_s, ns_c, if_s, if_c), tempfile.TemporaryDirectory() as tmp:
        with in_netns(ns_c):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, if_c.encode())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind(("0.0.0.0", 68))
        ours = OUR_SERVER.format(server=SERVER_IP, iface=if_s, first=POOL[0], last=POOL[1], db=f"{tmp}/p.db")
        results.append(run_server([sys.executable, "-c", ours], ns_s, sock, 0x10, args))
        dnsmasq = ["/usr/sbin/dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", f"--interface={if_s}",
                   "--bind-interfaces", f"--dhcp-range={POOL[0]},{POOL[1]},1h", f"--dhcp-leasefile={tmp}/leases",
                   f"--dhcp-boot=undionly.kpxe,,{SERVER_IP}", "--no-ping", "--dhcp-lease-max=10000", "--quiet-dhcp"]
        results.append(run_server(dnsmasq, ns_s, sock, 0x20, args))
        sock.close()
    print(f"\n{args.clients} DISCOVERs from distinct MACs at {args.rate:.0f}/s (PXE BIOS client options)\n")
    print("| server | sent | offers | offers/s | p50 ms | p99 ms | max ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        name = "provisioner" if r.name.startswith("python") else r.name
        print(f"| {name} | {r.sent} | {r.answered} | {r.answered / r.seconds:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.max_ms:.2f} |")


if __name__ == "__main__":
    main()
