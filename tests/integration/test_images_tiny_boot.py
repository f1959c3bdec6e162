"""images/tiny really boots: its kernel, its modules.cpio and its root
(unpacked from rootfs.squashfs into an initramfs, since deploying a root is
the agent's job) on a QEMU machine (TCG). Its init loads the NIC driver,
gets an address by DHCP from QEMU's user network, and posts its `running`
event to the real appliance HTTP API on this host's loopback (10.0.2.2 from
the guest), with the one-time token of the boot."""

from __future__ import annotations

import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from images_helpers import service, serving
from provisioner.agent import cpio
from provisioner.db import tokens, write

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
QEMU = shutil.which("qemu-system-x86_64")
MAC = "52:54:00:7a:11:01"
BOOT_TIMEOUT = 600


@pytest.fixture
def appliance(tiny):
    svc = service(tiny[0])
    with serving(svc.settings) as port:
        yield svc, port


def rootfs_initramfs(svc, manifest: dict, work: Path) -> Path:
    """modules.cpio followed by the image root as a cpio, the way iPXE
    concatenates initrds."""
    root = work / "root"
    blob = svc.image_store().path(manifest["artifacts"]["rootfs.squashfs"]["sha256"])
    subprocess.run(["unsquashfs", "-q", "-d", str(root), str(blob)], check=True, capture_output=True)
    entries = [*cpio.entries_from_tree(root), cpio.Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))]
    rootcpio = work / "root.cpio"
    cpio.write_archive(entries, rootcpio, 0, "gzip")
    out = work / "initrd"
    with out.open("wb") as f:
        for part in (svc.image_store().path(manifest["artifacts"]["modules.cpio"]["sha256"]), rootcpio):
            data = part.read_bytes()
            f.write(data + b"\0" * (-len(data) % 4))
    return out


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
def test_tiny_boots_gets_an_address_and_reports(tiny, appliance, tmp_path):
    svc, port = appliance
    manifest = tiny[2]
    svc.add_host(MAC, "tiny-1", image="tiny@1.0.0")
    with write(svc.db):
        token = tokens.issue(svc.db, MAC, "deploy", time.time(), 3600).token
    initrd = rootfs_initramfs(svc, manifest, tmp_path)
    serial = tmp_path / "serial.log"
    append = (f"console=ttyS0,115200 rdinit=/sbin/init panic=5 provisioner.url=http://10.0.2.2:{port} "
              f"provisioner.token={token} BOOTIF=01-{MAC.replace(':', '-')}")
    cmd = [QEMU, "-accel", "tcg,thread=single", "-m", "512", "-smp", "1", "-nographic", "-monitor", "none",
           "-serial", f"file:{serial}", "-no-reboot",
           "-kernel", str(svc.image_store().path(manifest["artifacts"]["kernel"]["sha256"])),
           "-initrd", str(initrd), "-append", append,
           "-netdev", "user,id=n0", "-device", f"virtio-net-pci,netdev=n0,mac={MAC}"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    started = time.monotonic()
    try:
        while time.monotonic() - started < BOOT_TIMEOUT and proc.poll() is None:
            text = serial.read_text(errors="replace") if serial.exists() else ""
            if "tiny: phase=running" in text:
                break
            time.sleep(1)
    finally:
        if proc.poll() is None:
            proc.kill()  # the QEMU we started, by its PID
        proc.wait()
    text = serial.read_text(errors="replace") if serial.exists() else ""
    tail = "\n".join(text.splitlines()[-40:])
    print(f"tiny boot to running: {time.monotonic() - started:.1f}s")
    assert "tiny: phase=boot image=tiny@1.0.0" in text, tail
    assert "tiny: phase=network-up iface=eth0 ip=10.0.2.15" in text, tail
    assert "tiny: phase=reported" in text, tail
    assert "tiny: phase=running" in text, tail
    running = [e for e in svc.events("tiny-1") if e.kind == "agent.running"]
    assert running and running[0].message.startswith("tiny@1.0.0 up at 10.0.2.15"), [e.kind for e in svc.events()]
