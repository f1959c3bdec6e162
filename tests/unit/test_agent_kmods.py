"""Choosing early-boot modules: the modules.dep closure on a small tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.agent import kmods

MODULES_DEP = """\
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/ata/ahci.ko.xz: kernel/drivers/ata/libahci.ko.xz kernel/drivers/ata/libata.ko.xz kernel/drivers/scsi/scsi_mod.ko.xz
kernel/drivers/ata/libahci.ko.xz: kernel/drivers/ata/libata.ko.xz kernel/drivers/scsi/scsi_mod.ko.xz
kernel/drivers/ata/libata.ko.xz: kernel/drivers/scsi/scsi_mod.ko.xz
kernel/drivers/scsi/scsi_mod.ko.xz:
kernel/drivers/scsi/mpt3sas/mpt3sas.ko: kernel/drivers/scsi/raid_class.ko
kernel/drivers/scsi/raid_class.ko:
kernel/lib/crc32c-generic.ko:
kernel/drivers/gpu/drm/unrelated.ko:
"""

SOFTDEP = "# comment\nsoftdep mpt3sas pre: crc32c-generic post: not-there\n"
BUILTIN = "kernel/drivers/nvme/host/nvme.ko\n"


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    moddir = tmp_path / "src/lib/modules/6.1.0-1-amd64"
    for line in MODULES_DEP.splitlines():
        rel = line.split(":")[0]
        (moddir / rel).parent.mkdir(parents=True, exist_ok=True)
        (moddir / rel).write_bytes(b"ko:" + rel.encode())
    (moddir / "modules.dep").write_text(MODULES_DEP)
    (moddir / "modules.softdep").write_text(SOFTDEP)
    (moddir / "modules.builtin").write_text(BUILTIN)
    (moddir / "modules.order").write_text(
        "".join(line.split(":")[0] + "\n" for line in MODULES_DEP.splitlines())
    )
    return tmp_path


def test_module_name() -> None:
    assert kmods.module_name("kernel/lib/crc32c-generic.ko") == "crc32c_generic"
    assert kmods.module_name("kernel/drivers/ata/ahci.ko.xz") == "ahci"
    assert kmods.module_name("kernel/x/foo.ko.zst") == "foo"


def test_closure_follows_dependencies_and_softdeps(tree: Path) -> None:
    index = kmods.load_index(tree / "src/lib/modules/6.1.0-1-amd64")
    got = kmods.closure(index, ("virtio_net", "ahci", "mpt3sas", "nvme", "ice"))
    assert got.modules == (
        "ahci", "crc32c_generic", "failover", "libahci", "libata", "mpt3sas",
        "net_failover", "raid_class", "scsi_mod", "virtio_net",
    )  # fmt: skip
    assert got.builtin == ("nvme",)
    assert got.absent == ("ice",)  # a softdep that is missing is not reported


def test_build_module_tree_copies_only_the_closure(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[tuple[Path, str]] = []
    monkeypatch.setattr(kmods, "depmod", lambda root, kver: ran.append((root, kver)))
    dest = tree / "dest"
    got = kmods.build_module_tree(tree / "src", "6.1.0-1-amd64", ("virtio_net",), dest)
    moddir = dest / "lib/modules/6.1.0-1-amd64"
    shipped = sorted(p.relative_to(moddir).as_posix() for p in moddir.rglob("*.ko*"))
    assert shipped == [
        "kernel/drivers/net/net_failover.ko",
        "kernel/drivers/net/virtio_net.ko",
        "kernel/net/core/failover.ko",
    ]
    assert got.modules == ("failover", "net_failover", "virtio_net")
    # modules.order lists only what is shipped; depmod regenerates the rest
    # for the shipped subset.
    assert (moddir / "modules.order").read_text().split() == [
        "kernel/drivers/net/virtio_net.ko",
        "kernel/drivers/net/net_failover.ko",
        "kernel/net/core/failover.ko",
    ]
    assert (moddir / "modules.builtin").read_text() == BUILTIN
    assert ran == [(dest, "6.1.0-1-amd64")]
