"""A raw PXE firmware stand-in: broadcasts one DHCPDISCOVER built with scapy
(an encoder independent of ours) on an interface and prints the first reply
as JSON. Run inside a client network namespace:

    python -m tests.helpers.pxe_client IFACE MAC ARCH [--vendor PXEClient:...] [--user-class iPXE]
"""

import argparse
import json
import random
import socket
import sys
import time

from scapy.layers.dhcp import BOOTP, DHCP
from scapy.utils import mac2str


def discover(mac: str, arch: int, vendor: str, user_class: str | None, xid: int) -> bytes:
    options = [
        ("message-type", "discover"),
        ("vendor_class_id", vendor.encode()),
        (93, arch.to_bytes(2, "big")),
        (94, bytes([1, 2, 1])),
        (97, bytes([0]) + bytes(range(16))),
        ("param_req_list", [1, 3, 6, 43, 60, 66, 67, 97, 128]),
    ]
    if user_class:
        options.append((77, user_class.encode()))
    options.append("end")
    pkt = BOOTP(op=1, chaddr=mac2str(mac) + b"\0" * 10, xid=xid, flags=0x8000) / DHCP(options=options)
    return bytes(pkt)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("iface")
    ap.add_argument("mac")
    ap.add_argument("arch", type=int)
    ap.add_argument("--vendor", default=None)
    ap.add_argument("--user-class", default=None)
    ap.add_argument("--timeout", type=float, default=10)
    args = ap.parse_args()
    vendor = args.vendor or f"PXEClient:Arch:{args.arch:05d}:UNDI:002001"
    xid = random.getrandbits(32)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.iface.encode())
    sock.bind(("0.0.0.0", 68))
    sock.settimeout(1)
    packet = discover(args.mac, args.arch, vendor, args.user_class, xid)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        sock.sendto(packet, ("255.255.255.255", 67))
        try:
            data, src = sock.recvfrom(4096)
        except socket.timeout:
            continue
        reply = BOOTP(data)
        if reply.xid != xid:
            continue
        opts = {}
        for opt in reply[DHCP].options:
            if isinstance(opt, tuple):
                key = opt[0] if isinstance(opt[0], str) else str(opt[0])
                value = opt[1]
                opts[key] = value.hex() if isinstance(value, bytes) and key not in ("vendor_class_id",) else (
                    value.decode() if isinstance(value, bytes) else value)
        print(json.dumps({
            "source": src[0],
            "yiaddr": reply.yiaddr,
            "siaddr": reply.siaddr,
            "file": reply.file.rstrip(b"\0").decode(errors="replace"),
            "options": {k: (v if isinstance(v, (str, int, list)) else str(v)) for k, v in opts.items()},
        }))
        return 0
    print("no reply", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
