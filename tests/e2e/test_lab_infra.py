"""The lab itself, proven against real firmware before any appliance code is
involved: QEMU's iPXE NIC ROMs under SeaBIOS and OVMF must broadcast a
DHCPDISCOVER on the lab bridge with the PXE options the DHCP adapter keys on.

A listen-only observer (provisioner.lab.dhcpsniff) runs inside the lab
namespace; nothing answers, so each machine is stopped once it has been seen.
"""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
from pyroute2 import IPRoute

from provisioner.lab.netns import list_namespaces
from provisioner.lab.qemu import DiskSpec

# TCG on a shared 2-core box: SeaBIOS reaches DHCP in ~3 s, OVMF in ~7 s
# when idle; allow for a loaded CI runner.
DISCOVER_TIMEOUT = 120


@pytest.mark.parametrize(
    ("firmware", "machine", "arch", "ndi"),
    [
        ("bios", "pc", 0, "010201"),  # UNDI 2.1
        ("uefi", "pc", 7, "01030a"),  # UNDI 3.10
        ("bios", "q35", 0, "010201"),
        ("uefi", "q35", 7, "01030a"),
    ],
    ids=["seabios-pc", "ovmf-pc", "seabios-q35", "ovmf-q35"],
)
def test_firmware_sends_pxe_discover(lab, vm_factory, dhcp_observer, firmware, machine, arch, ndi):
    observer = dhcp_observer()
    started = time.monotonic()
    vm = vm_factory(
        f"vm-{firmware}-{machine}",
        firmware=firmware,
        machine=machine,
        disks=(DiskSpec(size="64M", serial="LAB-A"), DiskSpec(size="64M", serial="LAB-B", interface="nvme")),
        uuid="8c5e2d8e-2b0a-4d8f-9a51-0c6f3a1b2c3d",
    )
    packet = observer.wait_for(vm.spec.mac, DISCOVER_TIMEOUT)
    elapsed = time.monotonic() - started
    # The serial console carries iPXE's output on both firmwares.
    vm.wait_for_serial(rf"Configuring \(net0 {vm.spec.mac}\)", 30)
    vm.stop()

    assert packet["vendor_class"] == f"PXEClient:Arch:{arch:05d}:UNDI:{'002001' if arch == 0 else '003010'}"
    assert packet["user_class"] == "iPXE"  # QEMU's NIC ROMs are iPXE
    assert packet["arch"] == arch
    assert packet["options"]["94"] == ndi
    # Option 97 is type 0 plus the SMBIOS UUID in GUID byte order: the first
    # three fields little-endian (QEMU without -uuid gives sixteen zeros).
    assert packet["options"]["97"] == "00" + uuid.UUID(vm.spec.uuid).bytes_le.hex()
    # iPXE's own encapsulated options (175) identify an iPXE client too.
    assert "175" in packet["options"]
    print(f"{firmware}/{machine}: DHCPDISCOVER after {elapsed:.1f}s: {packet['vendor_class']}")


def test_lab_leaves_nothing_behind(vm_factory, lab, dhcp_observer):
    """After close(): no namespace, no tap, no QEMU or observer process."""
    observer = dhcp_observer()
    vm = vm_factory("vm-gone", no_reboot=True)
    observer.wait_for(vm.spec.mac, DISCOVER_TIMEOUT)
    name, pids, tap = lab.name, [vm.proc.pid, observer.proc.pid], vm.tap
    assert tap not in _root_links()  # the tap only ever lived in the lab
    lab.close()
    lab.close()  # idempotent; the fixture closes a third time

    assert name not in list_namespaces()
    for pid in pids:
        assert not _alive(pid), f"pid {pid} still running after lab.close()"
    assert vm.proc.returncode is not None
    assert tap not in _root_links()


def _root_links() -> set[str]:
    with IPRoute() as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def test_appliance_fixture_serves_inside_namespace(lab, appliance, hosts):
    """The appliance fixture: `provisioner serve` runs in the lab namespace,
    answers /healthz there, and the state CLI reads its (empty) store."""
    assert appliance.healthy()
    ident = subprocess.run(["ip", "netns", "identify", str(appliance.proc.pid)], capture_output=True, text=True)
    assert ident.stdout.strip() == lab.name
    assert hosts(appliance.config) == []


def test_proxy_config_next_to_a_site_namespace(lab, lab_config, appliance_factory):
    site = lab.add_site()
    config = lab_config("proxy")
    assert "pool" not in config.path.read_text()
    appliance = appliance_factory(config)
    # The site namespace reaches the appliance over the bridge.
    code, _ = lab.http_get(f"{appliance.url}/healthz", netns=site.netns)
    assert code == 200


def test_site_dhcp_serves_a_firmware_client(lab, site_dhcp, vm_factory):
    """The ProxyDHCP setting: dnsmasq in the site namespace leases an address
    to a lab VM across the bridge (it offers no boot file, so iPXE gets an
    address and nothing to boot)."""
    site = site_dhcp(first="10.77.0.50", last="10.77.0.59")
    vm = vm_factory("vm-site", firmware="bios")
    found = vm.wait_for_serial(r"net0: (10\.77\.0\.5\d)/255\.255\.255\.0", DISCOVER_TIMEOUT)
    vm.stop()
    assert any(vm.spec.mac in lease and found.group(1) in lease for lease in site.leases())
