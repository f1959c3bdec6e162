"""Option codes and typed readers for the options a PXE server cares about.

Each reader returns None when the option is absent and raises
`MalformedPacket` when it is present but impossible, so the responder can
treat "absent" and "hostile" differently.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

from provisioner.net.dhcp.codec import DhcpPacket, MalformedPacket

SUBNET_MASK = 1
ROUTER = 3
DNS = 6
HOSTNAME = 12
DOMAIN = 15
VENDOR_SPECIFIC = 43
REQUESTED_IP = 50
LEASE_TIME = 51
MESSAGE_TYPE = 53
SERVER_ID = 54
PARAM_REQUEST = 55
MESSAGE = 56
MAX_MESSAGE_SIZE = 57
RENEWAL_TIME = 58
REBINDING_TIME = 59
VENDOR_CLASS = 60
CLIENT_ID = 61
BOOTFILE = 67
USER_CLASS = 77
CLIENT_ARCH = 93
CLIENT_NDI = 94
CLIENT_GUID = 97
IPXE_ENCAP = 175

# Option 53 values (RFC 2132 9.6).
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
MESSAGE_NAMES = {
    DISCOVER: "DISCOVER",
    OFFER: "OFFER",
    REQUEST: "REQUEST",
    DECLINE: "DECLINE",
    ACK: "ACK",
    NAK: "NAK",
    RELEASE: "RELEASE",
    INFORM: "INFORM",
}

# iPXE's encapsulated option 175 sub-option: skip the ProxyDHCP wait.
IPXE_NO_PXEDHCP = 176


def _fixed(p: DhcpPacket, code: int, length: int, name: str) -> bytes | None:
    value = p.get(code)
    if value is not None and len(value) != length:
        raise MalformedPacket(f"{name} (option {code}) has length {len(value)}, expected {length}")
    return value


def message_type(p: DhcpPacket) -> int | None:
    value = _fixed(p, MESSAGE_TYPE, 1, "message type")
    if value is None:
        return None
    if value[0] not in MESSAGE_NAMES:
        raise MalformedPacket(f"unknown message type {value[0]}")
    return value[0]


def _address(p: DhcpPacket, code: int, name: str) -> IPv4Address | None:
    value = _fixed(p, code, 4, name)
    return None if value is None else IPv4Address(value)


def requested_ip(p: DhcpPacket) -> IPv4Address | None:
    return _address(p, REQUESTED_IP, "requested IP")


def server_id(p: DhcpPacket) -> IPv4Address | None:
    return _address(p, SERVER_ID, "server identifier")


def client_id(p: DhcpPacket) -> bytes | None:
    value = p.get(CLIENT_ID)
    if value is not None and len(value) < 2:
        raise MalformedPacket("client identifier shorter than 2 bytes")  # RFC 2132 9.14
    return value


def _text(value: bytes | None) -> str | None:
    # latin-1 maps every byte, so hostile bytes cannot raise here.
    return None if value is None else value.decode("latin-1")


def vendor_class(p: DhcpPacket) -> str | None:
    return _text(p.get(VENDOR_CLASS))


def hostname(p: DhcpPacket) -> str | None:
    text = _text(p.get(HOSTNAME))
    return text.rstrip("\0") or None if text is not None else None


def user_classes(p: DhcpPacket) -> tuple[str, ...]:
    """iPXE sends the plain string "iPXE" rather than RFC 3004's
    length-prefixed list, so accept both: the plain form first, then the
    TLV form if it parses exactly."""
    value = p.get(USER_CLASS)
    if not value:
        return ()
    out: list[str] = []
    i = 0
    while i < len(value):
        n = value[i]
        if n == 0 or i + 1 + n > len(value):
            return (value.decode("latin-1"),)
        out.append(value[i + 1 : i + 1 + n].decode("latin-1"))
        i += 1 + n
    return (value.decode("latin-1"), *out)


def is_ipxe(p: DhcpPacket) -> bool:
    return "iPXE" in user_classes(p)


def client_arches(p: DhcpPacket) -> tuple[int, ...]:
    value = p.get(CLIENT_ARCH)
    if value is None:
        return ()
    if not value or len(value) % 2:
        raise MalformedPacket(f"client architecture list has odd length {len(value)}")
    return struct.unpack(f"!{len(value) // 2}H", value)


def client_ndi(p: DhcpPacket) -> tuple[int, int, int] | None:
    value = _fixed(p, CLIENT_NDI, 3, "network interface identifier")
    return None if value is None else (value[0], value[1], value[2])


def client_guid(p: DhcpPacket) -> bytes | None:
    """The raw option (b"" or 17 bytes starting 0); pixiecore and smee reject
    any other shape, and so do we, since we copy it back verbatim."""
    value = p.get(CLIENT_GUID)
    if value is None or len(value) == 0:
        return value
    if len(value) != 17 or value[0] != 0:
        raise MalformedPacket(f"client GUID has length {len(value)} or type {value[0]}")
    return value


def parameter_requests(p: DhcpPacket) -> tuple[int, ...]:
    value = p.get(PARAM_REQUEST)
    return tuple(value) if value else ()


def max_message_size(p: DhcpPacket) -> int | None:
    value = _fixed(p, MAX_MESSAGE_SIZE, 2, "maximum message size")
    if value is None:
        return None
    size = struct.unpack("!H", value)[0]
    if size < 576:
        raise MalformedPacket(f"maximum message size {size} below 576")
    return size


def encapsulated(value: bytes | None) -> dict[int, bytes]:
    """Sub-options of an encapsulated space (43, 175): code, length, value,
    with pad 0 and end 255."""
    out: dict[int, bytes] = {}
    if not value:
        return out
    i = 0
    while i < len(value):
        code = value[i]
        if code == 0:
            i += 1
            continue
        if code == 255:
            break
        if i + 1 >= len(value) or i + 2 + value[i + 1] > len(value):
            raise MalformedPacket(f"encapsulated sub-option {code} runs past the end")
        out[code] = out.get(code, b"") + value[i + 2 : i + 2 + value[i + 1]]
        i += 2 + value[i + 1]
    return out


def ipxe_options(p: DhcpPacket) -> dict[int, bytes]:
    return encapsulated(p.get(IPXE_ENCAP))


def encode_encapsulated(subs: tuple[tuple[int, bytes], ...], end: bool) -> bytes:
    out = bytearray()
    for code, value in subs:
        out += bytes((code, len(value))) + value
    if end:
        out.append(255)
    return bytes(out)
