"""Discovery with real firmware: QEMU machines (TCG) PXE-boot from the
appliance running in the lab namespace, run the agent, report their hardware
and power off; the host list then shows them `discovered` with their facts.

The machines differ on purpose (firmware, machine type, NIC model, disk
controllers) so the agent's drivers are exercised the way a mixed rack
would."""

from __future__ import annotations

import json

import pytest

from provisioner.lab.appliance import cli
from provisioner.lab.qemu import DiskSpec

# TCG boots of iPXE plus a Debian kernel take minutes; give them room.
BOOT_TIMEOUT = 1200


def disk_serials(host: dict) -> set[str]:
    return {d["serial"] for d in host["hardware"]["disks"] if d.get("serial")}


def assert_discovered(host: dict | None, mac: str, firmware: str) -> dict:
    assert host is not None, f"{mac} is not in the host list"
    assert host["state"] == "discovered"
    hw = host["hardware"]
    assert hw["firmware"] == firmware
    assert hw["memory_bytes"] and hw["memory_bytes"] > 512 << 20
    assert hw["cpu"]["count"] >= 1
    assert mac in {n["mac"] for n in hw["nics"]}
    assert any(n["mac"] == mac and n["driver"] for n in hw["nics"])
    return hw


def test_bios_and_uefi_machines_are_discovered(agent_dir, lab_config, appliance_factory, vm_factory, lab_host):
    config = lab_config("full", agent_dir=agent_dir)
    appliance_factory(config)
    bios = vm_factory(
        "bios-virtio",
        firmware="bios",
        uuid="6f1d2c3b-0000-4000-8000-00000000b105",
        disks=(DiskSpec(size="1G", serial="LAB-VIRTIO-A"), DiskSpec(size="2G", serial="LAB-NVME-B", interface="nvme")),
    )
    uefi = vm_factory(
        "uefi-q35",
        firmware="uefi",
        machine="q35",
        nic="e1000e",
        uuid="6f1d2c3b-0000-4000-8000-0000000ef105",
        disks=(DiskSpec(size="1G", serial="LAB-SATA-C", interface="ide", wwn="0x5000c500a1b2c3d4"),),
    )
    # Both boot at once (one core each); the agent powers each off when done.
    bios.wait_exit(timeout=BOOT_TIMEOUT)
    uefi.wait_exit(timeout=BOOT_TIMEOUT)

    host = lab_host(config, bios.spec.mac)
    hw = assert_discovered(host, bios.spec.mac, "bios")
    assert disk_serials(host) == {"LAB-VIRTIO-A", "LAB-NVME-B"}
    sizes = {d["serial"]: d["size_bytes"] for d in hw["disks"]}
    assert sizes == {"LAB-VIRTIO-A": 1 << 30, "LAB-NVME-B": 2 << 30}
    assert all(d["by_path"] for d in hw["disks"])
    assert hw["system"]["uuid"] == "6f1d2c3b-0000-4000-8000-00000000b105"
    assert hw["system"]["vendor"] == "QEMU"

    host = lab_host(config, uefi.spec.mac)
    hw = assert_discovered(host, uefi.spec.mac, "uefi")
    assert disk_serials(host) == {"LAB-SATA-C"}
    assert hw["disks"][0]["wwn"] and "5000c500a1b2c3d4" in hw["disks"][0]["wwn"]
    assert hw["system"]["uuid"] == "6f1d2c3b-0000-4000-8000-0000000ef105"


def test_proxy_mode_next_to_a_site_dhcp_server(agent_dir, lab_config, appliance_factory, vm_factory,
                                               lab_host, site_dhcp):
    # The site's DHCP server hands out addresses and knows nothing of PXE.
    site = site_dhcp()
    config = lab_config("proxy", agent_dir=agent_dir)
    appliance_factory(config)
    # An older NIC model and a SCSI disk behind virtio-scsi, on q35 this time.
    vm = vm_factory(
        "proxy-bios",
        firmware="bios",
        machine="q35",
        nic="rtl8139",
        disks=(DiskSpec(size="1G", serial="LAB-SCSI-A", interface="scsi", wwn="0x5000c50015ea71ad"),),
    )
    vm.wait_exit(timeout=BOOT_TIMEOUT)
    host = lab_host(config, vm.spec.mac)
    hw = assert_discovered(host, vm.spec.mac, "bios")
    assert disk_serials(host) == {"LAB-SCSI-A"}
    assert "5000c50015ea71ad" in (hw["disks"][0]["wwn"] or "")
    assert {n["driver"] for n in hw["nics"] if n["mac"] == vm.spec.mac} <= {"8139cp", "8139too"}
    assert any(vm.spec.mac in line for line in site.leases()), "the address came from the site's DHCP server"


@pytest.mark.parametrize("mode", ["full", "proxy"])
def test_uefi_firmware_pxe_chains_to_ipxe_over_tftp(mode, agent_dir, lab_config, appliance_factory, vm_factory,
                                                    lab_host, site_dhcp):
    """No iPXE option ROM: OVMF's own EDK2 PXE client asks DHCP (arch 7,
    no user class), fetches snponly.efi over TFTP, which runs iPXE on the
    firmware's network driver, which fetches the boot script over HTTP. In
    proxy mode the firmware takes its address from the site's server and
    asks the appliance for the boot file on port 4011 (PXE-NOTES 1)."""
    if mode == "proxy":
        site_dhcp()
    config = lab_config(mode, agent_dir=agent_dir)
    appliance_factory(config)
    vm = vm_factory("uefi-native-pxe", firmware="uefi", nic_rom=False,
                    disks=(DiskSpec(size="1G", serial="LAB-EDK2-A"),))
    vm.wait_exit(timeout=BOOT_TIMEOUT)
    host = lab_host(config, vm.spec.mac)
    assert_discovered(host, vm.spec.mac, "uefi")
    assert disk_serials(host) == {"LAB-EDK2-A"}
    events = cli(["events", "--json"], config)
    kinds = [(e["kind"], e["data"].get("file")) for e in json.loads(events.stdout)["events"]]
    assert ("tftp.sent", "snponly.efi") in kinds, "the firmware took iPXE over TFTP"
    if mode == "proxy":
        acks = [e for e in json.loads(events.stdout)["events"]
                if e["kind"] == "dhcp.ack" and e["mac"] == vm.spec.mac and "PXE boot server" in e["message"]]
        assert acks and acks[0]["data"]["bootfile"] == "snponly.efi", "the boot file came over port 4011"


def test_more_nic_models_and_disk_controllers(agent_dir, lab_config, appliance_factory, vm_factory, lab_host):
    config = lab_config("full", agent_dir=agent_dir)
    appliance_factory(config)
    old = vm_factory("bios-e1000-ide", firmware="bios", nic="e1000",
                     disks=(DiskSpec(size="1G", serial="LAB-PIIX-A", interface="ide"),))
    vmw = vm_factory("uefi-vmxnet3", firmware="uefi", machine="q35", nic="vmxnet3",
                     disks=(DiskSpec(size="1G", serial="LAB-NVME-Q", interface="nvme"),))
    old.wait_exit(timeout=BOOT_TIMEOUT)
    vmw.wait_exit(timeout=BOOT_TIMEOUT)
    for vm, firmware, serial, driver in ((old, "bios", "LAB-PIIX-A", "e1000"), (vmw, "uefi", "LAB-NVME-Q", "vmxnet3")):
        host = lab_host(config, vm.spec.mac)
        hw = assert_discovered(host, vm.spec.mac, firmware)
        assert disk_serials(host) == {serial}
        assert [n["driver"] for n in hw["nics"] if n["mac"] == vm.spec.mac] == [driver]
