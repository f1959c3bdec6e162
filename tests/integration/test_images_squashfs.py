"""Squashfs images made and read by the real tools (mksquashfs, tar2sqfs,
unsquashfs): what they list, that the same input gives the same bytes
whatever the clock says, and the refusals of a bad user image."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from provisioner.errors import InvalidInput
from provisioner.images import squashfs, tarmerge

pytestmark = pytest.mark.skipif(
    not all(shutil.which(c) for c in ("mksquashfs", "unsquashfs", "tar2sqfs")),
    reason="needs squashfs-tools and squashfs-tools-ng",
)

T = 1_700_000_000
CAP = b"\x01\x00\x00\x02\x80\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"


def listing(image: Path) -> dict[str, tuple[str, str, str]]:
    """path -> (ls mode, uid/gid, symlink target or '') from unsquashfs -lln."""
    out = subprocess.run(["unsquashfs", "-lln", str(image)], capture_output=True, text=True, check=True).stdout
    entries = {}
    for line in out.splitlines():
        mode, owner, rest = line.split(None, 2)
        name = rest.split(" squashfs-root", 1)[1]
        name, _, target = name.partition(" -> ")
        entries[name.lstrip("/")] = (mode, owner, target)
    return entries


def make_tree(root: Path) -> None:
    (root / "usr/lib/modules/6.1/kernel").mkdir(parents=True)
    (root / "usr/lib/modules/6.1/kernel/e1000.ko").write_bytes(b"ko")
    (root / "usr/lib/os-release").write_bytes(b"ID=debian\n")
    (root / "lib").symlink_to("usr/lib")
    (root / "etc").mkdir()
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    (root / "bin").mkdir()
    (root / "bin/su").write_bytes(b"su")
    (root / "bin/su").chmod(0o4755)
    (root / "home/u").mkdir(parents=True)
    (root / "home/u/notes").write_bytes(b"hi")
    os.chown(root / "home/u/notes", 1000, 1001)
    os.link(root / "bin/su", root / "bin/su2")
    os.setxattr(root / "bin/su", "security.capability", CAP)
    root.chmod(0o755)


def test_from_tree_lists_and_is_reproducible(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root)
    a, b = tmp_path / "a.sqfs", tmp_path / "b.sqfs"
    squashfs.from_tree(root, a, mtime=T)
    time.sleep(1.1)  # a different wall clock, and different times in the tree
    os.utime(root / "bin/su", (T + 99, T + 99))
    squashfs.from_tree(root, b, mtime=T)
    assert a.read_bytes() == b.read_bytes()
    assert not (tmp_path / "a.sqfs.part").exists()
    entries = listing(a)
    assert sorted(entries) == ["", "bin", "bin/su", "bin/su2", "etc", "etc/os-release", "home", "home/u",
                               "home/u/notes", "lib", "usr", "usr/lib", "usr/lib/modules", "usr/lib/modules/6.1",
                               "usr/lib/modules/6.1/kernel", "usr/lib/modules/6.1/kernel/e1000.ko",
                               "usr/lib/os-release"]
    assert entries["bin/su"] == ("-rwsr-xr-x", "0/0", "")
    assert entries["home/u/notes"] == ("-rw-r--r--", "1000/1001", "")
    assert entries["lib"] == ("lrwxrwxrwx", "0/0", "usr/lib")
    mkfs = subprocess.run(["unsquashfs", "-mkfs-time", str(a)], capture_output=True, text=True, check=True)
    assert mkfs.stdout.strip() == str(T)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """make_tree's tree as a squashfs."""
    root = tmp_path / "root"
    make_tree(root)
    squashfs.from_tree(root, tmp_path / "tree.sqfs", mtime=T)
    return tmp_path / "tree.sqfs"


def test_unpack_keeps_links_owners_and_xattrs(tmp_path: Path, image: Path) -> None:
    out = tmp_path / "out"
    squashfs.unpack(image, out)
    st = (out / "bin/su").stat()
    assert (st.st_mode & 0o7777, st.st_nlink, st.st_mtime) == (0o4755, 2, T)
    assert st.st_ino == (out / "bin/su2").stat().st_ino
    assert os.getxattr(out / "bin/su", "security.capability") == CAP
    assert ((out / "home/u/notes").stat().st_uid, (out / "home/u/notes").stat().st_gid) == (1000, 1001)


def merged_view(tmp_path: Path) -> tarmerge.Merged:
    def add(tf: tarfile.TarFile, name: str, type: bytes = tarfile.REGTYPE, data: bytes = b"", **kw: object) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mtime, info.size = type, T, len(data)
        for k, v in kw.items():
            setattr(info, k, v)
        tf.addfile(info, io.BytesIO(data))

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        add(tf, "./", tarfile.DIRTYPE, mode=0o750)
        add(tf, "./bin/ping", data=b"ping", mode=0o4755,
            pax_headers={"SCHILY.xattr.security.capability": CAP.decode("utf-8", "surrogateescape")})
        add(tf, "./bin/ping6", tarfile.LNKTYPE, linkname="./bin/ping")
        add(tf, "./dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3)
        add(tf, "./run/initctl", tarfile.FIFOTYPE, mode=0o600)
        add(tf, "./home/u/notes", data=b"hi", mode=0o640, uid=1000, gid=1001, uname="u", gname="u", mtime=T - 5)
        add(tf, "./usr/lib/modules/6.1/kernel/e1000.ko", data=b"ko")
        add(tf, "./lib", tarfile.SYMTYPE, linkname="usr/lib")
    src = tmp_path / "export.tar"
    src.write_bytes(buf.getvalue())
    return tarmerge.merge(tarmerge.open_layers(src, tmp_path))


def test_from_merged_streams_the_view_and_is_reproducible(tmp_path: Path) -> None:
    merged = merged_view(tmp_path)
    a, b = tmp_path / "a.sqfs", tmp_path / "b.sqfs"
    squashfs.from_merged(merged, a, mtime=T)
    time.sleep(1.1)
    squashfs.from_merged(merged, b, mtime=T)
    assert a.read_bytes() == b.read_bytes()
    entries = listing(a)
    assert sorted(entries) == ["", "bin", "bin/ping", "bin/ping6", "dev", "dev/null", "home", "home/u",
                               "home/u/notes", "lib", "run", "run/initctl", "usr", "usr/lib", "usr/lib/modules",
                               "usr/lib/modules/6.1", "usr/lib/modules/6.1/kernel",
                               "usr/lib/modules/6.1/kernel/e1000.ko"]
    assert entries[""][0] == "drwxr-x---"  # the tar's ./ entry
    assert entries["bin/ping"][:2] == ("-rwsr-xr-x", "0/0")
    assert entries["dev/null"][0] == "crw-rw-rw-"
    assert entries["run/initctl"][0] == "prw-------"
    assert entries["home/u/notes"][:2] == ("-rw-r-----", "1000/1001")
    assert entries["lib"] == ("lrwxrwxrwx", "0/0", "usr/lib")
    out = tmp_path / "out"
    squashfs.unpack(a, out)
    assert os.getxattr(out / "bin/ping", "security.capability") == CAP
    assert (out / "bin/ping6").stat().st_ino == (out / "bin/ping").stat().st_ino
    assert (out / "home/u/notes").stat().st_mtime == T


def test_from_merged_can_keep_the_archive_times(tmp_path: Path) -> None:
    merged = merged_view(tmp_path)
    a, b = tmp_path / "a.sqfs", tmp_path / "b.sqfs"
    squashfs.from_merged(merged, a, mtime=None)
    squashfs.from_merged(merged, b, mtime=None)
    assert a.read_bytes() == b.read_bytes()
    out = tmp_path / "out"
    squashfs.unpack(a, out)
    assert (out / "home/u/notes").stat().st_mtime == T - 5
    assert (out / "dev").stat().st_mtime == 0  # implied by dev/null, declared by no layer
    mkfs = subprocess.run(["unsquashfs", "-mkfs-time", str(a)], capture_output=True, text=True, check=True)
    assert mkfs.stdout.strip() == str(T)


def test_from_tar_reads_a_stream_and_reports_failures(tmp_path: Path) -> None:
    buf = io.BytesIO()
    tarmerge.write_tar(merged_view(tmp_path), buf)
    dest = tmp_path / "t.sqfs"
    squashfs.from_tar(io.BytesIO(buf.getvalue()), dest, mtime=T)
    assert "usr/lib/modules/6.1/kernel/e1000.ko" in listing(dest)
    with pytest.raises(squashfs.SquashfsError, match=r"^bad\.sqfs: tar2sqfs failed \(exit 1\): .*end-of-file"):
        squashfs.from_tar(io.BytesIO(buf.getvalue()[:1800]), tmp_path / "bad.sqfs", mtime=T)
    assert not (tmp_path / "bad.sqfs").exists() and not (tmp_path / "bad.sqfs.part").exists()


def test_from_merged_stops_cleanly_when_the_view_cannot_be_read(tmp_path: Path) -> None:
    merged = merged_view(tmp_path)
    src = merged.layers[0].path
    src.write_bytes(src.read_bytes()[:2000])  # the layer changed under the view
    with pytest.raises(tarmerge.ArchiveError, match=r"^archive: data of '.+' is cut short$"):
        squashfs.from_merged(merged, tmp_path / "x.sqfs", mtime=T)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.tar"]


def test_check(tmp_path: Path, image: Path) -> None:
    squashfs.check(image)
    text = tmp_path / "notes.txt"
    text.write_bytes(b"hello, world\n")
    with pytest.raises(InvalidInput, match=r"^notes\.txt: not a squashfs image \(it starts with b'hell'"):
        squashfs.check(text)
    data = image.read_bytes()
    cut = tmp_path / "cut.sqfs"
    cut.write_bytes(data[:300])
    with pytest.raises(InvalidInput, match=r"^cut\.sqfs: truncated: the superblock says \d+ bytes, the file has 300$"):
        squashfs.check(cut)
    lzma = tmp_path / "lzma.sqfs"
    lzma.write_bytes(data[:20] + b"\x02\x00" + data[22:])
    with pytest.raises(InvalidInput, match=r"compressor id 2 .*the kernel cannot read it"):
        squashfs.check(lzma)


def test_extract_and_read_file_follow_symlinks_inside_the_image(tmp_path: Path, image: Path) -> None:
    dest = tmp_path / "dest"
    got = squashfs.extract(image, dest, ["lib/modules/", "usr/lib/modules/", "var/lib/dpkg/status", "boot/"])
    assert got == ["usr/lib/modules"]
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == [
        "usr", "usr/lib", "usr/lib/modules", "usr/lib/modules/6.1", "usr/lib/modules/6.1/kernel",
        "usr/lib/modules/6.1/kernel/e1000.ko"]
    assert squashfs.read_file(image, "etc/os-release") == b"ID=debian\n"
    assert squashfs.read_file(image, "lib/os-release") == b"ID=debian\n"
    assert squashfs.read_file(image, "/home/u/notes") == b"hi"
    assert [squashfs.read_file(image, p) for p in ("usr", "nope", "lib/nope", "bin/su/x")] == [None] * 4
