"""A listen-only DHCP observer for lab tests: prints one JSON line per
BOOTREQUEST that reaches UDP 67 on one interface. It never answers.

Run it INSIDE a lab namespace (`python -m provisioner.lab.dhcpsniff --netns NS br0`);
it refuses to run anywhere but that namespace, so a test mistake can never put a
listener on the host's real network.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from typing import Any

from provisioner.net.dhcp import codec
from provisioner.net.dhcp import options as o

MESSAGE_TYPES = {1: "DISCOVER", 2: "OFFER", 3: "REQUEST", 4: "DECLINE", 5: "ACK", 6: "NAK", 7: "RELEASE", 8: "INFORM"}
# SO_BINDTODEVICE from <asm-generic/socket.h>; Python exposes it only on some builds.
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


def decode(packet: bytes) -> dict[str, Any] | None:
    """The fields a PXE test cares about, or None for anything that is not a
    well-formed DHCP request (decoded with the project's own codec)."""
    try:
        p = codec.parse(packet)
    except codec.MalformedPacket:
        return None
    if p.op != codec.BOOTREQUEST:
        return None
    opts = dict(p.options)
    arches = o.client_arches(p)
    return {
        "time": time.time(),
        "mac": p.mac or p.chaddr[: min(p.hlen, 16)].hex(":"),
        "xid": f"{p.xid:08x}",
        "secs": p.secs,
        "broadcast": bool(p.flags & codec.FLAG_BROADCAST),
        "type": MESSAGE_TYPES.get(opts.get(53, b"\x00")[0], "?"),
        "vendor_class": opts.get(60, b"").decode("ascii", "replace") or None,
        "user_class": opts.get(77, b"").decode("ascii", "replace") or None,
        "arch": arches[0] if arches else None,
        "options": {str(k): v.hex() for k, v in sorted(opts.items())},
    }


def in_named_namespace(name: str) -> bool:
    """True if this process runs in the named namespace /var/run/netns/NAME.
    (Comparing with PID 1's namespace is not possible in every container:
    /proc/1/ns may be unreadable, so the caller names the expected one.)"""
    try:
        ours = os.stat("/proc/self/ns/net")
        named = os.stat(f"/var/run/netns/{name}")
    except OSError:
        return False
    return (ours.st_dev, ours.st_ino) == (named.st_dev, named.st_ino)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("interface", help="interface to listen on (the lab bridge)")
    parser.add_argument("--netns", required=True, help="the lab namespace this must run in")
    parser.add_argument("--port", type=int, default=67)
    args = parser.parse_args(argv)
    if not in_named_namespace(args.netns):
        print(f"dhcpsniff: not inside namespace {args.netns!r}; refusing to listen", file=sys.stderr)
        return 2
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, args.interface.encode())
    sock.bind(("0.0.0.0", args.port))
    print(json.dumps({"listening": args.interface, "port": args.port}), flush=True)
    while True:
        packet, _ = sock.recvfrom(4096)
        info = decode(packet)
        if info is not None:
            print(json.dumps(info), flush=True)



class DhcpObserver:
    """Runs this module inside a lab namespace and reads what it saw."""

    def __init__(self, lab: Any, out_path: Any, *, interface: str | None = None, netns: str | None = None) -> None:
        from pathlib import Path

        self.lab = lab
        self.out_path = Path(out_path)
        self.interface = interface or lab.bridge
        self.netns = netns or lab.name
        self.proc: Any = None

    def start(self, timeout: float = 10) -> None:
        self.out_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.out_path, "wb") as out:
            self.proc = self.lab.popen(
                [sys.executable, "-m", "provisioner.lab.dhcpsniff", "--netns", self.netns, self.interface],
                netns=self.netns,
                stdout=out,
                stderr=out,
            )
        # Wait for the "listening" line so no early DISCOVER is missed.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.out_path.read_text(errors="replace")
            if '"listening"' in text:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"dhcpsniff did not start: {self.out_path.read_text(errors='replace')[-500:]}")

    def packets(self) -> list[dict[str, Any]]:
        out = []
        for line in self.out_path.read_text(errors="replace").splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict) and "mac" in item:
                out.append(item)
        return out

    def wait_for(self, mac: str, timeout: float, kind: str = "DISCOVER") -> dict[str, Any]:
        """The first packet of `kind` from `mac`; TimeoutError if none came."""
        deadline = time.monotonic() + timeout
        while True:
            for packet in self.packets():
                if packet["mac"] == mac.lower() and packet["type"] == kind:
                    return packet
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no DHCP{kind} from {mac} within {timeout:.0f}s")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc is not None:
            self.lab.stop(self.proc)


if __name__ == "__main__":
    raise SystemExit(main())
