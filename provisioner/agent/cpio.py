"""A small writer for the newc cpio format the kernel unpacks as initramfs.

Written here rather than calling cpio(1) so that the archive is the same
byte for byte on every build (sorted entries, uid/gid 0, one fixed mtime,
inode numbers by position) and so that device nodes such as /dev/console can
be added without mknod on the build host.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable

TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    path: str  # relative, no leading slash
    mode: int  # full st_mode: type and permission bits
    data: bytes = b""  # file contents, or the link target of a symlink
    rdev: tuple[int, int] = (0, 0)  # (major, minor) for device nodes


def _sort_key(entry: Entry) -> tuple[str, ...]:
    # By path components, so every directory precedes what it contains.
    return tuple(entry.path.split("/"))


def _header(ino: int, entry: Entry, mtime: int, namesize: int, filesize: int) -> bytes:
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (
        ino, entry.mode, 0, 0, nlink, mtime, filesize,
        0, 0, entry.rdev[0], entry.rdev[1], namesize, 0,
    )
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def write_newc(entries: Iterable[Entry], out: BinaryIO, mtime: int = 0) -> None:
    """Write entries sorted by path, then the trailer. Duplicate paths are an
    error: the kernel would silently keep the last one."""
    ordered = sorted(entries, key=_sort_key)
    paths = [e.path for e in ordered]
    if len(set(paths)) != len(paths):
        dupes = sorted({p for p in paths if paths.count(p) > 1})
        raise ValueError(f"duplicate cpio paths: {', '.join(dupes)}")
    for ino, entry in enumerate(ordered, start=1):
        name = entry.path.encode() + b"\0"
        body = entry.data if (stat.S_ISREG(entry.mode) or stat.S_ISLNK(entry.mode)) else b""
        head = _header(ino, entry, mtime, len(name), len(body))
        out.write(head + name + _pad(len(head) + len(name)))
        out.write(body + _pad(len(body)))
    name = TRAILER.encode() + b"\0"
    head = _header(0, Entry(TRAILER, 0), 0, len(name), 0)
    out.write(head + name + _pad(len(head) + len(name)))


def entries_from_tree(root: Path) -> list[Entry]:
    """Every directory, file and symlink under root, owned by root.

    Permission bits come from the tree; anything else (sockets, fifos,
    devices) is refused, since a build tree should not contain them.
    """
    out: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            st = full.lstat()
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out.append(Entry(rel, stat.S_IFLNK | 0o777, os.readlink(full).encode()))
            elif stat.S_ISDIR(st.st_mode):
                out.append(Entry(rel, stat.S_IFDIR | perm))
            elif stat.S_ISREG(st.st_mode):
                out.append(Entry(rel, stat.S_IFREG | perm, full.read_bytes()))
            else:
                raise ValueError(f"{full}: unsupported file type in build tree")
    return out


def compressor() -> str:
    """zstd when the tool is there (smaller, faster to unpack; Debian's
    kernel has CONFIG_RD_ZSTD=y), else gzip, which every kernel can unpack."""
    return "zstd" if shutil.which("zstd") else "gzip"


def compress(raw: Path, dest: Path, method: str) -> None:
    if method == "zstd":
        # -T1: single-threaded keeps the output reproducible and the build
        # polite on a small shared machine. Level 12, not 19: on a 31 MB
        # modules archive 2 s instead of 19 s, for 7.0 MB instead of 6.3 MB,
        # which every image build and import with modules pays.
        subprocess.run(["zstd", "-q", "-12", "-T1", "-f", "-o", str(dest), str(raw)], check=True)
    elif method == "gzip":
        with raw.open("rb") as src, dest.open("wb") as f:
            # mtime=0 and no file name in the header: reproducible output.
            with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=9) as gz:
                shutil.copyfileobj(src, gz, 1 << 20)
    else:
        raise ValueError(f"unknown compression {method!r}")


def write_archive(entries: Iterable[Entry], dest: Path, mtime: int, method: str) -> None:
    """Write a compressed newc archive to dest (via a sibling .raw file)."""
    raw = dest.with_name(dest.name + ".raw")
    try:
        with raw.open("wb") as f:
            write_newc(entries, f, mtime)
        compress(raw, dest, method)
    finally:
        raw.unlink(missing_ok=True)
