"""The newc writer: format, ordering and byte-for-byte reproducibility."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from provisioner.agent import cpio


def parse_newc(data: bytes) -> list[dict]:
    """Read back a newc archive (enough of the format to check the writer)."""
    out, pos = [], 0
    while True:
        assert data[pos : pos + 6] == b"070701", f"bad magic at {pos}"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, _nlink, mtime, size, _dmaj, _dmin, rmaj, rmin, namesize, _chk = fields
        pos += 110
        name = data[pos : pos + namesize - 1].decode()
        pos += namesize + (-(110 + namesize) % 4)
        body = data[pos : pos + size]
        pos += size + (-size % 4)
        if name == "TRAILER!!!":
            assert pos == len(data)
            return out
        out.append(dict(ino=ino, name=name, mode=mode, uid=uid, gid=gid, mtime=mtime, body=body, rdev=(rmaj, rmin)))


ENTRIES = [
    cpio.Entry("usr/bin/tool", stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n"),
    cpio.Entry("usr", stat.S_IFDIR | 0o755),
    cpio.Entry("usr/bin", stat.S_IFDIR | 0o755),
    cpio.Entry("usr-x", stat.S_IFREG | 0o644, b"x"),
    cpio.Entry("bin/sh", stat.S_IFLNK | 0o777, b"/bin/busybox"),
    cpio.Entry("bin", stat.S_IFDIR | 0o755),
    cpio.Entry("dev", stat.S_IFDIR | 0o755),
    cpio.Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
]


def _write(entries: list[cpio.Entry], mtime: int = 1700000000) -> bytes:
    buf = io.BytesIO()
    cpio.write_newc(entries, buf, mtime)
    return buf.getvalue()


def test_entries_are_sorted_and_owned_by_root() -> None:
    parsed = parse_newc(_write(ENTRIES))
    names = [e["name"] for e in parsed]
    # Directories come before what they hold.
    assert names == ["bin", "bin/sh", "dev", "dev/console", "usr", "usr/bin", "usr/bin/tool", "usr-x"]
    assert {(e["uid"], e["gid"], e["mtime"]) for e in parsed} == {(0, 0, 1700000000)}
    assert [e["ino"] for e in parsed] == list(range(1, len(parsed) + 1))
    by_name = {e["name"]: e for e in parsed}
    assert by_name["bin/sh"]["body"] == b"/bin/busybox"
    assert stat.S_ISLNK(by_name["bin/sh"]["mode"])
    assert by_name["dev/console"]["rdev"] == (5, 1) and stat.S_ISCHR(by_name["dev/console"]["mode"])
    assert by_name["usr/bin/tool"]["body"] == b"#!/bin/sh\necho hi\n"


def test_output_does_not_depend_on_input_order() -> None:
    assert _write(ENTRIES) == _write(list(reversed(ENTRIES)))


def test_duplicate_paths_are_refused() -> None:
    with pytest.raises(ValueError, match="usr/bin"):
        _write([*ENTRIES, cpio.Entry("usr/bin", stat.S_IFDIR | 0o755)])


def _tree(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc/motd").write_text("hello\n")
    (root / "init").write_text("#!/bin/sh\n")
    (root / "init").chmod(0o755)
    os.symlink("init", root / "linuxrc")


def test_tree_archive_ignores_file_times(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _tree(a)
    _tree(b)
    os.utime(b / "etc/motd", (1, 1))
    os.utime(b / "init", (2_000_000_000, 2_000_000_000))
    assert _write(cpio.entries_from_tree(a)) == _write(cpio.entries_from_tree(b))
    modes = {e.path: e.mode for e in cpio.entries_from_tree(a)}
    assert modes["init"] == stat.S_IFREG | 0o755
    assert stat.S_ISLNK(modes["linuxrc"])


@pytest.mark.parametrize("method", ["gzip", "zstd"])
def test_compressed_archive_is_reproducible_and_readable(tmp_path: Path, method: str) -> None:
    if method == "zstd" and not shutil.which("zstd"):
        pytest.skip("zstd not installed")
    src = tmp_path / "src"
    _tree(src)
    one, two = tmp_path / "one.cpio", tmp_path / "two.cpio"
    cpio.write_archive(cpio.entries_from_tree(src), one, 0, method)
    cpio.write_archive(cpio.entries_from_tree(src), two, 0, method)
    assert one.read_bytes() == two.read_bytes()
    assert not list(tmp_path.glob("*.raw"))
    decompress = ["gzip", "-dc"] if method == "gzip" else ["zstd", "-dcq"]
    raw = subprocess.run([*decompress, str(one)], capture_output=True, check=True).stdout
    assert [e["name"] for e in parse_newc(raw)] == ["etc", "etc/motd", "init", "linuxrc"]
    if shutil.which("cpio"):
        # The system cpio agrees with our reading of the format.
        listing = subprocess.run(["cpio", "-it", "--quiet"], input=raw, capture_output=True, check=True)
        assert listing.stdout.decode().split() == ["etc", "etc/motd", "init", "linuxrc"]
