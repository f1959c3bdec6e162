"""Machine specs and QEMU command lines, and one short QEMU start/stop inside
a lab namespace (no boot is awaited: that is tests/e2e/test_lab_infra.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from provisioner.lab.netns import LabNetwork, list_namespaces
from provisioner.lab.qemu import DiskSpec, Machine, MachineSpec, ovmf_files

MAC = "52:54:00:aa:bb:01"


class _NoLab:
    """argv() needs no network; starting would."""

    name = "none"


def _argv(spec: MachineSpec, tmp_path: Path) -> list[str]:
    return Machine(spec, _NoLab(), tmp_path).argv("tap9")  # type: ignore[arg-type]


def _devices(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]


def test_tcg_only_never_kvm(tmp_path):
    argv = _argv(MachineSpec(name="m", mac=MAC), tmp_path)
    assert argv[argv.index("-accel") + 1] == "tcg"
    # (Paths are left out: this test's own tmp_path contains "kvm".)
    assert not any("kvm" in a for a in argv if str(tmp_path) not in a)
    assert "-nodefaults" in argv  # no default user-mode NIC next to the tap
    assert argv[argv.index("-machine") + 1].startswith("pc,")


def test_nic_boots_first_then_disks_in_order(tmp_path):
    spec = MachineSpec(
        name="m",
        mac=MAC,
        disks=(DiskSpec(serial="S1"), DiskSpec(serial="S2", interface="nvme"),
               DiskSpec(serial="S3", interface="ide", wwn="0x5000c500a1b2c3d4"),
               DiskSpec(serial="S4", interface="scsi")),
    )
    argv = _argv(spec, tmp_path)
    devices = _devices(argv)
    assert devices[0] == f"virtio-net-pci,netdev=n0,mac={MAC},bootindex=1"
    assert "tap,id=n0,ifname=tap9,script=no,downscript=no" in argv
    assert "virtio-scsi-pci,id=scsi0" in devices
    disks = [d for d in devices if "drive=" in d]
    assert disks[0].startswith("virtio-blk-pci,drive=d0,serial=S1,bootindex=2")
    assert disks[1].startswith("nvme,drive=d1,serial=S2,bootindex=3")
    assert disks[2] == "ide-hd,drive=d2,serial=S3,bootindex=4,wwn=0x5000c500a1b2c3d4"
    assert disks[3] == "scsi-hd,drive=d3,serial=S4,bootindex=5,bus=scsi0.0"


def test_uefi_uses_ovmf_with_private_vars(tmp_path):
    argv = _argv(MachineSpec(name="m", mac=MAC, firmware="uefi", machine="q35", uuid="8c5e2d8e-2b0a-4d8f-9a51-0c6f3a1b2c3d"), tmp_path)
    code, _ = ovmf_files()
    flash = [argv[i + 1] for i, a in enumerate(argv) if a == "-drive" and "pflash" in argv[i + 1]]
    assert flash[0] == f"if=pflash,format=raw,unit=0,readonly=on,file={code}"
    assert flash[1] == f"if=pflash,format=raw,unit=1,file={tmp_path / 'm' / 'OVMF_VARS.fd'}"
    assert argv[argv.index("-uuid") + 1] == "8c5e2d8e-2b0a-4d8f-9a51-0c6f3a1b2c3d"


def test_without_the_nic_rom_uefi_uses_its_own_pxe_client(tmp_path):
    argv = _argv(MachineSpec(name="m", mac=MAC, firmware="uefi", nic_rom=False), tmp_path)
    assert _devices(argv)[0] == f"virtio-net-pci,netdev=n0,mac={MAC},bootindex=1,romfile="


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mac": "52:54:00:AA:BB:01"},
        {"mac": "53:54:00:aa:bb:01"},  # multicast
        {"firmware": "coreboot"},
        {"machine": "isapc"},
        {"nic": "virtio-net"},
        {"memory_mib": 64},
        {"uuid": "not-a-uuid"},
        {"disks": (DiskSpec(serial="S"), DiskSpec(serial="S"))},
        {"nic_rom": False},  # SeaBIOS has no PXE client without the ROM
    ],
)
def test_spec_rejects(kwargs):
    with pytest.raises(ValueError):
        MachineSpec(**{"name": "m", "mac": MAC, **kwargs})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": "1.5G"},
        {"interface": "sata"},
        {"serial": "x" * 21},
        {"serial": "a,b"},
        {"wwn": "0x5000c500a1b2c3d4"},  # virtio-blk has no WWN
        {"interface": "ide", "wwn": "5000c500a1b2c3d4"},
    ],
)
def test_disk_rejects(kwargs):
    with pytest.raises(ValueError):
        DiskSpec(**kwargs)


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU not installed")
def test_machine_starts_in_lab_and_stops(tmp_path):
    with LabNetwork.create(prefix="prov-test") as lab:
        spec = MachineSpec(name="m1", mac=MAC, firmware="uefi", disks=(DiskSpec(size="32M", serial="S1"),))
        vm = Machine(spec, lab, tmp_path)
        vm.start()
        assert (tmp_path / "m1" / "disk0.qcow2").is_file()
        assert (tmp_path / "m1" / "OVMF_VARS.fd").read_bytes() == ovmf_files()[1].read_bytes()
        deadline = time.monotonic() + 10
        while not Path(f"/proc/{vm.proc.pid}/comm").read_text().startswith("qemu") and time.monotonic() < deadline:
            time.sleep(0.05)
        ident = subprocess.run(["ip", "netns", "identify", str(vm.proc.pid)], capture_output=True, text=True)
        assert ident.stdout.strip() == lab.name
        cmdline = Path(f"/proc/{vm.proc.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[0] == b"qemu-system-x86_64" and b"tcg" in cmdline
        # QEMU opened the lab's tap: it carries the link once attached.
        lab.run(["ip", "link", "show", vm.tap])
        assert vm.running
        vm.stop()
        assert not vm.running
        vm.stop()  # idempotent
        name = lab.name
    assert name not in list_namespaces()
