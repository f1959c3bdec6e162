"""DHCP rate and latency, our server against dnsmasq: DISCOVER -> OFFER and REQUEST -> ACK.

Measures DISCOVER -> OFFER alone or the full DISCOVER -> OFFER -> REQUEST ->
ACK exchange.

Run as root from the repository root:

    .venv/bin/python bench/dhcp_bench.py [--mode dora|offer] [--clients 2000] [--rate 200] [--limit 30]

Everything runs inside two network namespaces made here (server and client
joined by a veth) and deleted on exit, whatever happens (also on Ctrl-C or
SIGTERM). Each server runs in turn as its own process in the server
namespace, on a fresh lease store; the client sends DISCOVERs from distinct
MACs at a fixed rate from the client namespace and times each OFFER by xid.

--mode offer stops there. --mode dora (the default) also answers every OFFER
at once with a REQUEST in the SELECTING state (option 54 = the offer's server
id, option 50 = its yiaddr, same xid and MAC) and times REQUEST -> ACK
separately: that is the path where the server commits the lease (our SQLite
leases table, dnsmasq's lease file) before replying. After each server has
been stopped, its lease store is read back and the leases matching the ACKs
are counted.

Bounded: at most --clients (capped at 3000) clients and --limit seconds of
sending per server, plus at most 2 s for late replies. Only processes started
here are stopped, by PID.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from provisioner.lab.netns import in_netns
from provisioner.net.dhcp.codec import (
    FLAG_BROADCAST,
    DhcpPacket,
    MalformedPacket,
    build,
    parse,
)

SERVER_IP = "10.40.0.1"
CLIENT_IP = "10.40.0.2"
POOL = ("10.40.1.0", "10.40.15.254")
MAX_CLIENTS = 3000  # the pool holds 3839 addresses; every run starts on a fresh store
LATE_SECONDS = 2.0  # wait at most this long for late replies after the last send
BROADCAST = ("255.255.255.255", 67)
OFFER, ACK, NAK = 2, 5, 6
PXE_OPTIONS = ((60, b"PXEClient:Arch:00000:UNDI:002001"), (93, b"\x00\x00"), (55, bytes((1, 3, 6, 15, 43, 60, 66, 67))))

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
        # The veth is made inside the server namespace with its peer created
        # directly in the client namespace: nothing ever exists in ours.
        sh("ip", "-n", ns_s, "link", "add", if_s, "type", "veth", "peer", "name", if_c, "netns", ns_c)
        sh("ip", "-n", ns_s, "addr", "add", f"{SERVER_IP}/20", "dev", if_s)
        sh("ip", "-n", ns_c, "addr", "add", f"{CLIENT_IP}/20", "dev", if_c)
        sh("ip", "-n", ns_s, "link", "set", if_s, "up")
        sh("ip", "-n", ns_c, "link", "set", if_c, "up")
        yield ns_s, ns_c, if_s, if_c
    finally:
        for ns in (ns_c, ns_s):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20, check=False)


def mac_of(n: int) -> bytes:
    return bytes((0x02, 0xBE, (n >> 16) & 0xFF, (n >> 8) & 0xFF, n & 0xFF, 0x01))


def discover(n: int, xid: int) -> bytes:
    return build(DhcpPacket(op=1, xid=xid, chaddr=mac_of(n), flags=FLAG_BROADCAST,
                            options=((53, b"\x01"), *PXE_OPTIONS)))


def request(mac: bytes, xid: int, ip: IPv4Address, server_id: bytes) -> bytes:
    """A SELECTING-state REQUEST for an offer (RFC 2131 4.3.2): ciaddr 0,
    option 50 = the offered address, option 54 = the offering server."""
    return build(DhcpPacket(op=1, xid=xid, chaddr=mac, flags=FLAG_BROADCAST, options=(
        (53, b"\x03"), (50, ip.packed), (54, server_id), *PXE_OPTIONS)))


@dataclass(frozen=True)
class Latency:
    count: int
    per_second: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    early_p50_ms: float  # p50 of the first tenth of the clients (by send order) ...
    late_p50_ms: float  # ... and of the last tenth: does the cost grow with the store?


def _p(ms: list[float], q: float) -> float:
    return ms[min(len(ms) - 1, int(q * len(ms)))] if ms else float("nan")


def summarise(values: list[float], first: float, last: float) -> Latency:
    """`values` in send order."""
    tenth = max(1, len(values) // 10)
    ms = sorted(v * 1000 for v in values) or [float("nan")]
    early = sorted(v * 1000 for v in values[:tenth])
    late = sorted(v * 1000 for v in values[-tenth:])
    return Latency(len(values), len(values) / max(last - first, 1e-9), _p(ms, 0.50), _p(ms, 0.99), ms[-1],
                   _p(early, 0.50), _p(late, 0.50))


@dataclass(frozen=True)
class Result:
    name: str
    sent: int  # DISCOVERs
    offer: Latency  # DISCOVER -> OFFER
    requests: int = 0
    ack: Latency | None = None  # REQUEST -> ACK
    full: Latency | None = None  # DISCOVER -> ACK
    naks: int = 0
    wrong: int = 0  # ACKs whose yiaddr is not the offered address
    stored: int = -1  # leases in the server's store afterwards
    matching: int = -1  # of those, the (MAC, address) pairs that were ACKed
    cpu_s: float = float("nan")

    @property
    def missing_acks(self) -> int:
        return self.requests - (self.ack.count if self.ack else 0) - self.naks


def measure(name: str, sock: socket.socket, count: int, rate: float, limit: float, base_xid: int,
            dora: bool) -> tuple[Result, dict[str, str]]:
    """Returns the result and the ACKed leases (MAC -> address)."""
    disc_at: dict[int, float] = {}
    offer_at: dict[int, float] = {}
    req_at: dict[int, float] = {}
    ack_at: dict[int, float] = {}
    offered: dict[int, IPv4Address] = {}
    acked: dict[str, str] = {}
    naks: set[int] = set()
    wrong: set[int] = set()
    macs = {base_xid + i: mac_of(base_xid + i) for i in range(count)}
    done = threading.Event()

    def receive() -> None:
        sock.settimeout(0.2)
        while not done.is_set():
            try:
                data, _ = sock.recvfrom(4096)
            except TimeoutError:
                continue
            now = time.perf_counter()
            try:
                p = parse(data)
            except MalformedPacket:
                continue  # not a DHCP reply; nothing to time
            xid = p.xid
            if p.op != 2 or xid not in disc_at:
                continue
            kind = (p.get(53) or b"\0")[0]
            if kind == OFFER and xid not in offer_at:
                offer_at[xid] = now
                server_id = p.get(54)
                if dora and server_id is not None and len(server_id) == 4:
                    offered[xid] = p.yiaddr
                    packet = request(macs[xid], xid, p.yiaddr, server_id)
                    req_at[xid] = time.perf_counter()
                    sock.sendto(packet, BROADCAST)
            elif kind == ACK and xid in req_at and xid not in ack_at:
                ack_at[xid] = now
                if p.yiaddr != offered[xid]:
                    wrong.add(xid)
                acked[macs[xid].hex(":")] = str(p.yiaddr)
            elif kind == NAK and xid in req_at:
                naks.add(xid)

    def complete() -> bool:
        if len(offer_at) < len(disc_at):
            return False
        return not dora or len(ack_at) + len(naks) >= len(req_at)

    rx = threading.Thread(target=receive, daemon=True)
    rx.start()
    try:
        packets = [discover(base_xid + i, base_xid + i) for i in range(count)]
        start = time.perf_counter()
        for i, packet in enumerate(packets):
            due = start + i / rate
            while (wait := due - time.perf_counter()) > 0:
                time.sleep(wait)
            if time.perf_counter() - start > limit:
                break
            disc_at[base_xid + i] = time.perf_counter()
            sock.sendto(packet, BROADCAST)
        # Late replies (and REQUESTs still to come from late OFFERs): bounded.
        end = time.perf_counter() + LATE_SECONDS
        while time.perf_counter() < end and not complete():
            time.sleep(0.05)
    finally:
        done.set()
        rx.join(2)
    offers = summarise([offer_at[x] - disc_at[x] for x in sorted(offer_at)], start, max(offer_at.values(), default=start))
    result = Result(name, len(disc_at), offers)
    if dora:
        acks = sorted(x for x in ack_at if x in req_at)  # xids grow in send order
        result = Result(
            name, len(disc_at), offers, requests=len(req_at),
            ack=summarise([ack_at[x] - req_at[x] for x in acks], start, max(ack_at.values(), default=start)),
            full=summarise([ack_at[x] - disc_at[x] for x in acks], start, max(ack_at.values(), default=start)),
            naks=len(naks), wrong=len(wrong))
    return result, acked


def wait_ready(sock: socket.socket, xid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.sendto(discover(0xFFFFFF - (xid & 0xFFFF), xid), BROADCAST)
        sock.settimeout(0.5)
        try:
            while True:
                data, _ = sock.recvfrom(4096)
                if parse(data).xid == xid:
                    return
        except TimeoutError:
            xid += 1
            continue
    raise SystemExit("server did not answer within 10 s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (ours, by PID) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_server(name: str, argv: list[str], ns: str, sock: socket.socket, tag: int, args,
               dora: bool) -> tuple[Result, dict[str, str]]:
    # `ip netns exec` execs the command itself, so proc.pid is the server's PID.
    proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(sock, tag)
        cpu0 = cpu_seconds(proc.pid)
        result, acked = measure(name, sock, args.clients, args.rate, args.limit, tag << 16, dora)
        cpu = cpu_seconds(proc.pid) - cpu0
        return Result(**{**result.__dict__, "cpu_s": cpu}), acked
    finally:
        proc.terminate()  # our own child, by PID
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def sqlite_leases(path: str) -> dict[str, str]:
    """Active leases in our store (read after the server has stopped: what
    it committed, WAL included)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT mac, ip FROM leases WHERE expires > ?", [time.time()]).fetchall()
    finally:
        con.close()
    return dict(rows)


def dnsmasq_leases(path: str) -> dict[str, str]:
    """dnsmasq's lease file: `expiry mac ip hostname client-id` a line."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return {}
    return {f[1]: f[2] for f in (line.split() for line in lines) if len(f) >= 3}


def with_store(result: Result, acked: dict[str, str], stored: dict[str, str]) -> Result:
    matching = sum(1 for mac, ip in acked.items() if stored.get(mac) == ip)
    return Result(**{**result.__dict__, "stored": len(stored), "matching": matching})


def fmt(v: float) -> str:
    return f"{v:.2f}"


def print_tables(results: list[Result], args) -> None:
    what = "full exchange" if args.mode == "dora" else "DISCOVER -> OFFER only"
    print(f"\n{args.clients} clients from distinct MACs at {args.rate:.0f}/s, {what} (PXE BIOS client options)\n")
    print("DISCOVER -> OFFER\n")
    print("| server | sent | offers | offers/s | p50 ms | p99 ms | max ms | p50 first / last 10 % |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        o = r.offer
        print(f"| {r.name} | {r.sent} | {o.count} | {o.per_second:.0f} | {fmt(o.p50_ms)} | {fmt(o.p99_ms)} | {fmt(o.max_ms)} "
              f"| {fmt(o.early_p50_ms)} / {fmt(o.late_p50_ms)} |")
    if args.mode != "dora":
        return
    print("\nREQUEST -> ACK (SELECTING, options 54 and 50 from the offer; the server commits the lease, then ACKs)\n")
    print("| server | requests | acks | naks | missing | acks/s | p50 ms | p99 ms | max ms | p50 first / last 10 % "
          "| DISCOVER->ACK p50 / p99 ms | leases stored (match ACKs) | server CPU s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        a, f = r.ack, r.full
        assert a is not None and f is not None
        wrong = f" ({r.wrong} other address)" if r.wrong else ""
        print(f"| {r.name} | {r.requests} | {a.count}{wrong} | {r.naks} | {r.missing_acks} | {a.per_second:.0f} "
              f"| {fmt(a.p50_ms)} | {fmt(a.p99_ms)} | {fmt(a.max_ms)} | {fmt(a.early_p50_ms)} / {fmt(a.late_p50_ms)} "
              f"| {fmt(f.p50_ms)} / {fmt(f.p99_ms)} "
              f"| {r.stored} ({r.matching}) | {r.cpu_s:.2f} |")


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every finally


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("dora", "offer"), default="dora",
                    help="dora: DISCOVER->OFFER and REQUEST->ACK (default); offer: DISCOVER->OFFER only")
    ap.add_argument("--clients", type=int, default=2000, help=f"new clients per server (at most {MAX_CLIENTS})")
    ap.add_argument("--rate", type=float, default=200.0, help="new clients (DISCOVERs) a second")
    ap.add_argument("--limit", type=float, default=30.0, help="seconds of sending per server")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    args.clients = max(1, min(args.clients, MAX_CLIENTS))
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    dora = args.mode == "dora"
    results = []
    with namespaces() as (ns_s, ns_c, if_s, if_c), tempfile.TemporaryDirectory() as tmp:
        with in_netns(ns_c):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, if_c.encode())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind(("0.0.0.0", 68))
            db = f"{tmp}/p.db"
            ours = OUR_SERVER.format(server=SERVER_IP, iface=if_s, first=POOL[0], last=POOL[1], db=db)
            result, acked = run_server("provisioner", [sys.executable, "-c", ours], ns_s, sock, 0x10, args, dora)
            results.append(with_store(result, acked, sqlite_leases(db)) if dora else result)
            leasefile = f"{tmp}/leases"
            dnsmasq = ["/usr/sbin/dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0", f"--interface={if_s}",
                       "--bind-interfaces", f"--dhcp-range={POOL[0]},{POOL[1]},1h", f"--dhcp-leasefile={leasefile}",
                       f"--dhcp-boot=undionly.kpxe,,{SERVER_IP}", "--no-ping", "--dhcp-lease-max=10000",
                       "--quiet-dhcp"]
            result, acked = run_server("dnsmasq", dnsmasq, ns_s, sock, 0x20, args, dora)
            results.append(with_store(result, acked, dnsmasq_leases(leasefile)) if dora else result)
        finally:
            sock.close()
    print_tables(results, args)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as exc:
        # The namespaces, servers and temporary files are gone by now.
        print(f"dhcp_bench: interrupted ({exc or 'Ctrl-C'}); cleaned up", file=sys.stderr)
        sys.exit(130)
