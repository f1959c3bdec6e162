"""Responder decisions keyed by scenario name. The lease view is the real
LeaseStore on an in-memory database (a fake store would only re-implement it)."""

from __future__ import annotations

import struct
from dataclasses import replace
from ipaddress import IPv4Address as A
from ipaddress import IPv4Network

import pytest

from provisioner.db.connection import open_db
from provisioner.db.leases import LeaseStore
from provisioner.net.dhcp import options as o
from provisioner.net.dhcp.codec import (
    FLAG_BROADCAST,
    DhcpPacket,
    MalformedPacket,
    build,
    parse,
)
from provisioner.net.dhcp.config import DhcpConfig
from provisioner.net.dhcp.responder import (
    BROADCAST,
    Destination,
    Forget,
    Offer,
    respond,
)
from provisioner.net.dhcp.server import apply_effect

NOW = 1_700_000_000.0
SERVER = A("10.20.0.1")
OTHER_SERVER = A("10.20.0.254")
BASE = "http://10.20.0.1:8080"
MAC = "52:54:00:12:34:56"
GUID = b"\x00" + bytes(range(16))

FULL = DhcpConfig(mode="full", server_ip=SERVER, subnet=IPv4Network("10.20.0.0/24"), base_url=BASE,
                  pool_first=A("10.20.0.100"), pool_last=A("10.20.0.103"), lease_seconds=3600,
                  router=A("10.20.0.1"), dns=(A("10.20.0.2"), A("10.20.0.3")), domain="lab.example")
PROXY = DhcpConfig(mode="proxy", server_ip=SERVER, subnet=IPv4Network("10.20.0.0/24"), base_url=BASE)

BIOS_PXE = ((60, b"PXEClient:Arch:00000:UNDI:002001"), (93, b"\x00\x00"), (94, b"\x01\x02\x01"), (97, GUID))
UEFI_PXE = ((60, b"PXEClient:Arch:00007:UNDI:003016"), (93, b"\x00\x07"), (94, b"\x01\x03\x10"), (97, GUID))
IPXE = ((60, b"PXEClient:Arch:00000:UNDI:002001"), (77, b"iPXE"), (93, b"\x00\x00"), (175, b"\x13\x01\x01"))
HTTP = ((60, b"HTTPClient:Arch:00016:UNDI:003016"), (93, b"\x00\x10"), (97, GUID))


def req(kind: int, *opts: tuple[int, bytes], mac: str = MAC, **fields) -> DhcpPacket:
    p = DhcpPacket(op=1, xid=0xC0FFEE, chaddr=bytes.fromhex(mac.replace(":", "")),
                   options=((53, bytes((kind,))), *opts), **fields)
    # Everything the responder sees went through the wire format.
    return parse(build(p))


def ip_opt(code: int, ip: str) -> tuple[int, bytes]:
    return (code, A(ip).packed)


@pytest.fixture
def store():
    db = open_db(None)
    return LeaseStore(db, clock=lambda: NOW)


def reserve(store: LeaseStore, mac: str, ip: str) -> None:
    store.db["hosts"].insert({"id": 1, "name": "node1", "state": "ready", "ip": ip, "created": NOW, "updated": NOW})
    store.db["host_macs"].insert({"mac": mac, "host_id": 1})


def opts(p: DhcpPacket) -> dict[int, bytes]:
    return dict(p.options)


# --- boot file selection, full mode ---

BOOT = {
    # scenario: (client options, file, siaddr set, option 60 echoed, has 43, has 175)
    "BIOS PXE": (BIOS_PXE, b"undionly.kpxe", b"PXEClient", True, False),
    "UEFI PXE arch 7": (UEFI_PXE, b"snponly.efi", b"PXEClient", False, False),
    "UEFI PXE arch 9": (((60, b"PXEClient:Arch:00009:UNDI:003016"), (93, b"\x00\x09")), b"snponly.efi", b"PXEClient", False, False),
    # Debian's snponly.efi is x86-64: a 32-bit UEFI cannot run it.
    "EFI IA32 arch 6 gets an address but no file": (((60, b"PXEClient:Arch:00006:UNDI:003016"), (93, b"\x00\x06")), b"", None, False, False),
    "arch only in option 60": (((60, b"PXEClient:Arch:00007:UNDI:003016"),), b"snponly.efi", b"PXEClient", False, False),
    "iPXE": (IPXE, f"{BASE}/boot/ipxe?mac=52-54-00-12-34-56".encode(), b"PXEClient", True, True),
    "HTTPClient": (HTTP, f"{BASE}/boot/ipxe.efi".encode(), b"HTTPClient", False, False),
    "ARM64 HTTPClient gets an address but no file": (((60, b"HTTPClient:Arch:00019:UNDI:003000"), (93, b"\x00\x13")), b"", None, False, False),
    "ARM64 PXE gets an address but no file": (((60, b"PXEClient:Arch:00011:UNDI:003016"), (93, b"\x00\x0b")), b"", None, False, False),
    "plain DHCP client": (((60, b"udhcp 1.35.0"), (12, b"box")), b"", None, False, False),
}


@pytest.mark.parametrize("scenario", BOOT)
def test_full_mode_offer(scenario, store):
    client_opts, file, vendor, has43, has175 = BOOT[scenario]
    d = respond(req(o.DISCOVER, *client_opts), FULL, store, NOW)
    r = d.reply
    assert d.event == "dhcp.offer"
    assert r.op == 2 and r.xid == 0xC0FFEE and r.yiaddr == A("10.20.0.100")
    assert r.file == file
    assert r.siaddr == (SERVER if file else A(0))
    got = opts(r)
    assert got[53] == bytes((o.OFFER,)) and got[54] == SERVER.packed
    assert got[1] == b"\xff\xff\xff\x00" and got[3] == SERVER.packed and got[6] == A("10.20.0.2").packed + A("10.20.0.3").packed
    assert got[15] == b"lab.example"
    assert struct.unpack("!III", got[51] + got[58] + got[59]) == (3600, 1800, 3150)
    assert got.get(60) == vendor
    assert (got.get(43) == b"\x06\x01\x08\xff") if has43 else 43 not in got
    assert (got.get(175) == b"\xb0\x01\x01") if has175 else 175 not in got
    if 97 in dict(client_opts):
        assert got[97] == dict(client_opts)[97]
    assert d.destination == Destination(BROADCAST, 68, True)
    assert d.effect == Offer(MAC, A("10.20.0.100"))
    assert len(build(r)) >= 300


def test_never_sends_a_boot_menu(store):
    for client_opts, *_ in BOOT.values():
        r = respond(req(o.DISCOVER, *client_opts), FULL, store, NOW).reply
        assert 9 not in o.encapsulated(opts(r).get(43))


# --- proxy mode ---

PROXY_BOOT = {
    "BIOS PXE": (BIOS_PXE, b"undionly.kpxe", True),
    "UEFI PXE arch 7": (UEFI_PXE, b"snponly.efi", False),
    "iPXE": (IPXE, f"{BASE}/boot/ipxe?mac=52-54-00-12-34-56".encode(), True),
    "HTTPClient": (HTTP, f"{BASE}/boot/ipxe.efi".encode(), False),
}


@pytest.mark.parametrize("scenario", PROXY_BOOT)
def test_proxy_offer_has_pxe_options_only(scenario, store):
    client_opts, file, has43 = PROXY_BOOT[scenario]
    d = respond(req(o.DISCOVER, *client_opts), PROXY, store, NOW)
    r = d.reply
    assert r.yiaddr == A(0) and r.file == file and r.siaddr == SERVER
    got = opts(r)
    assert set(got) <= {53, 54, 60, 97, 43}
    assert (43 in got) == has43
    assert d.effect is None
    assert d.destination == Destination(BROADCAST, 68, True)


def test_proxy_ignores_non_pxe_clients(store):
    assert respond(req(o.DISCOVER, (60, b"udhcp 1.35.0")), PROXY, store, NOW).reply is None
    assert respond(req(o.DISCOVER), PROXY, store, NOW).reply is None
    assert respond(req(o.REQUEST, ip_opt(54, str(SERVER)), ip_opt(50, "10.20.0.9")), PROXY, store, NOW).reply is None


def test_proxy_request_on_67_for_us_is_acked_unicast(store):
    d = respond(req(o.REQUEST, *IPXE, ip_opt(54, str(SERVER)), ciaddr=A("10.20.0.77")), PROXY, store, NOW)
    assert opts(d.reply)[53] == bytes((o.ACK,)) and d.reply.yiaddr == A(0)
    assert d.destination == Destination(A("10.20.0.77"), 68, False)


def test_proxy_request_for_the_site_server_is_ignored(store):
    d = respond(req(o.REQUEST, *BIOS_PXE, ip_opt(54, str(OTHER_SERVER)), ip_opt(50, "10.20.0.9")), PROXY, store, NOW)
    assert d.reply is None


@pytest.mark.parametrize("config", [PROXY, FULL], ids=["proxy", "full"])
def test_port_4011_request_is_acked_to_the_source(config, store):
    d = respond(req(o.REQUEST, *UEFI_PXE, ciaddr=A("10.20.0.50")), config, store, NOW,
                port=4011, source=("10.20.0.50", 4011))
    assert d.reply.file == b"snponly.efi" and d.reply.yiaddr == A(0) and d.reply.ciaddr == A("10.20.0.50")
    assert opts(d.reply)[60] == b"PXEClient" and opts(d.reply)[97] == GUID
    assert d.destination == Destination(A("10.20.0.50"), 4011, False)
    assert d.effect is None


def test_port_4011_ignores_non_pxe(store):
    d = respond(req(o.REQUEST, ciaddr=A("10.20.0.50")), PROXY, store, NOW, port=4011, source=("10.20.0.50", 68))
    assert d.reply is None


# --- relays and destinations ---


def test_relay_gets_the_reply_on_67(store):
    d = respond(req(o.DISCOVER, *BIOS_PXE, giaddr=A("10.20.0.254"), hops=1), FULL, store, NOW)
    assert d.destination == Destination(A("10.20.0.254"), 67, False)
    assert d.reply.giaddr == A("10.20.0.254")


def test_full_mode_stays_silent_for_relays_from_other_subnets(store):
    d = respond(req(o.DISCOVER, *BIOS_PXE, giaddr=A("10.99.0.1"), hops=1), FULL, store, NOW)
    assert d.reply is None and d.event == "dhcp.ignored"


def test_relay_in_proxy_mode(store):
    d = respond(req(o.DISCOVER, *BIOS_PXE, giaddr=A("10.99.0.1")), PROXY, store, NOW)
    assert d.destination == Destination(A("10.99.0.1"), 67, False)


def test_broadcast_flag_is_echoed(store):
    d = respond(req(o.DISCOVER, *UEFI_PXE, flags=FLAG_BROADCAST), FULL, store, NOW)
    assert d.reply.flags == FLAG_BROADCAST and d.destination.broadcast


# --- the lease life cycle, full mode ---


def run(store, packet, config=FULL, **kw):
    d = respond(packet, config, store, NOW, **kw)
    if d.effect is not None:
        apply_effect(store, d.effect, NOW)
    return d


def test_discover_request_ack_commits_the_lease(store):
    offer = run(store, req(o.DISCOVER, *BIOS_PXE))
    ip = offer.reply.yiaddr
    assert store.lookup_mac(MAC) is None  # an OFFER costs no write
    ack = run(store, req(o.REQUEST, *BIOS_PXE, ip_opt(54, str(SERVER)), ip_opt(50, str(ip)), (12, b"node1")))
    assert ack.event == "dhcp.ack" and ack.reply.yiaddr == ip and ack.reply.file == b"undionly.kpxe"
    lease = store.lookup_mac(MAC)
    assert lease.ip == ip and lease.expires == NOW + 3600 and lease.hostname == "node1"
    assert store.db["leases"].count == 1


def test_retransmitted_discover_gets_the_same_offer(store):
    first = run(store, req(o.DISCOVER, *BIOS_PXE))
    second = run(store, req(o.DISCOVER, *BIOS_PXE))
    assert first.reply == second.reply


def test_two_clients_get_different_addresses(store):
    a = run(store, req(o.DISCOVER, mac="52:54:00:00:00:01")).reply.yiaddr
    b = run(store, req(o.DISCOVER, mac="52:54:00:00:00:02")).reply.yiaddr
    assert a != b


def test_requested_ip_is_honoured_if_free(store):
    d = run(store, req(o.DISCOVER, ip_opt(50, "10.20.0.102")))
    assert d.reply.yiaddr == A("10.20.0.102")


def test_requested_ip_outside_pool_is_not(store):
    d = run(store, req(o.DISCOVER, ip_opt(50, "10.20.0.200")))
    assert d.reply.yiaddr == A("10.20.0.100")


def test_pool_exhausted_stays_silent(store):
    for i in range(4):
        run(store, req(o.DISCOVER, mac=f"52:54:00:00:00:{i:02x}"))
    d = run(store, req(o.DISCOVER, mac="52:54:00:00:00:99"))
    assert d.reply is None and d.event == "dhcp.exhausted"


def test_reservation_wins(store):
    reserve(store, MAC, "10.20.0.50")
    d = run(store, req(o.DISCOVER, *BIOS_PXE, ip_opt(50, "10.20.0.101")))
    assert d.reply.yiaddr == A("10.20.0.50")
    ack = run(store, req(o.REQUEST, ip_opt(54, str(SERVER)), ip_opt(50, "10.20.0.50")))
    assert ack.event == "dhcp.ack"


def test_reserved_address_is_not_given_to_others(store):
    reserve(store, "52:54:00:aa:aa:aa", "10.20.0.100")
    d = run(store, req(o.DISCOVER))
    assert d.reply.yiaddr == A("10.20.0.101")


def test_reserved_client_asking_for_another_address_is_nakked(store):
    reserve(store, MAC, "10.20.0.50")
    d = run(store, req(o.REQUEST, ip_opt(50, "10.20.0.101")))
    assert d.event == "dhcp.nak"


def test_selecting_another_server_drops_our_offer(store):
    run(store, req(o.DISCOVER))
    d = run(store, req(o.REQUEST, ip_opt(54, str(OTHER_SERVER)), ip_opt(50, "10.20.0.100")))
    assert d.reply is None and d.effect == Forget(MAC)
    assert store.current(MAC, NOW) is None


def committed(store, ip="10.20.0.100"):
    store.commit(MAC, A(ip), 3600, NOW)


def test_renew_is_acked_unicast(store):
    committed(store)
    d = run(store, req(o.REQUEST, ciaddr=A("10.20.0.100")))
    assert d.event == "dhcp.ack" and d.reply.ciaddr == A("10.20.0.100") and d.reply.yiaddr == A("10.20.0.100")
    assert d.destination == Destination(A("10.20.0.100"), 68, False)


def test_init_reboot_with_our_lease_is_acked(store):
    committed(store)
    d = run(store, req(o.REQUEST, ip_opt(50, "10.20.0.100")))
    assert d.event == "dhcp.ack"
    assert d.destination == Destination(BROADCAST, 68, True)


NAKS = {
    "foreign network": (req(o.REQUEST, ip_opt(50, "192.168.1.10")), "not on this network"),
    "outside the pool": (req(o.REQUEST, ip_opt(50, "10.20.0.20")), "not in the pool"),
    "renew of another client's address": (req(o.REQUEST, ciaddr=A("10.20.0.101")), "another client"),
}


@pytest.mark.parametrize("scenario", NAKS)
def test_nak(scenario, store):
    store.commit("52:54:00:99:99:99", A("10.20.0.101"), 3600, NOW)
    packet, why = NAKS[scenario]
    d = run(store, packet)
    assert d.event == "dhcp.nak"
    got = opts(d.reply)
    assert got[53] == bytes((o.NAK,)) and why in got[56].decode()
    assert d.reply.yiaddr == A(0) and d.reply.file == b"" and d.reply.siaddr == A(0)
    assert d.destination == Destination(BROADCAST, 68, True)
    assert set(got) == {53, 54, 56}


def test_nak_through_a_relay_sets_the_broadcast_bit(store):
    d = run(store, req(o.REQUEST, ip_opt(50, "192.168.1.10"), giaddr=A("10.20.0.254")))
    assert d.reply.flags & FLAG_BROADCAST and d.destination == Destination(A("10.20.0.254"), 67, False)


def test_decline_takes_the_address_out_of_the_pool(store):
    committed(store)
    d = run(store, req(o.DECLINE, ip_opt(54, str(SERVER)), ip_opt(50, "10.20.0.100")))
    assert d.reply is None and d.event == "dhcp.decline"
    assert store.lookup_mac(MAC) is None
    assert store.db["declined"].count == 1
    again = run(store, req(o.DISCOVER))
    assert again.reply.yiaddr == A("10.20.0.101")


@pytest.mark.parametrize("ip", ["10.20.0.101", "8.8.8.8"])
def test_a_client_cannot_decline_an_address_that_is_not_its_own(store, ip):
    committed(store)  # MAC holds 10.20.0.100
    other = "52:54:00:00:00:77"
    d = run(store, req(o.DECLINE, ip_opt(54, str(SERVER)), ip_opt(50, ip), mac=other))
    assert d.event == "dhcp.ignored" and d.effect is None
    d = run(store, req(o.DECLINE, ip_opt(54, str(SERVER)), ip_opt(50, "10.20.0.100"), mac=other))
    assert d.event == "dhcp.ignored"
    assert store.db["declined"].count == 0
    assert store.lookup_mac(MAC).active(NOW)


def test_decline_expires(store):
    store.decline(MAC, A("10.20.0.100"), NOW - 10_000)
    assert store.available(A("10.20.0.100"), MAC, NOW)


def test_release_frees_the_address_but_keeps_the_record(store):
    committed(store)
    d = run(store, req(o.RELEASE, ip_opt(54, str(SERVER)), ciaddr=A("10.20.0.100")))
    assert d.reply is None and d.event == "dhcp.release"
    assert store.lookup_mac(MAC).expires == 0
    other = run(store, req(o.DISCOVER, mac="52:54:00:00:00:01"))
    assert other.reply.yiaddr == A("10.20.0.100")


def test_release_for_another_server_is_ignored(store):
    committed(store)
    run(store, req(o.RELEASE, ip_opt(54, str(OTHER_SERVER)), ciaddr=A("10.20.0.100")))
    assert store.lookup_mac(MAC).active(NOW)


def test_inform_gets_options_only(store):
    d = run(store, req(o.INFORM, *BIOS_PXE, ciaddr=A("10.20.0.30")))
    got = opts(d.reply)
    assert got[53] == bytes((o.ACK,)) and d.reply.yiaddr == A(0) and d.reply.ciaddr == A("10.20.0.30")
    assert 51 not in got and 58 not in got and got[1] == b"\xff\xff\xff\x00"
    assert d.destination == Destination(A("10.20.0.30"), 68, False)
    assert d.effect is None


def test_expired_lease_of_another_client_is_reused(store):
    store.commit("52:54:00:99:99:99", A("10.20.0.100"), 10, NOW - 100)
    d = run(store, req(o.DISCOVER))
    assert d.reply.yiaddr == A("10.20.0.100")
    run(store, req(o.REQUEST, ip_opt(54, str(SERVER)), ip_opt(50, "10.20.0.100")))
    assert store.lookup_ip(A("10.20.0.100")).mac == MAC
    assert store.db["leases"].count == 1


# --- what is not served ---


def test_replies_and_bootp_are_ignored(store):
    assert respond(replace(req(o.DISCOVER), op=2), FULL, store, NOW).reply is None
    bootp = parse(build(DhcpPacket(op=1, xid=1, chaddr=bytes(6))))
    assert respond(bootp, FULL, store, NOW).reply is None


@pytest.mark.parametrize("packet", [
    DhcpPacket(op=1, xid=1, chaddr=bytes(6), htype=6, options=((53, b"\x01"),)),
    DhcpPacket(op=1, xid=1, chaddr=bytes(6), options=((53, b"\x01"), (97, bytes(5)))),
    DhcpPacket(op=1, xid=1, chaddr=bytes(6), options=((53, b"\x01"), (93, b"\x00"))),
    DhcpPacket(op=1, xid=1, chaddr=bytes(6), options=((53, b"\x03"),)),
], ids=["token ring", "bad guid", "bad arch", "request without address"])
def test_impossible_requests_raise_malformed(packet, store):
    with pytest.raises(MalformedPacket):
        respond(packet, FULL, store, NOW)


# --- boot.unknown = "ignore": boot files for registered machines only ---


def known(store: LeaseStore, mac: str) -> None:
    store.db["hosts"].insert({"id": 7, "name": "known", "state": "new", "created": NOW, "updated": NOW})
    store.db["host_macs"].insert({"mac": mac, "host_id": 7})


def test_proxy_mode_stays_silent_to_unknown_machines(store):
    config = replace(PROXY, ignore_unknown=True)
    d = respond(req(o.DISCOVER, *BIOS_PXE), config, store, NOW)
    assert d.reply is None and d.event == "dhcp.ignored"
    d = respond(req(o.REQUEST, *UEFI_PXE, ciaddr=A("10.20.0.50")), config, store, NOW,
                port=4011, source=("10.20.0.50", 4011))
    assert d.reply is None and d.event is None
    known(store, MAC)
    d = respond(req(o.DISCOVER, *BIOS_PXE), config, store, NOW)
    assert d.reply.file == b"undionly.kpxe" and d.reply.yiaddr == A(0)


def test_full_mode_gives_unknown_machines_an_address_but_no_boot_file(store):
    config = replace(FULL, ignore_unknown=True)
    d = respond(req(o.DISCOVER, *IPXE), config, store, NOW)
    assert d.event == "dhcp.offer" and d.reply.yiaddr == A("10.20.0.100")
    assert d.reply.file == b"" and 43 not in opts(d.reply) and 60 not in opts(d.reply)
    known(store, MAC)
    d = respond(req(o.DISCOVER, *IPXE), config, store, NOW)
    assert d.reply.file == f"{BASE}/boot/ipxe?mac=52-54-00-12-34-56".encode()
