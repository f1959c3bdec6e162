"""Who is asking and what it should boot: the PXE half of the reply logic.

Pure: a request in, a `Client` (class of firmware, arch, boot file) out.
The rules follow docs/contracts.md and PXE-NOTES section 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from provisioner.core.bootfiles import HTTP_ARCH_FILES, PXE_ARCH_FILES
from provisioner.core.mac import mac_hexhyp
from provisioner.net.dhcp import options as o
from provisioner.net.dhcp.codec import DhcpPacket

# 43.6 (discovery control) = 8: "boot file present, use it, no discovery or
# menu". Terminated by 0xFF as the PXE spec requires. Never 43.9: iPXE shows
# its PXE menu whenever 43.9 is present.
PXE_DISCOVERY_CONTROL = o.encode_encapsulated(((6, b"\x08"),), end=True)
# 175.176 = 1 tells iPXE not to wait 2 s for a ProxyDHCP offer.
IPXE_NO_PXEDHCP = o.encode_encapsulated(((o.IPXE_NO_PXEDHCP, b"\x01"),), end=False)


@dataclass(frozen=True)
class Client:
    mac: str
    kind: str  # "ipxe" | "pxe" | "http" | "plain"
    arch: int | None  # first option 93 value, or from the option 60 string
    pxe_vendor: bool  # option 60 starts "PXEClient"
    guid: bytes | None  # option 97, copied back verbatim
    bootfile: str | None  # None: nothing we can boot (plain DHCP or unknown arch)
    tftp: bool  # bootfile is a TFTP name (else an absolute URL)

    @property
    def netboot(self) -> bool:
        return self.bootfile is not None


def _arch_from_vendor(vendor: str) -> int | None:
    # "PXEClient:Arch:00007:UNDI:003016"; option 93 is preferred when present.
    parts = vendor.split(":")
    if len(parts) >= 3 and parts[1] == "Arch" and parts[2].isdigit():
        return int(parts[2])
    return None


def classify(p: DhcpPacket, mac: str, base_url: str) -> Client:
    """Raises MalformedPacket for impossible option 93 or 97."""
    vendor = o.vendor_class(p) or ""
    arches = o.client_arches(p)
    arch = arches[0] if arches else _arch_from_vendor(vendor)
    guid = o.client_guid(p)
    pxe_vendor = vendor.startswith("PXEClient")

    def client(kind: str, bootfile: str | None, tftp: bool) -> Client:
        return Client(mac, kind, arch, pxe_vendor, guid, bootfile, tftp)

    if o.is_ipxe(p):
        # Already iPXE: hand it the script URL, absolute because a relative
        # name fails once option 43 is present (smee).
        return client("ipxe", f"{base_url}/boot/ipxe?mac={mac_hexhyp(mac)}", False)
    if vendor.startswith("HTTPClient"):
        name = HTTP_ARCH_FILES.get(arch)
        return client("http", f"{base_url}/boot/{name}" if name else None, False)
    if pxe_vendor:
        # None for IA32, ARM and friends: no binary of ours runs there.
        return client("pxe", PXE_ARCH_FILES.get(arch), True)
    return client("plain", None, False)
