"""A small struct-based DHCPv4 (RFC 2131/2132) wire codec with no policy in it.

`parse` turns bytes into a frozen `DhcpPacket` or raises `MalformedPacket`;
it raises nothing else for any input, because it sits straight behind a
socket that anyone on the segment can write to. `build` does the reverse.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from provisioner.errors import InvalidInput

BOOTREQUEST = 1
BOOTREPLY = 2
MAGIC_COOKIE = b"\x63\x82\x53\x63"
FLAG_BROADCAST = 0x8000

OPT_PAD = 0
OPT_END = 255
OPT_OVERLOAD = 52

# op htype hlen hops xid secs flags ciaddr yiaddr siaddr giaddr chaddr sname file
_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
_FIXED = _HEADER.size + len(MAGIC_COOKIE)  # 240
# Replies are padded to the BOOTP minimum: some old PXE ROMs drop shorter ones.
MIN_REPLY = 300
# A DHCP message always fits one unfragmented UDP datagram on Ethernet;
# anything bigger on the wire is hostile, not a client.
MAX_PACKET = 1500
ZERO = IPv4Address(0)


class MalformedPacket(InvalidInput):
    """The bytes are not a DHCP message we can trust; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(f"malformed DHCP packet: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class DhcpPacket:
    op: int
    xid: int
    chaddr: bytes  # the full 16-byte field; see `mac`
    htype: int = 1
    hlen: int = 6
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: IPv4Address = ZERO
    yiaddr: IPv4Address = ZERO
    siaddr: IPv4Address = ZERO
    giaddr: IPv4Address = ZERO
    sname: bytes = b""  # trailing NULs stripped
    file: bytes = b""  # trailing NULs stripped
    # Ordered (code, value) pairs, each code once: repeated codes on the wire
    # are concatenated (RFC 3396) so that readers never see a split value.
    options: tuple[tuple[int, bytes], ...] = field(default=())

    def __post_init__(self) -> None:
        # chaddr is a fixed 16-byte field on the wire; normalising here keeps
        # parse(build(p)) == p for packets built from a 6-byte MAC.
        if len(self.chaddr) < 16:
            object.__setattr__(self, "chaddr", bytes(self.chaddr).ljust(16, b"\0"))

    def get(self, code: int) -> bytes | None:
        for c, value in self.options:
            if c == code:
                return value
        return None

    @property
    def mac(self) -> str | None:
        """Lower-case colon form for Ethernet clients, else None."""
        if self.htype != 1 or self.hlen != 6:
            return None
        return self.chaddr[:6].hex(":")

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & FLAG_BROADCAST)


def _walk(area: bytes, where: str, out: dict[int, bytearray], order: list[int]) -> None:
    """Collect the options of one area (options field, file or sname)."""
    i, n = 0, len(area)
    while i < n:
        code = area[i]
        if code == OPT_PAD:
            i += 1
            continue
        if code == OPT_END:
            return
        if i + 1 >= n:
            raise MalformedPacket(f"option {code} in {where} has no length byte")
        length = area[i + 1]
        end = i + 2 + length
        if end > n:
            raise MalformedPacket(f"option {code} in {where} runs past the end ({length} bytes)")
        if code not in out:
            out[code] = bytearray()
            order.append(code)
        out[code] += area[i + 2 : end]
        i = end
    # No END option: tolerated, since some firmware omits it in the last area
    # and every length has been checked anyway.


def parse(data: bytes) -> DhcpPacket:
    try:
        return _parse(data)
    except MalformedPacket:
        raise
    except Exception as exc:  # a codec bug must not look like anything else to the server
        raise MalformedPacket(f"undecodable ({type(exc).__name__})") from None


def _parse(data: bytes) -> DhcpPacket:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MalformedPacket("not bytes")
    data = bytes(data)
    if len(data) < _FIXED:
        raise MalformedPacket(f"too short ({len(data)} bytes, need {_FIXED})")
    if len(data) > MAX_PACKET:
        raise MalformedPacket(f"too long ({len(data)} bytes)")
    op, htype, hlen, hops, xid, secs, flags, ci, yi, si, gi, chaddr, sname, file = _HEADER.unpack_from(data)
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise MalformedPacket(f"op {op} is neither request nor reply")
    if hlen > 16:
        raise MalformedPacket(f"hlen {hlen} is longer than chaddr")
    if data[_HEADER.size : _FIXED] != MAGIC_COOKIE:
        raise MalformedPacket("no DHCP magic cookie")
    values: dict[int, bytearray] = {}
    order: list[int] = []
    _walk(data[_FIXED:], "options", values, order)
    overload = values.get(OPT_OVERLOAD)
    if overload is not None:
        if len(overload) != 1 or overload[0] not in (1, 2, 3):
            raise MalformedPacket(f"bad option overload value {bytes(overload).hex()}")
        mode = overload[0]
        # RFC 3396 order: options, then file, then sname.
        for bit, area, where in ((1, file, "file"), (2, sname, "sname")):
            if mode & bit:
                before = len(values[OPT_OVERLOAD])
                _walk(area, where, values, order)
                # Option 52 may only appear in the options field; seeing it
                # again is a loop attempt, not a client.
                if len(values[OPT_OVERLOAD]) != before:
                    raise MalformedPacket(f"option overload repeated inside {where}")
        if mode & 1:
            file = b""
        if mode & 2:
            sname = b""
    options = tuple((code, bytes(values[code])) for code in order if code != OPT_OVERLOAD)
    return DhcpPacket(
        op=op,
        htype=htype,
        hlen=hlen,
        hops=hops,
        xid=xid,
        secs=secs,
        flags=flags,
        ciaddr=IPv4Address(ci),
        yiaddr=IPv4Address(yi),
        siaddr=IPv4Address(si),
        giaddr=IPv4Address(gi),
        chaddr=chaddr,
        sname=sname.rstrip(b"\0"),
        file=file.rstrip(b"\0"),
        options=options,
    )


def encode_options(options: tuple[tuple[int, bytes], ...]) -> bytes:
    out = bytearray()
    for code, value in options:
        if not 0 < code < 255 or code == OPT_OVERLOAD:
            raise ValueError(f"option code {code} cannot be encoded as a value")
        if not value:
            out += bytes((code, 0))
            continue
        # Long values are split into 255-byte instances (RFC 3396).
        for start in range(0, len(value), 255):
            chunk = value[start : start + 255]
            out += bytes((code, len(chunk))) + chunk
    return bytes(out)


def build(p: DhcpPacket) -> bytes:
    if len(p.sname) > 64 or len(p.file) > 128 or len(p.chaddr) > 16:
        raise ValueError("sname, file or chaddr too long for its field")
    head = _HEADER.pack(
        p.op,
        p.htype,
        p.hlen,
        p.hops,
        p.xid,
        p.secs,
        p.flags,
        p.ciaddr.packed,
        p.yiaddr.packed,
        p.siaddr.packed,
        p.giaddr.packed,
        p.chaddr.ljust(16, b"\0"),
        p.sname.ljust(64, b"\0"),
        p.file.ljust(128, b"\0"),
    )
    out = head + MAGIC_COOKIE + encode_options(p.options) + bytes((OPT_END,))
    if len(out) < MIN_REPLY:
        out += bytes(MIN_REPLY - len(out))
    return out
