"""The kernel and modules.cpio of an image, from a root tree (a build's
root, an unpacked kernel package, or the parts of an imported rootfs that
hold kernels and modules).

modules.cpio carries the early-boot NIC and storage drivers of that exact
kernel (the agent's list, plus what a definition adds), so that the generic
agent.cpio can reach the network and the disks under the image's kernel.
"""

from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path

from provisioner.agent import cpio, kmods
from provisioner.errors import InvalidInput

_VMLINUZ = re.compile(r"^vmlinuz-(.+)$")
# What the agent needs under an image's kernel to lay that image down and
# start it: mount the squashfs (from a file or a partition), put the config
# layer over it, and make or check data filesystems.
DEPLOY_MODULES = ("squashfs", "overlay", "loop", "ext4")


class KernelError(InvalidInput):
    """No usable kernel, or more than one to choose from."""


def bzimage_version(path: Path) -> str | None:
    """The version of a Linux bzImage, from the banner its setup header
    points at (boot protocol 2.00+: a pointer at 0x20E, relative to 0x200):
    "6.1.0-56-amd64 (debian-kernel@...) #1 SMP ...". Other bzImage-format
    files (iPXE's .lkrn) carry no "#N" build number there and give None."""
    try:
        with open(path, "rb") as f:
            head = f.read(0x10000)
    except OSError:
        return None
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        return None
    (offset,) = struct.unpack_from("<H", head, 0x20E)
    start = offset + 0x200
    if offset == 0 or start >= len(head):
        return None
    text = head[start:start + 256].split(b"\0", 1)[0].decode("ascii", "replace")
    if not re.search(r" #\d+", text):
        return None
    return text.split(" ", 1)[0] or None


def modules_dir(root: Path, kver: str) -> Path | None:
    for rel in ("lib/modules", "usr/lib/modules"):
        d = root / rel / kver
        if d.is_dir():
            return d
    return None


def find_kernel(root: Path) -> tuple[str, Path] | None:
    """(version, path) of the one kernel in root/boot. With several, the one
    whose modules are present; still several is an error."""
    boot = root / "boot"
    found = []
    if boot.is_dir():
        for p in sorted(boot.iterdir()):
            m = _VMLINUZ.match(p.name)
            if m and p.is_file() and not p.name.endswith((".old", ".bak", ".dpkg-tmp")):
                found.append((m.group(1), p))
    if len(found) > 1:
        with_modules = [(v, p) for v, p in found if modules_dir(root, v)]
        if len(with_modules) == 1:
            return with_modules[0]
        raise KernelError(
            "several kernels in /boot: " + ", ".join(v for v, _ in found) + "; keep one, or name one with --kernel"
        )
    return found[0] if found else None


def is_bzimage(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(0x210)
    except OSError:
        return False
    return len(head) >= 0x206 and head[0x202:0x206] == b"HdrS"


def write_kernel(src: Path, dest: Path) -> None:
    if not is_bzimage(src):
        raise KernelError(f"{src.name}: not an x86 Linux kernel image (no bzImage header)")
    shutil.copyfile(src, dest)


def write_modules_cpio(root: Path, kver: str, dest: Path, work: Path, *, mtime: int,
                       extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """modules.cpio with the early modules of kernel `kver` found under root;
    an empty archive if root has no modules for it (a kernel with the
    drivers built in, or an import that names its own kernel)."""
    found = modules_dir(root, kver)
    if found is None:
        cpio.write_archive([], dest, mtime, cpio.compressor())
        return ()
    src_root = found.parent.parent.parent  # .../lib/modules/KVER -> ...
    mod_root = work / "modules"
    chosen = kmods.build_module_tree(src_root, kver, kmods.EARLY_MODULES + DEPLOY_MODULES + tuple(extra), mod_root)
    missing = [m for m in extra if m.replace("-", "_") in chosen.absent]
    if missing:
        raise KernelError(f"build.modules: not in kernel {kver}: {', '.join(missing)}")
    cpio.write_archive(cpio.entries_from_tree(mod_root), dest, mtime, cpio.compressor())
    shutil.rmtree(mod_root, ignore_errors=True)
    return chosen.modules
