"""Build images/tiny from Debian packages, as CI does: publish, inspect,
rebuild to the same digest, refuse a changed definition under the same
version, and catch a flipped bit with `image verify`."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from images_helpers import TINY, cli, flip_bit, make_state, package_cache, service
from provisioner.images.build import build_image
from provisioner.images.progress import Progress

pytestmark = pytest.mark.timeout(900)


def test_tiny_builds_and_is_small(tiny):
    config, proc, manifest = tiny
    assert manifest["name"] == "tiny" and manifest["version"] == "1.0.0" and manifest["new"] is True
    arts = manifest["artifacts"]
    assert set(arts) == {"kernel", "rootfs.squashfs", "modules.cpio"}
    assert arts["rootfs.squashfs"]["size"] < 8 << 20, "tiny should stay a few MB"
    assert manifest["kernel_version"].endswith("-amd64")
    assert "virtio_net" in manifest["modules"] and "nvme" in manifest["modules"]
    assert "busybox-static" in manifest["packages"]
    assert any(p.startswith("linux-image-") for p in manifest["packages"])
    assert manifest["source"]["kind"] == "definition" and len(manifest["source"]["sha256"]) == 64
    # Progress goes to stderr as plain lines when it is not a terminal.
    assert "[1/9] definition" in proc.stderr and "[9/9] publish" in proc.stderr
    assert "\x1b[K" not in proc.stderr


def test_tiny_rootfs_contents(tiny, tmp_path):
    config, _proc, manifest = tiny
    svc = service(config)
    blob = svc.image_store().path(manifest["artifacts"]["rootfs.squashfs"]["sha256"])
    listing = subprocess.run(["unsquashfs", "-lls", "-d", "", str(blob)], capture_output=True, text=True,
                             check=True).stdout
    # perm owner size date time path [-> target]
    lines = {(line.split()[5:6] or ["/"])[0]: line for line in listing.splitlines()
             if line.startswith(("-", "d", "l"))}
    assert lines["/sbin/init"].startswith("-rwxr-xr-x root/root")
    assert lines["/bin/busybox"].startswith("-rwxr-xr-x root/root")
    for applet in ("sh", "wget", "udhcpc", "modprobe", "ip"):  # links made by `busybox --install -s`
        assert any(f"{d}/{applet}" in lines for d in ("/bin", "/sbin", "/usr/bin", "/usr/sbin")), applet
    assert lines["/tmp"].startswith("drwxrwxrwt root/root")
    subprocess.run(["unsquashfs", "-d", str(tmp_path / "r"), str(blob), "etc/provisioner/image"], check=True,
                   capture_output=True)
    stamp = (tmp_path / "r/etc/provisioner/image").read_text()
    assert "NAME=tiny\nVERSION=1.0.0\n" in stamp and manifest["source"]["sha256"] in stamp
    assert "/lib/modules" not in lines, "modules belong in modules.cpio, not in tiny's root"
    # Every entry has the build's fixed time.
    assert len({line.split()[3] + line.split()[4] for line in listing.splitlines()
                if line.startswith(("-", "d", "l"))}) == 1


def test_show_list_verify_and_served_digest(tiny):
    config, _proc, manifest = tiny
    shown = json.loads(cli(config, "image", "show", "tiny@1.0.0", "--json").stdout)
    assert shown["digest"] == manifest["digest"]
    listed = json.loads(cli(config, "image", "list", "--json").stdout)["images"]
    assert [i["digest"] for i in listed] == [manifest["digest"]]
    assert "ok" in cli(config, "image", "verify", "tiny@1.0.0").stdout
    # The manifest blob is exactly the bytes whose sha256 is the image digest.
    svc = service(config)
    data = svc.image_store().read(manifest["digest"].removeprefix("sha256:"))
    import hashlib

    assert "sha256:" + hashlib.sha256(data).hexdigest() == manifest["digest"]


def test_rebuild_gives_the_same_digests(tiny, tmp_path):
    """Reproducible: a second build, in another store, of the same definition
    with the same package versions."""
    _config, _proc, first = tiny
    config = make_state(tmp_path)
    svc = service(config)
    result = build_image(TINY, svc, cache_dir=package_cache(), progress=Progress(9, tty=False))
    second = result.manifest.to_json()
    for name in ("rootfs.squashfs", "modules.cpio", "kernel"):
        assert second["artifacts"][name]["sha256"] == first["artifacts"][name]["sha256"], name
    assert f"sha256:{result.image.digest}" == first["digest"]
    # Building again into the same store is a no-op publish.
    again = build_image(TINY, svc, cache_dir=package_cache(), progress=Progress(9, tty=False))
    assert not again.new and again.image.digest == result.image.digest


def test_changed_definition_under_the_same_version_is_refused(tiny, tmp_path):
    config, _proc, first = tiny
    changed = tmp_path / "tiny"
    shutil.copytree(TINY, changed, symlinks=True)
    (changed / "files/etc/motd").write_text("changed\n")
    proc = cli(config, "image", "build", str(changed), check=False)
    assert proc.returncode == 1
    assert "tiny@1.0.0 is published already" in proc.stderr
    assert first["digest"] in proc.stderr and first["source"]["sha256"] in proc.stderr
    # Nothing was built, nothing changed.
    assert json.loads(cli(config, "image", "show", "tiny@1.0.0", "--json").stdout)["digest"] == first["digest"]


def test_verify_catches_a_flipped_bit(tiny, tmp_path):
    config, _proc, manifest = tiny
    # On a copy of the store, so the other tests keep a good one.
    state = load_state(config)
    copy = make_state(tmp_path)
    shutil.rmtree(tmp_path / "state")
    shutil.copytree(state, tmp_path / "state", symlinks=True)
    svc = service(copy)
    blob = svc.image_store().path(manifest["artifacts"]["modules.cpio"]["sha256"])
    flip_bit(blob, 1000, 0x10)
    proc = cli(copy, "image", "verify", "tiny@1.0.0", check=False)
    assert proc.returncode == 1
    assert "modules.cpio: expected sha256:" + manifest["artifacts"]["modules.cpio"]["sha256"] in proc.stderr
    assert "CORRUPT" in proc.stderr


def load_state(config):
    from provisioner.settings import load

    return load(config).state_dir


def test_sigkill_in_the_middle_of_a_build_leaves_nothing_visible(tmp_path):
    import signal
    import sys
    import time

    from images_helpers import ROOT

    config = make_state(tmp_path)
    svc = service(config)
    staging = svc.image_store().tmp
    proc = subprocess.Popen([sys.executable, "-m", "provisioner", "image", "build", str(TINY), "--config",
                             str(config)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    try:
        # Killed once the kernel step is under way: the root is laid out and
        # modules are being packed.
        while time.monotonic() < deadline and proc.poll() is None:
            if staging.exists() and any(staging.glob("*/work/modules")):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the build ended before it could be killed"
        proc.send_signal(signal.SIGKILL)  # the build we started, by its PID
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert json.loads(cli(config, "image", "list", "--json").stdout)["images"] == []
    assert list(staging.iterdir()), "the killed build's staging should still be there"
    # The next build removes it and succeeds; nothing is left to clean.
    cli(config, "image", "build", str(TINY))
    assert list(staging.iterdir()) == []
    cli(config, "image", "gc")
    referenced = {r[0] for r in svc.db.execute("select digest from image_blobs")}
    assert set(svc.image_store().all_blobs()) == referenced
