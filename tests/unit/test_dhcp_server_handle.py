"""The server's per-packet path without sockets (nothing is bound here):
effects reach the store before the reply would be sent, events are queued."""

from __future__ import annotations

from ipaddress import IPv4Address as A
from ipaddress import IPv4Network

import pytest

from provisioner.db.connection import open_db
from provisioner.net.dhcp.codec import DhcpPacket, MalformedPacket, build
from provisioner.net.dhcp.config import DhcpConfig
from provisioner.net.dhcp.server import DhcpServer

CONFIG = DhcpConfig(mode="full", server_ip=A("10.6.0.1"), subnet=IPv4Network("10.6.0.0/24"),
                    base_url="http://10.6.0.1:8080", pool_first=A("10.6.0.10"), pool_last=A("10.6.0.20"))
MAC = bytes.fromhex("525400000001")


def packet(*opts) -> bytes:
    return build(DhcpPacket(op=1, xid=5, chaddr=MAC, options=opts))


@pytest.fixture
def server():
    s = DhcpServer(CONFIG, open_db(None), clock=lambda: 1e9)
    yield s
    s.shutdown()


def test_discover_then_request(server):
    d = server.handle(packet((53, b"\x01")), 67, ("0.0.0.0", 68))
    assert d.event == "dhcp.offer" and server.leases.current("52:54:00:00:00:01", 1e9) == A("10.6.0.10")
    d = server.handle(packet((53, b"\x03"), (54, A("10.6.0.1").packed), (50, A("10.6.0.10").packed)), 67, ("0.0.0.0", 68))
    assert d.event == "dhcp.ack"
    assert server.leases.lookup_mac("52:54:00:00:00:01").ip == A("10.6.0.10")
    queued = [server._events.get_nowait()[0] for _ in range(2)]
    assert queued == ["dhcp.offer", "dhcp.ack"]


def test_malformed_raises_for_the_loop_to_count(server):
    with pytest.raises(MalformedPacket):
        server.handle(b"\x01" * 100, 67, ("0.0.0.0", 68))


def test_shutdown_twice_and_before_start_is_harmless(server):
    server.shutdown()
    server.shutdown()
    assert not server._socks
