"""The DHCP server on real sockets, inside a pair of network namespaces made
(and always removed) here: "server" and "client" joined by a veth. The
client side is scapy (an independent encoder) on a plain UDP socket, and
busybox udhcpc as a real client. Nothing is sent outside the namespaces.

Needs root.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from contextlib import contextmanager
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

scapy_layers = pytest.importorskip("scapy.layers.dhcp")
from scapy.layers.dhcp import BOOTP, DHCP  # noqa: E402

from provisioner.db.connection import open_db  # noqa: E402
from provisioner.db.leases import list_leases  # noqa: E402
from provisioner.lab.netns import in_netns
from provisioner.net.dhcp import codec  # noqa: E402
from provisioner.net.dhcp.config import DhcpConfig  # noqa: E402
from provisioner.net.dhcp.server import DhcpServer  # noqa: E402

SERVER_IP = "10.31.0.1"
CLIENT_IP = "10.31.0.2"


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=20)


class Net:
    def __init__(self) -> None:
        sfx = secrets.token_hex(3)
        self.server_ns, self.client_ns = f"dt-s-{sfx}", f"dt-c-{sfx}"
        self.server_if, self.client_if = f"dvs{sfx}", f"dvc{sfx}"

    def create(self) -> None:
        sh("ip", "netns", "add", self.server_ns)
        sh("ip", "netns", "add", self.client_ns)
        sh("ip", "-n", self.server_ns, "link", "add", self.server_if, "type", "veth",
           "peer", "name", self.client_if, "netns", self.client_ns)
        sh("ip", "-n", self.server_ns, "addr", "add", f"{SERVER_IP}/24", "dev", self.server_if)
        sh("ip", "-n", self.server_ns, "link", "set", self.server_if, "up")
        sh("ip", "-n", self.client_ns, "addr", "add", f"{CLIENT_IP}/24", "dev", self.client_if)
        sh("ip", "-n", self.client_ns, "link", "set", self.client_if, "up")
        sh("ip", "-n", self.client_ns, "link", "set", "lo", "up")

    def destroy(self) -> None:
        for ns in (self.client_ns, self.server_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


@pytest.fixture
def net():
    n = Net()
    try:
        n.create()
        yield n
    finally:
        n.destroy()


def config(net: Net, mode: str = "full") -> DhcpConfig:
    return DhcpConfig(
        mode=mode, server_ip=A(SERVER_IP), subnet=IPv4Network("10.31.0.0/24"), base_url=f"http://{SERVER_IP}:8080",
        interface=net.server_if, pool_first=A("10.31.0.100"), pool_last=A("10.31.0.199"), lease_seconds=600,
        router=A(SERVER_IP),
    )


@contextmanager
def running(net: Net, db_path: Path, mode: str = "full"):
    events: list[tuple] = []
    server = DhcpServer(config(net, mode), db_path, on_event=lambda *e: events.append(e))
    with in_netns(net.server_ns):
        server.bind()  # the sockets live in the server namespace
    server.start()
    try:
        yield server, events
    finally:
        server.shutdown()


class Client:
    def __init__(self, net: Net, port: int = 68):
        with in_netns(net.client_ns):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, net.client_if.encode())
            s.bind(("0.0.0.0", port))
        self.sock = s

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes, to: tuple[str, int] = ("255.255.255.255", 67)) -> None:
        self.sock.sendto(data, to)

    def receive(self, xid: int, timeout: float = 2.0) -> tuple[codec.DhcpPacket, tuple[str, int]] | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, src = self.sock.recvfrom(4096)
            except socket.timeout:
                return None
            p = codec.parse(data)
            if p.xid == xid and p.op == 2:
                # Cross-check our decoder with scapy's on every reply.
                assert BOOTP(data).xid == xid
                return p, src
        return None


@pytest.fixture
def client(net):
    c = Client(net)
    yield c
    c.close()


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def dhcp(mac: str, xid: int, options: list, ciaddr: str = "0.0.0.0", giaddr: str = "0.0.0.0") -> bytes:
    return bytes(BOOTP(op=1, chaddr=mac_bytes(mac), xid=xid, ciaddr=ciaddr, giaddr=giaddr, flags=0x8000, hops=giaddr != "0.0.0.0")
                 / DHCP(options=[*options, "end"]))


PXE_BIOS = [("vendor_class_id", b"PXEClient:Arch:00000:UNDI:002001"), ("pxe_client_architecture", b"\x00\x00"),
            ("pxe_client_machine_identifier", b"\x00" + bytes(range(16)))]


def opt(p: codec.DhcpPacket, code: int) -> bytes | None:
    return p.get(code)


def dora(client: Client, mac: str, xid: int, extra: list = ()) -> A:
    client.send(dhcp(mac, xid, [("message-type", "discover"), *extra]))
    got = client.receive(xid)
    assert got is not None, "no OFFER"
    offer, src = got
    assert src[0] == SERVER_IP and opt(offer, 53) == b"\x02"
    ip = offer.yiaddr
    client.send(dhcp(mac, xid, [("message-type", "request"), ("server_id", SERVER_IP), ("requested_addr", str(ip)), *extra]))
    got = client.receive(xid)
    assert got is not None, "no ACK"
    assert opt(got[0], 53) == b"\x05" and got[0].yiaddr == ip
    return ip


def test_discover_offer_request_ack(net, client, tmp_path):
    with running(net, tmp_path / "p.db") as (server, events):
        ip = dora(client, "52:54:00:00:10:01", 0x1001, PXE_BIOS)
        assert ip == A("10.31.0.100")
    leases = list_leases(open_db(tmp_path / "p.db"))
    assert [(x.mac, x.ip) for x in leases] == [("52:54:00:00:10:01", ip)]
    kinds = [e[0] for e in events]
    assert kinds == ["dhcp.offer", "dhcp.ack"]


def test_pxe_offer_carries_the_boot_file(net, client, tmp_path):
    with running(net, tmp_path / "p.db"):
        client.send(dhcp("52:54:00:00:10:02", 0x1002, [("message-type", "discover"), *PXE_BIOS]))
        offer, _ = client.receive(0x1002)
        assert offer.file == b"undionly.kpxe" and offer.siaddr == A(SERVER_IP)
        assert opt(offer, 60) == b"PXEClient" and opt(offer, 43) == b"\x06\x01\x08\xff"


def test_hostile_barrage_then_a_good_discover(net, client, tmp_path):
    import random

    rng = random.Random(67)
    good = dhcp("52:54:00:00:10:03", 0x1003, [("message-type", "discover"), *PXE_BIOS])
    junk = [b"", b"\x01", good[:200], good[:239], b"\xff" * 1400, bytes(300),
            good[:236] + b"\x00\x00\x00\x00" + good[240:],
            good[:240] + b"\x35\x01\x01\x3c\xff" + b"x" * 10,
            good[:240] + b"\x34\x01\x03\xff"]
    barrage = []
    for i in range(600):
        if i % 3 == 0:
            data = bytearray(good)
            for _ in range(rng.randint(1, 20)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            barrage.append(bytes(data))
        elif i % 3 == 1:
            barrage.append(rng.randbytes(rng.randrange(0, 1400)))
        else:
            barrage.append(junk[i % len(junk)])
    with running(net, tmp_path / "p.db") as (server, events):
        for i, packet in enumerate(barrage):
            client.send(packet)
            if i % 50 == 49:
                time.sleep(0.02)  # paced so the kernel queues, not the test, decide little
        # Like a real client, retransmit: a burst this size may overflow
        # the socket queue, which is not the loop dying.
        for _ in range(3):
            client.send(good)
            got = client.receive(0x1003, timeout=2)
            if got is not None:
                break
        assert got is not None and opt(got[0], 53) == b"\x02"
        assert server.stats["malformed"] >= 100
        assert server.stats["errors"] == 0
    malformed = [e for e in events if e[0] == "dhcp.malformed"]
    assert 0 < len(malformed) <= 10  # rate-limited


def test_renew_unicast_and_nak_for_a_foreign_address(net, client, tmp_path):
    with running(net, tmp_path / "p.db") as (server, events):
        ip = dora(client, "52:54:00:00:10:04", 0x1004)
        # A bound client has its address: the unicast ACK must find it by ARP.
        sh("ip", "-n", net.client_ns, "addr", "add", f"{ip}/24", "dev", net.client_if)
        client.send(dhcp("52:54:00:00:10:04", 0x1005, [("message-type", "request")], ciaddr=str(ip)), to=(SERVER_IP, 67))
        ack, _ = client.receive(0x1005)
        assert opt(ack, 53) == b"\x05" and ack.ciaddr == ip
        client.send(dhcp("52:54:00:00:10:04", 0x1006, [("message-type", "request"), ("requested_addr", "192.168.7.7")]))
        nak, _ = client.receive(0x1006)
        assert opt(nak, 53) == b"\x06"


def test_relayed_discover_is_answered_to_the_relay_port_67(net, tmp_path):
    relay = Client(net, port=67)  # plays the relay agent at CLIENT_IP
    try:
        with running(net, tmp_path / "p.db"):
            relay.send(dhcp("52:54:00:00:10:0b", 0x100D, [("message-type", "discover"), *PXE_BIOS], giaddr=CLIENT_IP),
                       to=(SERVER_IP, 67))
            offer, src = relay.receive(0x100D)
            assert src == (SERVER_IP, 67) and offer.giaddr == A(CLIENT_IP) and offer.yiaddr == A("10.31.0.100")
    finally:
        relay.close()


def test_a_failing_event_callback_does_not_stop_replies(net, client, tmp_path):
    def broken(*event):
        raise RuntimeError("the event sink is down")

    server = DhcpServer(config(net), tmp_path / "p.db", on_event=broken)
    with in_netns(net.server_ns):
        server.bind()
    server.start()
    try:
        dora(client, "52:54:00:00:10:0c", 0x100E)
        dora(client, "52:54:00:00:10:0d", 0x100F)
    finally:
        server.shutdown()


def test_leases_survive_a_restart(net, client, tmp_path):
    db = tmp_path / "p.db"
    with running(net, db):
        ip = dora(client, "52:54:00:00:10:07", 0x1007)
    with running(net, db) as (server, events):
        # INIT-REBOOT with the old address is confirmed...
        client.send(dhcp("52:54:00:00:10:07", 0x1008, [("message-type", "request"), ("requested_addr", str(ip))]))
        ack, _ = client.receive(0x1008)
        assert opt(ack, 53) == b"\x05" and ack.yiaddr == ip
        # ...and nobody else is offered it.
        client.send(dhcp("52:54:00:00:10:08", 0x1009, [("message-type", "discover")]))
        offer, _ = client.receive(0x1009)
        assert offer.yiaddr != ip


def test_proxy_mode_on_67_and_4011(net, client, tmp_path):
    with running(net, tmp_path / "p.db", mode="proxy") as (server, events):
        # A plain DHCP client is the site server's business: silence.
        client.send(dhcp("52:54:00:00:10:09", 0x100A, [("message-type", "discover")]))
        assert client.receive(0x100A, timeout=1.0) is None
        uefi = [("vendor_class_id", b"PXEClient:Arch:00007:UNDI:003016"), ("pxe_client_architecture", b"\x00\x07")]
        client.send(dhcp("52:54:00:00:10:0a", 0x100B, [("message-type", "discover"), *uefi]))
        offer, src = client.receive(0x100B)
        assert offer.yiaddr == A(0) and offer.file == b"snponly.efi" and opt(offer, 43) is None
        assert opt(offer, 51) is None
        # The UEFI client then asks the boot server on 4011, from its address.
        pxe = Client(net, port=4011)
        try:
            pxe.send(dhcp("52:54:00:00:10:0a", 0x100C, [("message-type", "request"), *uefi], ciaddr=CLIENT_IP),
                     to=(SERVER_IP, 4011))
            ack, src = pxe.receive(0x100C)
            assert src == (SERVER_IP, 4011)
            assert opt(ack, 53) == b"\x05" and ack.file == b"snponly.efi" and opt(ack, 60) == b"PXEClient"
        finally:
            pxe.close()
    assert not list_leases(open_db(tmp_path / "p.db"))


def test_busybox_udhcpc_gets_a_lease(net, tmp_path):
    with running(net, tmp_path / "p.db") as (server, events):
        sh("ip", "-n", net.client_ns, "addr", "flush", "dev", net.client_if)
        out = subprocess.run(
            ["ip", "netns", "exec", net.client_ns, "busybox", "udhcpc", "-i", net.client_if, "-n", "-q",
             "-t", "3", "-T", "1", "-s", "/bin/true"],
            capture_output=True, text=True, timeout=20,
        )
        assert out.returncode == 0, out.stderr
        assert "lease of 10.31.0.100 obtained from 10.31.0.1" in out.stderr + out.stdout
    assert [x.ip for x in list_leases(open_db(tmp_path / "p.db"))] == [A("10.31.0.100")]
