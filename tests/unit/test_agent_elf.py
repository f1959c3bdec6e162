"""ELF dependency copy (copy_exec without ldd) on host binaries in a fake sysroot."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

import pytest

from provisioner.agent import elf

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="reads x86_64 host binaries")

HOST_LIBDIR = Path("/lib/x86_64-linux-gnu")


def _host_true() -> Path:
    path = Path(shutil.which("true") or "/bin/true").resolve()
    if not elf.is_elf(path):
        pytest.skip("no ELF `true` on this host")
    return path


def make_sysroot(root: Path) -> None:
    """bin/true plus libc and the loader laid out as Debian's libc6 ships them,
    including the absolute lib64 symlink."""
    (root / "bin").mkdir(parents=True)
    shutil.copy2(_host_true(), root / "bin/true")
    (root / "lib/x86_64-linux-gnu").mkdir(parents=True)
    for name in ("libc.so.6", "ld-linux-x86-64.so.2"):
        shutil.copy2((HOST_LIBDIR / name).resolve(), root / "lib/x86_64-linux-gnu" / name)
    (root / "lib64").mkdir()
    os.symlink("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", root / "lib64/ld-linux-x86-64.so.2")
    os.symlink("true", root / "bin/alias-of-true")


def test_read_deps_of_a_dynamic_binary() -> None:
    deps = elf.read_deps(_host_true())
    assert deps.interpreter == "/lib64/ld-linux-x86-64.so.2"
    assert "libc.so.6" in deps.needed


def test_read_deps_of_a_static_binary() -> None:
    busybox = Path("/bin/busybox")
    if not busybox.exists() or elf.read_deps(busybox).interpreter is not None:
        pytest.skip("no static busybox on this host")
    assert elf.read_deps(busybox) == elf.ElfDeps(None, ())


def test_read_deps_refuses_non_elf(tmp_path: Path) -> None:
    script = tmp_path / "s"
    script.write_text("#!/bin/sh\n")
    assert not elf.is_elf(script)
    with pytest.raises(elf.ElfError):
        elf.read_deps(script)


def test_copy_with_deps_copies_loader_and_libraries(tmp_path: Path) -> None:
    sysroot, dest = tmp_path / "sysroot", tmp_path / "dest"
    make_sysroot(sysroot)
    libs = elf.copy_with_deps(sysroot, ["bin/alias-of-true"], dest)

    # libc itself needs the loader by soname, found in the multiarch dir.
    assert libs == [
        "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "lib/x86_64-linux-gnu/libc.so.6",
        "lib64/ld-linux-x86-64.so.2",
    ]
    assert os.readlink(dest / "bin/alias-of-true") == "true"
    assert (dest / "bin/true").read_bytes() == (sysroot / "bin/true").read_bytes()
    # The loader symlink is kept and its target (inside the sysroot, not the
    # host's) is copied too.
    assert os.readlink(dest / "lib64/ld-linux-x86-64.so.2") == "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    assert (dest / "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2").is_file()
    assert (dest / "lib/x86_64-linux-gnu/libc.so.6").is_file()


def test_missing_library_is_named(tmp_path: Path) -> None:
    sysroot, dest = tmp_path / "sysroot", tmp_path / "dest"
    make_sysroot(sysroot)
    (sysroot / "lib/x86_64-linux-gnu/libc.so.6").unlink()
    with pytest.raises(elf.ElfError, match="libc.so.6"):
        elf.copy_with_deps(sysroot, ["bin/true"], dest)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(elf.ElfError, match="not found"):
        elf.copy_with_deps(tmp_path, ["bin/nothing"], tmp_path / "dest")
