"""QEMU machines for the lab: real SeaBIOS/OVMF firmware with QEMU's iPXE
NIC ROMs, emulated with TCG only (no KVM) so the lab runs the same in CI.

QEMU runs *inside* the lab namespace (`ip netns exec`), so the tap it opens
is the one the lab created there, enslaved to the lab bridge. `-nodefaults`
drops QEMU's default user-mode NIC: the lab tap is the machine's only network.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from provisioner.lab.netns import LabError, LabNetwork

QEMU = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"

# Debian's `ovmf` package. The 4M pair is what Debian recommends (the 2M
# build has little room for variables); CODE and VARS must come from the
# same pair. Non-secure-boot builds, so no SMM is needed on `pc`.
OVMF_PAIRS = (
    (Path("/usr/share/OVMF/OVMF_CODE_4M.fd"), Path("/usr/share/OVMF/OVMF_VARS_4M.fd")),
    (Path("/usr/share/OVMF/OVMF_CODE.fd"), Path("/usr/share/OVMF/OVMF_VARS.fd")),
)

FIRMWARES = ("bios", "uefi")
MACHINE_TYPES = ("pc", "q35")
DISK_INTERFACES = ("virtio", "nvme", "ide", "scsi")
NIC_MODELS = ("virtio-net-pci", "e1000", "e1000e", "rtl8139", "vmxnet3")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_SIZE = re.compile(r"^[1-9][0-9]*[KMGT]?$")
# The longest serial every emulated controller here accepts (virtio-blk,
# NVMe and ATA all cap at 20 characters).
MAX_SERIAL = 20
# CSI sequences, charset selection and reset, as SeaBIOS/OVMF/iPXE emit them.
_ANSI = re.compile(r"\x1b\[[0-9;?=]*[A-Za-z]|\x1b[()][0-9A-B]|\x1bc")


@dataclass(frozen=True)
class DiskSpec:
    size: str = "1G"  # qemu-img size syntax: 512M, 2G, ...
    serial: str = "DISK0"
    interface: str = "virtio"
    wwn: str | None = None  # 0x-prefixed 64-bit hex; only ide and scsi carry one

    def __post_init__(self) -> None:
        if not _SIZE.match(self.size):
            raise ValueError(f"disk size {self.size!r} is not like 512M or 2G")
        if self.interface not in DISK_INTERFACES:
            raise ValueError(f"disk interface {self.interface!r} is not one of {DISK_INTERFACES}")
        if not self.serial or len(self.serial) > MAX_SERIAL or not self.serial.isprintable() or "," in self.serial:
            raise ValueError(f"disk serial {self.serial!r} must be 1-{MAX_SERIAL} printable characters without ','")
        if self.wwn is not None:
            if self.interface not in ("ide", "scsi"):
                raise ValueError(f"QEMU's {self.interface} disk has no WWN property; use ide or scsi")
            try:
                value = int(self.wwn, 16)
            except ValueError:
                raise ValueError(f"wwn {self.wwn!r} is not hexadecimal") from None
            if not self.wwn.startswith("0x") or not 0 < value < 2**64:
                raise ValueError(f"wwn {self.wwn!r} must be 0x plus up to 16 hex digits")


@dataclass(frozen=True)
class MachineSpec:
    name: str
    mac: str
    firmware: str = "bios"
    nic: str = "virtio-net-pci"
    # 1 GiB boots OVMF + iPXE + a Debian kernel with a small initrd; the agent
    # initrd is unpacked into RAM, so raise this if it grows past ~300 MiB.
    memory_mib: int = 1024
    disks: tuple[DiskSpec, ...] = ()
    uuid: str | None = None  # SMBIOS system UUID
    machine: str = "pc"
    cpus: int = 1
    no_reboot: bool = False  # exit QEMU instead of rebooting the guest
    # False leaves out the NIC's iPXE option ROM, so UEFI firmware uses its
    # own PXE client (EDK2 with its virtio-net driver): the path a server's
    # UEFI takes, through TFTP and snponly.efi. SeaBIOS cannot PXE without it.
    nic_rom: bool = True

    def __post_init__(self) -> None:
        if not re.match(r"^[a-z0-9][a-z0-9-]{0,30}$", self.name):
            raise ValueError(f"machine name {self.name!r}: lowercase letters, digits and '-'")
        if not _MAC.match(self.mac):
            raise ValueError(f"mac {self.mac!r} is not lowercase aa:bb:cc:dd:ee:ff")
        if int(self.mac[:2], 16) & 1:
            raise ValueError(f"mac {self.mac!r} is a multicast address")
        if not self.nic_rom and self.firmware != "uefi":
            raise ValueError("nic_rom=False needs firmware='uefi' (SeaBIOS has no PXE client of its own)")
        if self.firmware not in FIRMWARES:
            raise ValueError(f"firmware {self.firmware!r} is not one of {FIRMWARES}")
        if self.nic not in NIC_MODELS:
            raise ValueError(f"nic {self.nic!r} is not one of {NIC_MODELS}")
        if self.machine not in MACHINE_TYPES:
            raise ValueError(f"machine {self.machine!r} is not one of {MACHINE_TYPES}")
        if self.memory_mib < 128:
            raise ValueError("memory_mib below 128 cannot boot iPXE and a kernel")
        if self.uuid is not None and not _UUID.match(self.uuid):
            raise ValueError(f"uuid {self.uuid!r} is not a lowercase UUID")
        serials = [d.serial for d in self.disks]
        if len(set(serials)) != len(serials):
            raise ValueError(f"disk serials must be distinct: {serials}")


def ovmf_files() -> tuple[Path, Path]:
    for code, vars_ in OVMF_PAIRS:
        if code.is_file() and vars_.is_file():
            return code, vars_
    raise LabError("OVMF not found (install Debian package ovmf)")


@dataclass
class Machine:
    """One QEMU VM on a lab network. Disk images, the OVMF variable store and
    the serial log live under workdir/<name>/."""

    spec: MachineSpec
    lab: LabNetwork
    workdir: Path
    tap: str | None = None
    proc: subprocess.Popen | None = None
    started_at: float | None = None
    _files: dict[str, Path] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        return self.workdir / self.spec.name

    @property
    def serial_log(self) -> Path:
        return self.dir / "serial.log"

    @property
    def qemu_log(self) -> Path:
        return self.dir / "qemu.log"

    def disk_path(self, index: int) -> Path:
        return self.dir / f"disk{index}.qcow2"

    # --- building the command line ---

    def argv(self, tap: str) -> list[str]:
        """The QEMU command line. Pure apart from reading which OVMF exists."""
        s = self.spec
        args = [
            QEMU,
            "-name", s.name,
            # TCG only: CI runners have no /dev/kvm, and the lab must behave
            # the same everywhere.
            "-machine", f"{s.machine},graphics=off",
            "-accel", "tcg",
            "-m", str(s.memory_mib),
            "-smp", str(s.cpus),
            "-nodefaults",
            "-display", "none",
            # graphics=off above makes SeaBIOS mirror its console (and
            # iPXE's, which prints through the BIOS) onto the serial port.
            "-serial", f"file:{self.serial_log}",
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
            "-device", f"{s.nic},netdev=n0,mac={s.mac},bootindex=1" + ("" if s.nic_rom else ",romfile="),
            "-boot", "order=n,menu=off",
        ]
        if s.uuid:
            args += ["-uuid", s.uuid]
        if s.no_reboot:
            args.append("-no-reboot")
        if s.firmware == "uefi":
            code, _ = ovmf_files()
            args += [
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                "-drive", f"if=pflash,format=raw,unit=1,file={self.dir / 'OVMF_VARS.fd'}",
            ]
        if any(d.interface == "scsi" for d in s.disks):
            args += ["-device", "virtio-scsi-pci,id=scsi0"]
        for i, disk in enumerate(s.disks):
            args += ["-drive", f"if=none,id=d{i},file={self.disk_path(i)},format=qcow2"]
            props = f"drive=d{i},serial={disk.serial},bootindex={i + 2}"
            if disk.wwn:
                props += f",wwn={disk.wwn}"
            device = {
                "virtio": "virtio-blk-pci",
                "nvme": "nvme",
                "ide": "ide-hd",
                "scsi": "scsi-hd",
            }[disk.interface]
            if disk.interface == "scsi":
                props += ",bus=scsi0.0"
            args += ["-device", f"{device},{props}"]
        return args

    # --- lifecycle ---

    def prepare(self) -> None:
        """Create the per-VM directory, disk images and OVMF variable store."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for i, disk in enumerate(self.spec.disks):
            path = self.disk_path(i)
            if not path.exists():
                subprocess.run(
                    [QEMU_IMG, "create", "-q", "-f", "qcow2", str(path), disk.size],
                    check=True,
                    capture_output=True,
                    timeout=60,
                )
        if self.spec.firmware == "uefi":
            vars_copy = self.dir / "OVMF_VARS.fd"
            if not vars_copy.exists():
                # Each VM writes its own boot variables; never the shared file.
                shutil.copyfile(ovmf_files()[1], vars_copy)

    def start(self) -> None:
        if self.proc is not None:
            raise LabError(f"{self.spec.name} already started")
        self.prepare()
        self.serial_log.write_bytes(b"")
        self.tap = self.lab.add_tap()
        with open(self.qemu_log, "wb") as qlog:
            self.proc = self.lab.popen(self.argv(self.tap), stdout=qlog, stderr=subprocess.STDOUT)
        self.started_at = time.monotonic()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def serial_text(self) -> str:
        try:
            return self.serial_log.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def serial_clean(self) -> str:
        """The serial log without ANSI sequences, \r turned into line breaks:
        firmware consoles redraw lines, which would split patterns."""
        text = _ANSI.sub("", self.serial_text())
        return text.replace("\r\n", "\n").replace("\r", "\n")

    def serial_tail(self, lines: int = 40) -> str:
        kept = [line for line in self.serial_clean().splitlines() if line.strip()]
        return "\n".join(kept[-lines:])

    def wait_for_serial(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str]:
        """Wait until the cleaned serial log (serial_clean) matches pattern;
        LabError on timeout or if QEMU exits first."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.serial_clean())
            if found:
                return found
            if self.proc is not None and self.proc.poll() is not None:
                # One last read: QEMU may have flushed the line as it exited.
                found = regex.search(self.serial_clean())
                if found:
                    return found
                raise LabError(
                    f"{self.spec.name}: QEMU exited ({self.proc.returncode}) before "
                    f"{regex.pattern!r} appeared\n{self.failure_context()}"
                )
            if time.monotonic() >= deadline:
                raise LabError(
                    f"{self.spec.name}: {regex.pattern!r} not on serial after {timeout:.0f}s\n"
                    f"{self.failure_context()}"
                )
            time.sleep(0.5)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the guest to power off (QEMU exits); LabError on timeout."""
        if self.proc is None:
            raise LabError(f"{self.spec.name} was never started")
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise LabError(
                f"{self.spec.name}: still running after {timeout:.0f}s\n{self.failure_context()}"
            ) from None

    def stop(self) -> int | None:
        """Stop QEMU by PID (TERM, then KILL). Idempotent."""
        if self.proc is None:
            return None
        return self.lab.stop(self.proc)

    def failure_context(self, lines: int = 30) -> str:
        qemu = ""
        try:
            qemu = self.qemu_log.read_text(errors="replace").strip()
        except FileNotFoundError:
            pass
        out = f"--- last {lines} serial lines of {self.spec.name} ---\n{self.serial_tail(lines)}"
        if qemu:
            out += f"\n--- qemu output ---\n{qemu[-2000:]}"
        return out
