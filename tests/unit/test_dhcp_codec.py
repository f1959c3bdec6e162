"""The DHCP codec against hand-made edge cases and hostile input. Golden
packets captured from real clients are in test_dhcp_golden.py."""

from __future__ import annotations

import random
import struct
from ipaddress import IPv4Address

import pytest

from provisioner.net.dhcp import codec, options as o
from provisioner.net.dhcp.codec import DhcpPacket, MalformedPacket, build, parse

MAC = bytes.fromhex("525400123456")


def packet(**kw) -> DhcpPacket:
    base = dict(op=1, xid=0x1234ABCD, chaddr=MAC, options=((53, b"\x01"),))
    base.update(kw)
    return DhcpPacket(**base)


def raw(options: bytes, sname: bytes = b"", file: bytes = b"", cookie: bytes = codec.MAGIC_COOKIE) -> bytes:
    head = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 7, 0, 0, bytes(4), bytes(4), bytes(4), bytes(4),
                       MAC.ljust(16, b"\0"), sname.ljust(64, b"\0"), file.ljust(128, b"\0"))
    return head + cookie + options


ROUND_TRIPS = {
    "minimal": packet(),
    "all header fields": packet(op=2, hops=3, secs=9, flags=0x8000, ciaddr=IPv4Address("10.0.0.5"),
                                yiaddr=IPv4Address("10.0.0.6"), siaddr=IPv4Address("10.0.0.1"),
                                giaddr=IPv4Address("10.9.0.1"), sname=b"srv", file=b"undionly.kpxe"),
    "zero-length option": packet(options=((53, b"\x01"), (97, b""))),
    "long option split in 255-byte chunks": packet(options=((53, b"\x05"), (43, bytes(range(256)) * 3))),
    "many options kept in order": packet(options=((53, b"\x01"), (61, b"\x01" + MAC), (60, b"PXEClient"), (93, b"\x00\x07"))),
}


@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_round_trip(name):
    p = ROUND_TRIPS[name]
    wire = build(p)
    assert len(wire) >= codec.MIN_REPLY
    assert parse(wire) == p


def test_long_value_is_split_on_the_wire():
    wire = build(packet(options=((43, b"x" * 600),)))
    body = wire[240:]
    assert body[:2] == bytes((43, 255)) and body[257:259] == bytes((43, 255)) and body[514:516] == bytes((43, 90))


def test_repeated_options_are_concatenated():
    p = parse(raw(b"\x35\x01\x01" + b"\x3c\x03PXE" + b"\x00\x00" + b"\x3c\x06Client" + b"\xff"))
    assert p.get(60) == b"PXEClient"
    assert [c for c, _ in p.options] == [53, 60]


def test_overload_reads_file_then_sname():
    file = b"\x3c\x03PXE\xff"
    sname = b"\x3c\x06Client\xff"
    p = parse(raw(b"\x35\x01\x01\x34\x01\x03\xff", sname=sname, file=file))
    assert p.get(60) == b"PXEClient"
    assert p.file == b"" and p.sname == b""
    assert p.get(52) is None


def test_overload_file_only_keeps_sname():
    p = parse(raw(b"\x34\x01\x01\x35\x01\x01\xff", sname=b"server", file=b"\x0c\x02hi\xff"))
    assert p.get(12) == b"hi" and p.sname == b"server" and p.file == b""


def test_pad_and_missing_end_are_tolerated():
    p = parse(raw(b"\x00\x00\x35\x01\x03\x00"))
    assert o.message_type(p) == o.REQUEST


def test_options_after_end_are_ignored():
    p = parse(raw(b"\x35\x01\x01\xff\x3c\x03abc"))
    assert p.get(60) is None


HOSTILE = {
    "empty": b"",
    "one byte": b"\x01",
    "header only": raw(b"")[:236],
    "truncated cookie": raw(b"")[:238],
    "bad cookie": raw(b"\x35\x01\x01\xff", cookie=b"\x63\x82\x53\x64"),
    "bad op": b"\x07" + raw(b"\xff")[1:],
    "hlen past chaddr": raw(b"\xff")[:2] + b"\x11" + raw(b"\xff")[3:],
    "option length past end": raw(b"\x35\x01\x01\x3c\x40PXE"),
    "option without length": raw(b"\x35\x01\x01\x3c"),
    "oversized": raw(b"\x35\x01\x01" + b"\x00" * 2000 + b"\xff"),
    "overload bad value": raw(b"\x34\x01\x07\xff"),
    "overload wrong length": raw(b"\x34\x02\x01\x01\xff"),
    "overload loop in file": raw(b"\x34\x01\x01\xff", file=b"\x34\x01\x02\xff"),
    "overload loop in sname": raw(b"\x34\x01\x03\xff", sname=b"\x34\x01\x03\xff"),
    "option past end of file area": raw(b"\x34\x01\x01\xff", file=b"\x00" * 120 + b"\x3c\x20abc"),
    "garbage": bytes(range(256)) * 2,
    "not bytes": "a string",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_input_raises_only_malformed(name):
    with pytest.raises(MalformedPacket) as info:
        parse(HOSTILE[name])
    assert info.value.reason


def test_fuzz_never_raises_anything_but_malformed():
    rng = random.Random(4011)
    seeds = [build(p) for p in ROUND_TRIPS.values()]
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data) + 1)]
        try:
            p = parse(bytes(data))
        except MalformedPacket:
            continue
        for reader in (o.message_type, o.requested_ip, o.server_id, o.client_id, o.client_arches,
                       o.client_ndi, o.client_guid, o.max_message_size, o.ipxe_options, o.user_classes):
            try:
                reader(p)
            except MalformedPacket:
                pass


# --- typed option readers ---


def with_opts(*opts: tuple[int, bytes]) -> DhcpPacket:
    return packet(options=((53, b"\x01"), *opts))


def test_readers_of_present_options():
    p = with_opts((50, bytes([10, 0, 0, 7])), (54, bytes([10, 0, 0, 1])), (61, b"\x01" + MAC),
                  (60, b"PXEClient:Arch:00007:UNDI:003016"), (77, b"iPXE"), (93, b"\x00\x07\x00\x09"),
                  (94, b"\x01\x03\x0a"), (97, b"\x00" + bytes(range(16))), (55, b"\x01\x03\x43"),
                  (57, b"\x05\xc0"), (175, b"\x13\x01\x01\xb0\x01\x01"))
    assert o.message_type(p) == o.DISCOVER
    assert o.requested_ip(p) == IPv4Address("10.0.0.7")
    assert o.server_id(p) == IPv4Address("10.0.0.1")
    assert o.client_id(p) == b"\x01" + MAC
    assert o.vendor_class(p).startswith("PXEClient")
    assert o.is_ipxe(p)
    assert o.client_arches(p) == (7, 9)
    assert o.client_ndi(p) == (1, 3, 10)
    assert o.client_guid(p) == b"\x00" + bytes(range(16))
    assert o.parameter_requests(p) == (1, 3, 67)
    assert o.max_message_size(p) == 1472
    assert o.ipxe_options(p) == {0x13: b"\x01", 176: b"\x01"}


def test_readers_of_absent_options():
    p = with_opts()
    assert o.requested_ip(p) is None and o.client_guid(p) is None and o.client_arches(p) == ()
    assert not o.is_ipxe(p) and o.user_classes(p) == ()


def test_user_class_rfc3004_form_is_understood():
    assert o.is_ipxe(with_opts((77, b"\x04iPXE\x03foo")))
    assert not o.is_ipxe(with_opts((77, b"\x05iPXEx")))


def test_guid_of_length_zero_is_accepted():
    assert o.client_guid(with_opts((97, b""))) == b""


BAD_OPTIONS = {
    "message type length": (53, b"\x01\x01"),
    "message type value": (53, b"\x09"),
    "requested ip length": (50, b"\x0a\x00"),
    "server id length": (54, b"\x0a\x00\x00\x01\x00"),
    "client id too short": (61, b"\x01"),
    "arch odd length": (93, b"\x00"),
    "arch empty": (93, b""),
    "ndi length": (94, b"\x01\x02"),
    "guid length 16": (97, bytes(16)),
    "guid type 1": (97, b"\x01" + bytes(16)),
    "max size too small": (57, b"\x01\x00"),
    "ipxe encap past end": (175, b"\xb1\x05\x01"),
}
READERS = {53: o.message_type, 50: o.requested_ip, 54: o.server_id, 61: o.client_id, 93: o.client_arches,
           94: o.client_ndi, 97: o.client_guid, 57: o.max_message_size, 175: o.ipxe_options}


@pytest.mark.parametrize("name", BAD_OPTIONS)
def test_impossible_option_values_raise_malformed(name):
    code, value = BAD_OPTIONS[name]
    p = packet(options=((code, value),))
    with pytest.raises(MalformedPacket):
        READERS[code](p)
