"""Split capture.pcap into one hex file per DHCP packet (the UDP payload).

    python3 split_pcap.py   # in this directory, after capture.sh

A tiny pcap reader (Ethernet, IPv4, UDP only) so the golden files need no
third-party code to regenerate.
"""

import struct
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The UEFI machine (cc:00:03) is several clients in turn: QEMU's iPXE EFI
# ROM first, then EDK2's own PXE and HTTP boot; tell them apart by content.
CLIENTS = {"52:54:00:aa:00:01": "udhcpc", "52:54:00:bb:00:02": "ipxe-bios", "52:54:00:cc:00:03": "uefi"}
TYPES = {1: "discover", 2: "offer", 3: "request", 4: "decline", 5: "ack", 6: "nak", 7: "release", 8: "inform"}


def packets(data: bytes):
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic == 0xA1B2C3D4 else ">"
    i = 24
    while i + 16 <= len(data):
        _, _, incl, _ = struct.unpack(endian + "IIII", data[i : i + 16])
        frame = data[i + 16 : i + 16 + incl]
        i += 16 + incl
        if frame[12:14] != b"\x08\x00" or frame[23] != 17:
            continue
        ihl = (frame[14] & 0x0F) * 4
        udp = frame[14 + ihl :]
        yield udp[8:]


def option(payload: bytes, code: int) -> bytes:
    i = 240
    while i < len(payload) and payload[i] != 255:
        if payload[i] == 0:
            i += 1
            continue
        if payload[i] == code:
            return payload[i + 2 : i + 2 + payload[i + 1]]
        i += 2 + payload[i + 1]
    return b""


def client_name(payload: bytes) -> str:
    mac = payload[28:34].hex(":")
    who = CLIENTS.get(mac, mac.replace(":", ""))
    if who != "uefi":
        return who
    if option(payload, 77) == b"iPXE":
        return "ipxe-efi"
    return "edk2-http" if option(payload, 60).startswith(b"HTTPClient") else "edk2-pxe"


def main() -> None:
    for old in HERE.glob("*.hex"):
        old.unlink()
    seen: dict[str, int] = {}
    by_xid: dict[bytes, str] = {}
    for payload in packets((HERE / "capture.pcap").read_bytes()):
        if payload[0] == 1:
            side = by_xid[payload[4:8]] = client_name(payload)
        else:
            side = "dnsmasq-to-" + by_xid.get(payload[4:8], "unknown")
        kind = option(payload, 53)
        stem = f"{side}-{TYPES.get(kind[0] if kind else 0, 'bootp')}"
        seen[stem] = seen.get(stem, 0) + 1
        name = f"{stem}-{seen[stem]}.hex"
        text = payload.hex()
        (HERE / name).write_text("\n".join(text[j : j + 64] for j in range(0, len(text), 64)) + "\n")
        print(name, len(payload))


if __name__ == "__main__":
    main()
