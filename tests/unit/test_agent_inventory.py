"""The agent's sh inventory (agent-lib.sh) under busybox, on a fake sysfs.

The same functions run as PID 1's helpers in the initramfs; here SYSFS,
PROCFS and DEVDIR point at a tree built by the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

BUSYBOX = shutil.which("busybox")
LIB = resources.files("provisioner.agent") / "files" / "agent-lib.sh"
pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="busybox not installed")


def run_lib(snippet: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [BUSYBOX, "sh", "-c", f'. "{LIB}"; {snippet}'],
        capture_output=True, text=True, check=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **(env or {})},
    )  # fmt: skip
    return proc.stdout


@pytest.mark.parametrize(
    "value",
    ['plain', 'say "hi"', "back\\slash", "tab\tand\nnewline", "ctrl\x01\x1f", 'trail\\', "ünï"],
)
def test_json_string_always_parses(value: str) -> None:
    # Tabs and newlines become spaces; other control characters and
    # non-ASCII bytes are dropped, so the report is always valid JSON.
    expected = "".join(c for c in value.replace("\t", " ").replace("\n", " ") if " " <= c < "\x7f")
    assert json.loads(run_lib('json_string "$V"', {"V": value})) == expected


def test_json_str_null_for_empty() -> None:
    assert run_lib('json_str ""; json_str x') == 'null"x"'


def test_bootif_mac() -> None:
    assert run_lib("bootif_mac 01-52-54-00-AB-CD-EF") == "52:54:00:ab:cd:ef"


def write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


def link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


def fake_machine(root: Path) -> dict[str, str]:
    sys, proc, dev = root / "sys", root / "proc", root / "dev"
    pci = "devices/pci0000:00"

    # virtio-blk disk
    virtio = sys / pci / "0000:00:04.0/virtio1"
    vda = virtio / "block/vda"
    write(vda / "size", "131072\n")
    write(vda / "serial", "SERIAL1\n")
    write(vda / "removable", "0\n")
    write(vda / "ro", "0\n")
    write(vda / "queue/rotational", "1\n")
    write(virtio / "vendor", "0x1af4\n")
    link(vda / "device", "../../../virtio1")
    link(sys / "block/vda", f"../{pci}/0000:00:04.0/virtio1/block/vda")

    # SATA disk behind AHCI: serial from VPD page 0x80, padded model/vendor
    scsi = sys / pci / "0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0"
    sda = scsi / "block/sda"
    write(sda / "size", "2048\n")
    write(sda / "removable", "0\n")
    write(sda / "ro", "1\n")
    write(sda / "queue/rotational", "0\n")
    write(scsi / "model", "Samsung SSD 860 \n")
    write(scsi / "vendor", "ATA     \n")
    write(scsi / "vpd_pg80", b"\x00\x80\x00\x14S3Z9NB0K123456      ")
    write(scsi / "wwid", "naa.5002538e40a1b2c3\n")
    link(sda / "device", "../../../2:0:0:0")
    link(sys / "block/sda", f"../{pci}/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0/block/sda")
    write(sda / "sda1/partition", "1\n")

    # NVMe namespace
    ctrl = sys / pci / "0000:00:1d.0/0000:3d:00.0/nvme/nvme0"
    ns = ctrl / "nvme0n1"
    write(ns / "size", "4096\n")
    write(ns / "nsid", "1\n")
    write(ns / "wwid", "eui.0025388b71b2c3d4\n")
    write(ns / "removable", "0\n")
    write(ns / "ro", "0\n")
    write(ns / "queue/rotational", "0\n")
    write(ctrl / "serial", "  NVME-SN-1  \n")
    write(ctrl / "model", 'Fast "NVMe" \\ Drive\n')
    link(ns / "device", "../../nvme0")
    link(sys / "block/nvme0n1", f"../{pci}/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/nvme0n1")

    # Not disks: a loop device and a disk-less block device
    write(sys / "devices/virtual/block/loop0/size", "0\n")
    link(sys / "block/loop0", "../devices/virtual/block/loop0")

    # NICs: one virtio with link, lo without a device
    nicdev = sys / pci / "0000:00:03.0/virtio0"
    eth0 = nicdev / "net/eth0"
    write(eth0 / "address", "52:54:00:12:34:56\n")
    write(eth0 / "carrier", "1\n")
    write(eth0 / "speed", "-1\n")
    link(eth0 / "device", "../../../virtio0")
    (sys / "bus/virtio/drivers/virtio_net").mkdir(parents=True)
    link(nicdev / "driver", "../../../../bus/virtio/drivers/virtio_net")
    link(sys / "class/net/eth0", f"../../{pci}/0000:00:03.0/virtio0/net/eth0")
    write(sys / "devices/virtual/net/lo/address", "00:00:00:00:00:00\n")
    link(sys / "class/net/lo", "../../devices/virtual/net/lo")

    # Memory blocks of 128 MiB, two online, one offline
    mem = sys / "devices/system/memory"
    write(mem / "block_size_bytes", "8000000\n")
    write(mem / "memory0/online", "1\n")
    write(mem / "memory1/online", "1\n")
    write(mem / "memory2/online", "0\n")

    dmi = sys / "class/dmi/id"
    write(dmi / "product_uuid", "8D3E2A52-3C41-4F6E-9A57-0B1C2D3E4F50\n")
    write(dmi / "sys_vendor", "QEMU\n")
    write(dmi / "product_name", "Standard PC (i440FX + PIIX, 1996)\n")
    write(dmi / "product_serial", "\n")

    write(proc / "meminfo", "MemTotal:        1000000 kB\nMemFree: 1 kB\n")
    write(proc / "cpuinfo", "processor\t: 0\nmodel name\t: QEMU Virtual CPU\n\nprocessor\t: 1\nmodel name\t: QEMU Virtual CPU\n")

    # Device nodes: plain files that wipefs can probe
    for name, size in (("vda", 1 << 20), ("nvme0n1", 1 << 20), ("sda1", 1 << 20)):
        write(dev / name, b"")
        os.truncate(dev / name, size)
    write(dev / "sda", b"")
    os.truncate(dev / "sda", 1 << 20)
    return {"SYSFS": str(sys), "PROCFS": str(proc), "DEVDIR": str(dev)}


def test_hardware_json_matches_the_contract(tmp_path: Path) -> None:
    env = fake_machine(tmp_path)
    mkfs = shutil.which("mkfs.ext4")
    if mkfs:
        # A filesystem on the partition: its signature belongs to sda.
        subprocess.run([mkfs, "-q", "-F", str(Path(env["DEVDIR"]) / "sda1")], check=True)
    hw = json.loads(run_lib('hardware_json 52:54:00:12:34:56 6.1.0-56-amd64', env))

    disks = {d["name"]: d for d in hw["disks"]}
    assert sorted(disks) == ["nvme0n1", "sda", "vda"]
    assert disks["vda"] == {
        "name": "vda", "size_bytes": 131072 * 512, "serial": "SERIAL1", "wwn": None, "model": None,
        "vendor": "0x1af4", "by_path": "pci-0000:00:04.0", "rotational": True, "removable": False,
        "readonly": False, "transport": "virtio", "signatures": [],
    }  # fmt: skip
    assert disks["sda"] == {
        "name": "sda", "size_bytes": 2048 * 512, "serial": "S3Z9NB0K123456", "wwn": "0x5002538e40a1b2c3",
        "model": "Samsung SSD 860", "vendor": "ATA", "by_path": "pci-0000:00:1f.2-ata-3",
        "rotational": False, "removable": False, "readonly": True, "transport": "sata",
        "signatures": ["ext4"] if mkfs else [],
    }  # fmt: skip
    assert disks["nvme0n1"]["serial"] == "NVME-SN-1"
    assert disks["nvme0n1"]["model"] == 'Fast "NVMe" \\ Drive'
    assert disks["nvme0n1"]["wwn"] == "eui.0025388b71b2c3d4"
    assert disks["nvme0n1"]["by_path"] == "pci-0000:3d:00.0-nvme-1"
    assert disks["nvme0n1"]["transport"] == "nvme"

    assert hw["nics"] == [
        {"name": "eth0", "mac": "52:54:00:12:34:56", "driver": "virtio_net", "link": True,
         "speed_mbps": None, "boot": True},
    ]  # fmt: skip
    assert hw["memory_bytes"] == 2 * 128 * 1024 * 1024
    assert hw["cpu"] == {"count": 2, "model": "QEMU Virtual CPU"}
    assert hw["system"] == {
        "uuid": "8d3e2a52-3c41-4f6e-9a57-0b1c2d3e4f50", "vendor": "QEMU",
        "product": "Standard PC (i440FX + PIIX, 1996)", "serial": None,
    }  # fmt: skip
    assert hw["firmware"] == "bios"
    assert hw["kernel"] == "6.1.0-56-amd64"


def test_memory_falls_back_to_meminfo(tmp_path: Path) -> None:
    env = fake_machine(tmp_path)
    shutil.rmtree(Path(env["SYSFS"]) / "devices/system/memory")
    assert run_lib("memory_bytes", env) == str(1000000 * 1024)


def test_uefi_when_efi_directory_exists(tmp_path: Path) -> None:
    env = fake_machine(tmp_path)
    (Path(env["SYSFS"]) / "firmware/efi").mkdir(parents=True)
    assert run_lib("firmware_type", env) == "uefi"


INIT = resources.files("provisioner.agent") / "files" / "init"


def test_init_parses_the_kernel_command_line(tmp_path: Path) -> None:
    (tmp_path / "cmdline").write_text(
        "BOOT_IMAGE=vmlinuz initrd=agent.cpio initrd=modules.cpio provisioner.url=http://10.0.0.1:8080/ "
        "provisioner.token=abc-123 provisioner.mode=discover BOOTIF=01-52-54-00-AB-CD-EF console=ttyS0 *\n"
    )
    out = run_lib(
        f'AGENT_LIB="{LIB}" AGENT_NO_MAIN=1 . "{INIT}"; parse_cmdline; '
        'printf "%s|%s|%s|%s" "$URL" "$TOKEN" "$MODE" "$BOOT_MAC"',
        {"PROCFS": str(tmp_path)},
    )
    assert out == "http://10.0.0.1:8080|abc-123|discover|52:54:00:ab:cd:ef"


def test_t10_identifier_is_not_a_wwn(tmp_path: Path) -> None:
    env = fake_machine(tmp_path)
    scsi = Path(env["SYSFS"]) / "devices/pci0000:00/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0"
    (scsi / "wwid").write_text("t10.ATA     QEMU HARDDISK                           QM00001\n")
    assert run_lib("disk_wwn sda", env) == ""
