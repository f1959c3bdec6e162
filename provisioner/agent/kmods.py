"""Pick early-boot kernel modules and everything they need from a kernel tree.

modules.dep is generated with `depmod -b` (Debian's kernel package does not
ship it); the closure is taken over its hard dependencies plus the softdep
"pre:"/"post:" modules, which modprobe loads alongside and some drivers need
to work (e.g. crc32c for some storage drivers).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Drivers for the machines the appliance is meant for: NICs the agent must
# reach the network through and storage controllers whose disks it reports.
NIC_MODULES = (
    # Intel, Broadcom, Mellanox, Realtek and others found in servers.
    "e1000", "e1000e", "igb", "igc", "ixgbe", "i40e", "ice", "iavf", "ixgbevf",
    "bnxt_en", "tg3", "bnx2", "bnx2x", "mlx4_en", "mlx5_core", "r8169",
    "be2net", "qede", "sfc", "atlantic", "enic",
    # Virtual machines: KVM/QEMU (virtio and emulated models), VMware, Hyper-V.
    "virtio_net", "vmxnet3", "8139cp", "8139too", "pcnet32", "ne2k_pci", "hv_netvsc",
)
STORAGE_MODULES = (
    "ahci", "ata_piix", "ata_generic", "nvme", "sd_mod", "sr_mod",
    # SAS/RAID HBAs.
    "mpt3sas", "mptsas", "mptspi", "megaraid_sas", "smartpqi", "hpsa", "aacraid", "isci", "mpi3mr",
    "sym53c8xx",
    # Virtual machines.
    "virtio_blk", "virtio_scsi", "virtio_pci", "vmw_pvscsi", "hv_storvsc",
    # USB disks (boot sticks, some appliances' data disks).
    "xhci_pci", "ehci_pci", "ohci_pci", "uhci_hcd", "usb_storage", "uas",
)
EARLY_MODULES = NIC_MODULES + STORAGE_MODULES

_KO = re.compile(r"\.ko(\.(xz|zst|gz))?$")


def module_name(path: str) -> str:
    """kernel/drivers/net/virtio_net.ko(.xz) -> virtio_net (dashes as underscores,
    the way the kernel and modprobe treat them)."""
    return _KO.sub("", path.rsplit("/", 1)[-1]).replace("-", "_")


@dataclass(frozen=True)
class ModuleIndex:
    paths: dict[str, str]  # name -> path relative to lib/modules/KVER
    deps: dict[str, tuple[str, ...]]  # name -> names of hard dependencies
    softdeps: dict[str, tuple[str, ...]]  # name -> names from softdep pre:/post:
    builtin: frozenset[str]


def parse_modules_dep(text: str) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    paths: dict[str, str] = {}
    deps: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        mod, _, rest = line.partition(":")
        name = module_name(mod.strip())
        paths[name] = mod.strip()
        deps[name] = tuple(module_name(d) for d in rest.split())
    return paths, deps


def parse_softdeps(text: str) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) < 2 or words[0] != "softdep":
            continue
        out[words[1].replace("-", "_")] = tuple(
            w.replace("-", "_") for w in words[2:] if w not in ("pre:", "post:")
        )
    return out


def load_index(moddir: Path) -> ModuleIndex:
    """Read modules.dep, modules.softdep and modules.builtin of lib/modules/KVER."""
    paths, deps = parse_modules_dep((moddir / "modules.dep").read_text())
    softdep_file = moddir / "modules.softdep"
    softdeps = parse_softdeps(softdep_file.read_text()) if softdep_file.exists() else {}
    builtin_file = moddir / "modules.builtin"
    builtin = frozenset(
        module_name(line.strip()) for line in (builtin_file.read_text().splitlines() if builtin_file.exists() else [])
        if line.strip()
    )
    return ModuleIndex(paths, deps, softdeps, builtin)


@dataclass(frozen=True)
class Closure:
    modules: tuple[str, ...]  # sorted names to ship
    builtin: tuple[str, ...]  # wanted but built into the kernel
    absent: tuple[str, ...]  # wanted but not in this kernel at all


def closure(index: ModuleIndex, wanted: tuple[str, ...]) -> Closure:
    selected: set[str] = set()
    builtin: set[str] = set()
    absent: set[str] = set()
    queue = [w.replace("-", "_") for w in wanted]
    top = set(queue)
    while queue:
        name = queue.pop()
        if name in selected:
            continue
        if name not in index.paths:
            # A softdep may name a built-in or missing module; only the
            # modules asked for by name are worth reporting.
            if name in top:
                (builtin if name in index.builtin else absent).add(name)
            continue
        selected.add(name)
        queue.extend(index.deps.get(name, ()))
        queue.extend(index.softdeps.get(name, ()))
    return Closure(tuple(sorted(selected)), tuple(sorted(builtin)), tuple(sorted(absent)))


def depmod(root: Path, kver: str) -> None:
    tool = shutil.which("depmod") or "/sbin/depmod"
    subprocess.run([tool, "-b", str(root), kver], check=True)


# Files depmod does not write but modprobe and friends read.
_KEEP = ("modules.builtin", "modules.builtin.modinfo")


def build_module_tree(src_root: Path, kver: str, wanted: tuple[str, ...], dest_root: Path) -> Closure:
    """Copy the closure of `wanted` from src_root/lib/modules/KVER into
    dest_root/lib/modules/KVER and regenerate the indexes there, so that the
    modules.dep shipped describes exactly the modules shipped."""
    src = src_root / "lib/modules" / kver
    if not (src / "modules.dep").exists():
        depmod(src_root, kver)
    index = load_index(src)
    result = closure(index, wanted)
    dst = dest_root / "lib/modules" / kver
    for name in result.modules:
        rel = index.paths[name]
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)
    order = src / "modules.order"
    if order.exists():
        # Only the shipped modules, in the kernel's order.
        shipped = {index.paths[n] for n in result.modules}
        kept = [line for line in order.read_text().splitlines() if line.strip() in shipped]
        (dst / "modules.order").write_text("".join(line + "\n" for line in kept))
    for extra in _KEEP:
        if (src / extra).exists():
            shutil.copy2(src / extra, dst / extra)
    depmod(dest_root, kver)
    return result
