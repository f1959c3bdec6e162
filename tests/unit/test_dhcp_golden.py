"""Golden packets captured from real clients and servers (see
tests/golden/dhcp/README.md): decode them, check the fields that matter,
round-trip them, and check what our responder answers to each client."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from provisioner.db.connection import open_db
from provisioner.db.leases import LeaseStore
from provisioner.net.dhcp import options as o
from provisioner.net.dhcp.codec import DhcpPacket, build, parse
from provisioner.net.dhcp.config import DhcpConfig
from provisioner.net.dhcp.responder import respond

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "dhcp"
ALL = sorted(p.stem for p in GOLDEN.glob("*.hex"))


def load(name: str) -> DhcpPacket:
    return parse(bytes.fromhex((GOLDEN / f"{name}.hex").read_text().replace("\n", "")))


def test_the_golden_set_is_there():
    assert len(ALL) >= 20
    for prefix in ("udhcpc-discover", "ipxe-bios-discover", "ipxe-efi-discover", "edk2-pxe-discover",
                   "edk2-http-discover", "dnsmasq-to-ipxe-bios-offer"):
        assert any(n.startswith(prefix) for n in ALL), prefix


@pytest.mark.parametrize("name", ALL)
def test_round_trip(name):
    p = load(name)
    assert parse(build(p)) == p


# name: (mac, message type, vendor class prefix, arches, iPXE, GUID, NDI)
CLIENTS = {
    "udhcpc-discover-1": ("52:54:00:aa:00:01", o.DISCOVER, "busybox-golden", (), False, None, None),
    "udhcpc-request-1": ("52:54:00:aa:00:01", o.REQUEST, "busybox-golden", (), False, None, None),
    "ipxe-bios-discover-1": ("52:54:00:bb:00:02", o.DISCOVER, "PXEClient:Arch:00000:UNDI:002001", (0,), True, bytes(17), (1, 2, 1)),
    "ipxe-bios-request-1": ("52:54:00:bb:00:02", o.REQUEST, "PXEClient:Arch:00000", (0,), True, bytes(17), (1, 2, 1)),
    "ipxe-efi-discover-1": ("52:54:00:cc:00:03", o.DISCOVER, "PXEClient:Arch:00007:UNDI:003010", (7,), True, bytes(17), (1, 3, 10)),
    "edk2-pxe-discover-1": ("52:54:00:cc:00:03", o.DISCOVER, "PXEClient:Arch:00007:UNDI:003001", (7,), False, bytes(17), (1, 3, 1)),
    "edk2-pxe-request-1": ("52:54:00:cc:00:03", o.REQUEST, "PXEClient:Arch:00007", (7,), False, bytes(17), (1, 3, 1)),
    "edk2-http-discover-1": ("52:54:00:cc:00:03", o.DISCOVER, "HTTPClient:Arch:00016:UNDI:003001", (16,), False, bytes(17), (1, 3, 1)),
}


@pytest.mark.parametrize("name", CLIENTS)
def test_client_packet_fields(name):
    mac, kind, vendor, arches, ipxe, guid, ndi = CLIENTS[name]
    p = load(name)
    assert p.op == 1 and p.htype == 1 and p.hlen == 6 and p.mac == mac
    assert o.message_type(p) == kind
    assert o.vendor_class(p).startswith(vendor)
    assert o.client_arches(p) == arches
    assert o.is_ipxe(p) == ipxe
    assert o.client_guid(p) == guid
    assert o.client_ndi(p) == ndi
    assert (o.max_message_size(p) or 576) >= 576


def test_ipxe_sends_its_feature_flags():
    p = load("ipxe-bios-discover-1")
    features = o.ipxe_options(p)
    assert features[0x13] == b"\x01"  # HTTP
    assert 0x14 not in features  # no HTTPS in Debian 12's iPXE (PXE-NOTES section 3)
    assert o.user_classes(p)[0] == "iPXE"


def test_edk2_sets_the_broadcast_flag():
    assert load("edk2-pxe-discover-1").broadcast
    assert not load("ipxe-bios-discover-1").broadcast


def test_requests_carry_server_id_and_address():
    p = load("ipxe-bios-request-1")
    assert o.server_id(p) == A("10.77.0.1") and o.requested_ip(p) == A("10.77.0.101")


def test_dnsmasq_replies_decode():
    offer = load("dnsmasq-to-ipxe-bios-offer-1")
    assert offer.op == 2 and o.message_type(offer) == o.OFFER
    assert offer.yiaddr == A("10.77.0.101") and offer.siaddr == A("10.77.0.1")
    assert o.server_id(offer) == A("10.77.0.1")
    assert offer.get(o.BOOTFILE) == b"undionly.kpxe\0"
    ack = load("dnsmasq-to-udhcpc-ack-1")
    assert o.message_type(ack) == o.ACK and ack.yiaddr == A("10.77.0.100")


# What we answer each real client with, as the full server of 10.77.0.0/24.
CONFIG = DhcpConfig(mode="full", server_ip=A("10.77.0.1"), subnet=IPv4Network("10.77.0.0/24"),
                    base_url="http://10.77.0.1:8080", pool_first=A("10.77.0.100"), pool_last=A("10.77.0.150"))
ANSWERS = {
    "udhcpc-discover-1": (b"", None, False),
    "ipxe-bios-discover-1": (b"http://10.77.0.1:8080/boot/ipxe?mac=52-54-00-bb-00-02", b"PXEClient", True),
    "ipxe-efi-discover-1": (b"http://10.77.0.1:8080/boot/ipxe?mac=52-54-00-cc-00-03", b"PXEClient", False),
    "edk2-pxe-discover-1": (b"snponly.efi", b"PXEClient", False),
    "edk2-http-discover-1": (b"http://10.77.0.1:8080/boot/ipxe.efi", b"HTTPClient", False),
}


@pytest.mark.parametrize("name", ANSWERS)
@pytest.mark.parametrize("mode", ["full", "proxy"])
def test_our_answer_to_real_clients(name, mode):
    file, vendor, has43 = ANSWERS[name]
    config = CONFIG if mode == "full" else replace(CONFIG, mode="proxy")
    store = LeaseStore(open_db(None), clock=lambda: 1e9)
    d = respond(load(name), config, store, 1e9)
    if mode == "proxy" and vendor is None:
        assert d.reply is None
        return
    r = d.reply
    assert r.file == file
    assert r.yiaddr == (A("10.77.0.100") if mode == "full" else A(0))
    assert r.get(60) == vendor
    assert (r.get(43) is not None) == has43
    assert (r.get(175) is not None) == (mode == "full" and "ipxe" in name)
    if name.startswith("edk2"):
        assert r.get(97) == bytes(17)
    assert parse(build(r)) == r


def test_the_ipxe_request_is_acked():
    store = LeaseStore(open_db(None), clock=lambda: 1e9)
    d = respond(load("ipxe-bios-request-1"), CONFIG, store, 1e9)
    assert o.message_type(d.reply) == o.ACK and d.reply.yiaddr == A("10.77.0.101")
