"""A minimal IPv6 router-advertisement answerer for the lab bridge.

Why: iPXE configures IPv4 (DHCP) and IPv6 (router solicitation) together
and prints "ok" only when both are done. With no IPv6 router on the segment
it retransmits router solicitations for ~16 s before giving up [measured in
the lab, SeaBIOS and OVMF alike], which is dead time in every TCG boot. An
advertisement with router lifetime 0, no prefixes and no M/O flags tells
iPXE "no IPv6 router here" at once and changes nothing else: clients get no
IPv6 address beyond link-local and no default route.

Run it INSIDE a lab namespace; like dhcpsniff it refuses any other one.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys

from provisioner.lab.dhcpsniff import SO_BINDTODEVICE, in_named_namespace

ALL_ROUTERS = "ff02::2"
ALL_NODES = "ff02::1"
ROUTER_SOLICITATION = 133
ROUTER_ADVERTISEMENT = 134


def advertisement(mac: bytes) -> bytes:
    """ICMPv6 RA; the kernel fills in the checksum on raw ICMPv6 sockets."""
    # type, code, checksum, cur hop limit 0 (unspecified), flags 0 (no
    # DHCPv6), router lifetime 0 (not a default router), reachable 0, retrans 0
    header = struct.pack("!BBHBBHII", ROUTER_ADVERTISEMENT, 0, 0, 0, 0, 0, 0, 0)
    source_lladdr = struct.pack("!BB", 1, 1) + mac  # option 1, length 1 (8 bytes)
    return header + source_lladdr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("interface")
    parser.add_argument("--netns", required=True, help="the lab namespace this must run in")
    args = parser.parse_args(argv)
    if not in_named_namespace(args.netns):
        print(f"ra: not inside namespace {args.netns!r}; refusing to run", file=sys.stderr)
        return 2
    index = socket.if_nametoindex(args.interface)
    with open(f"/sys/class/net/{args.interface}/address") as f:
        mac = bytes.fromhex(f.read().strip().replace(":", ""))
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, args.interface.encode())
    # RFC 4861: neighbour discovery is only valid with hop limit 255.
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
    mreq = socket.inet_pton(socket.AF_INET6, ALL_ROUTERS) + struct.pack("@I", index)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
    packet = advertisement(mac)
    print(f"ra: answering router solicitations on {args.interface}", flush=True)
    while True:
        data, source = sock.recvfrom(1500)
        if data and data[0] == ROUTER_SOLICITATION:
            try:
                sock.sendto(packet, (ALL_NODES, 0, 0, index))
            except OSError as exc:  # e.g. our link-local is still tentative
                print(f"ra: send failed: {exc}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
