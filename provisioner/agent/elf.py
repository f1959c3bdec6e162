"""Copy ELF executables into a root together with the libraries they need.

The idea of initramfs-tools' copy_exec, done without running ldd: ldd would
resolve against the build host's libraries, while the agent must carry the
libraries of the Debian packages it was built from. So we read PT_INTERP and
DT_NEEDED ourselves and look the sonames up inside the unpacked packages
(the "sysroot").
"""

from __future__ import annotations

import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

ELF_MAGIC = b"\x7fELF"
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB = 0, 1, 5

# Where Debian's dynamic loader looks without an ld.so.cache: the multiarch
# directories first. Libraries keep the path they have in their package, so
# the same search finds them inside the initramfs.
LIBRARY_DIRS = (
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib64",
    "usr/lib64",
    "lib",
    "usr/lib",
)


class ElfError(Exception):
    pass


@dataclass(frozen=True)
class ElfDeps:
    interpreter: str | None  # absolute path inside the target root, e.g. /lib64/ld-linux-x86-64.so.2
    needed: tuple[str, ...]  # sonames, in DT_NEEDED order


def is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def read_deps(path: Path) -> ElfDeps:
    """PT_INTERP and DT_NEEDED of a 64-bit little-endian ELF (all we ship)."""
    data = path.read_bytes()
    if data[:4] != ELF_MAGIC:
        raise ElfError(f"{path}: not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ElfError(f"{path}: only 64-bit little-endian ELF is supported")
    e_phoff, = struct.unpack_from("<Q", data, 0x20)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 0x36)

    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    dynamic: tuple[int, int] | None = None
    interp: str | None = None
    for i in range(e_phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, e_phoff + i * e_phentsize
        )
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
        elif p_type == PT_INTERP:
            interp = data[p_offset : p_offset + p_filesz].split(b"\0", 1)[0].decode()
    if dynamic is None:
        return ElfDeps(interp, ())  # static binary (busybox-static)

    needed_offsets: list[int] = []
    strtab_vaddr: int | None = None
    off, size = dynamic
    for pos in range(off, off + size, 16):
        tag, val = struct.unpack_from("<qQ", data, pos)
        if tag == DT_NULL:
            break
        if tag == DT_NEEDED:
            needed_offsets.append(val)
        elif tag == DT_STRTAB:
            strtab_vaddr = val
    if strtab_vaddr is None:
        raise ElfError(f"{path}: dynamic section without a string table")
    # DT_STRTAB holds a virtual address; map it back to a file offset.
    for vaddr, offset, filesz in loads:
        if vaddr <= strtab_vaddr < vaddr + filesz:
            strtab = offset + (strtab_vaddr - vaddr)
            break
    else:
        raise ElfError(f"{path}: string table outside any loaded segment")
    names = tuple(data[strtab + o : data.index(b"\0", strtab + o)].decode() for o in needed_offsets)
    return ElfDeps(interp, names)


def _inside(root: Path, rel: str | PurePosixPath) -> Path:
    return root / str(rel).lstrip("/")


def copy_path(sysroot: Path, rel: str, dest_root: Path, _depth: int = 0) -> Path:
    """Copy one path from sysroot into dest_root at the same place; a symlink
    is copied as a symlink and its target (resolved inside sysroot, never on
    the build host) is copied too. Returns the final regular file in sysroot."""
    if _depth > 16:
        raise ElfError(f"{rel}: too many levels of symbolic links")
    rel = rel.lstrip("/")
    src = sysroot / rel
    dst = dest_root / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
        target = os.readlink(src)
        if not dst.is_symlink() and not dst.exists():
            os.symlink(target, dst)
        if target.startswith("/"):
            resolved = PurePosixPath(target)
        else:
            resolved = PurePosixPath("/" + rel).parent / target
        return copy_path(sysroot, os.path.normpath(str(resolved)), dest_root, _depth + 1)
    if not src.is_file():
        raise ElfError(f"/{rel}: not found in the unpacked packages")
    if not dst.exists():
        shutil.copy2(src, dst)
    return src


def find_library(sysroot: Path, soname: str) -> str | None:
    for d in LIBRARY_DIRS:
        candidate = sysroot / d / soname
        if candidate.is_file() or candidate.is_symlink():
            return f"{d}/{soname}"
    return None


def copy_with_deps(sysroot: Path, paths: list[str], dest_root: Path) -> list[str]:
    """Copy executables and, transitively, their loader and libraries.

    Returns the library paths copied (relative, sorted). Raises ElfError
    naming every soname that no unpacked package provides, so a missing
    package shows up at build time rather than as a failed exec at boot.
    """
    queue = [p.lstrip("/") for p in paths]
    seen: set[str] = set()
    libs: set[str] = set()
    missing: set[str] = set()
    while queue:
        rel = queue.pop()
        if rel in seen:
            continue
        seen.add(rel)
        real = copy_path(sysroot, rel, dest_root)
        if not is_elf(real):
            continue
        deps = read_deps(real)
        if deps.interpreter:
            queue.append(deps.interpreter.lstrip("/"))
            libs.add(deps.interpreter.lstrip("/"))
        for soname in deps.needed:
            found = find_library(sysroot, soname)
            if found is None:
                missing.add(soname)
            else:
                libs.add(found)
                queue.append(found)
    if missing:
        raise ElfError("libraries not found in the unpacked packages: " + ", ".join(sorted(missing)))
    return sorted(libs)
