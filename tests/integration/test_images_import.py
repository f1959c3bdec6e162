"""Imports of what users build elsewhere, made by the tests themselves: a
`docker export`-style tarball and a two-layer OCI archive with a whiteout;
the store after SIGKILL in the middle of an import; and the published blobs
served over HTTP by digest, Range requests byte-exact (with curl)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from images_helpers import ROOT, cli, flip_bit, make_state, package_cache, service, serving
from provisioner.agent.debs import DebCache, unpack

pytestmark = pytest.mark.timeout(600)
CURL = "curl"


# --- inputs made by the tests ---


@pytest.fixture(scope="module")
def kernel_tree(tmp_path_factory) -> Path:
    """Debian's kernel package unpacked: boot/vmlinuz-* and lib/modules."""
    cache = DebCache(package_cache(), print)
    deb = cache.get(cache.resolve_kernel("linux-image-amd64"))
    out = tmp_path_factory.mktemp("kernel")
    unpack(deb, out)
    return out


@pytest.fixture(scope="module")
def vmlinuz(kernel_tree) -> Path:
    [path] = sorted((kernel_tree / "boot").glob("vmlinuz-*"))
    return path


def add(tar: tarfile.TarFile, name: str, data: bytes = b"", *, mode: int = 0o644, kind: bytes = tarfile.REGTYPE,
        link: str = "", mtime: int = 1_700_000_000, uid: int = 0) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.uid, info.gid, info.linkname = kind, mode, mtime, uid, uid, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def docker_export(path: Path, kernel_tree: Path | None = None) -> Path:
    """What `docker export` writes: entries without a leading ./, .dockerenv,
    empty /proc and /sys, setuid and hardlinked files, absolute symlinks."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, ".dockerenv", mode=0o755)
        for d in ("bin", "etc", "proc", "sys", "usr", "usr/bin", "var", "var/lib", "var/lib/dpkg"):
            add(tar, d, kind=tarfile.DIRTYPE, mode=0o755 if d not in ("proc",) else 0o555)
        add(tar, "etc/os-release", b'ID=exported\nVERSION_ID="1"\n')
        add(tar, "usr/bin/passwd", b"#!/bin/sh\n", mode=0o4755)
        add(tar, "usr/bin/ln-target", b"shared inode\n", mode=0o755)
        add(tar, "usr/bin/hardlink", kind=tarfile.LNKTYPE, link="usr/bin/ln-target")
        add(tar, "bin/sh", kind=tarfile.SYMTYPE, link="/usr/bin/passwd")
        add(tar, "etc/owned-by-1000", b"x", uid=1000)
        add(tar, "var/lib/dpkg/status",
            b"Package: base-files\nStatus: install ok installed\nVersion: 12.4+deb12u8\n\n"
            b"Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n")
        if kernel_tree is not None:
            # The kernel and a slice of its modules (all 400 MB would only
            # make the test slow): the index files and the virtio/NVMe drivers.
            for p in sorted(kernel_tree.rglob("*")):
                rel = p.relative_to(kernel_tree).as_posix()
                if p.is_symlink() or not (p.is_dir() or p.is_file()):
                    continue
                wanted = p.is_dir() or rel.startswith("boot/vmlinuz") or "/modules." in rel or any(
                    k in p.name for k in ("virtio", "nvme", "failover", "crc"))
                if wanted:
                    tar.add(p, rel, recursive=False)
    return path


def oci_archive(path: Path) -> Path:
    """A two-layer OCI image archive: layer 2 whites out a file and makes a
    directory opaque. Layers gzip'd, descriptors with real digests."""
    def layer(entries) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for args, kw in entries:
                add(tar, *args, **kw)
        return gzip.compress(buf.getvalue(), mtime=0)

    l1 = layer([
        (("etc",), {"kind": tarfile.DIRTYPE, "mode": 0o755}),
        (("etc/keep", b"from layer 1\n"), {}),
        (("etc/secret", b"must be whited out\n"), {}),
        (("opt",), {"kind": tarfile.DIRTYPE, "mode": 0o755}),
        (("opt/app",), {"kind": tarfile.DIRTYPE, "mode": 0o755}),
        (("opt/app/old-1", b"1"), {}),
        (("opt/app/old-2", b"2"), {}),
    ])
    l2 = layer([
        (("etc/.wh.secret",), {}),
        (("etc/added", b"from layer 2\n"), {}),
        (("opt/app/.wh..wh..opq",), {}),
        (("opt/app/new", b"new\n"), {}),
        (("etc/keep", b"replaced in layer 2\n"), {}),
    ])
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"digest": f"sha256:{digest}", "size": len(data)}

    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []},
                         "created": "2025-01-01T00:00:00Z"}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **blob(l)} for l in (l1, l2)],
    }).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", **blob(manifest),
         "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
    with tarfile.open(path, "w") as tar:
        add(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add(tar, "index.json", index)
        add(tar, "blobs", kind=tarfile.DIRTYPE, mode=0o755)
        add(tar, "blobs/sha256", kind=tarfile.DIRTYPE, mode=0o755)
        for digest, data in blobs.items():
            add(tar, f"blobs/sha256/{digest}", data)
    return path


def listing(svc, manifest: dict) -> dict[str, str]:
    blob = svc.image_store().path(manifest["artifacts"]["rootfs.squashfs"]["sha256"])
    out = subprocess.run(["unsquashfs", "-lln", "-d", "", str(blob)], capture_output=True, text=True,
                         check=True).stdout
    return {(line.split()[5:6] or ["/"])[0]: line for line in out.splitlines() if line[:1] in "-dlcbps"}


def cat(svc, manifest: dict, inner: str) -> bytes:
    from provisioner.images import squashfs

    blob = svc.image_store().path(manifest["artifacts"]["rootfs.squashfs"]["sha256"])
    return squashfs.read_file(blob, inner)


# --- imports ---


def test_docker_export_without_a_kernel_is_refused_then_imported_with_one(tmp_path, vmlinuz):
    config = make_state(tmp_path)
    tarball = docker_export(tmp_path / "export.tar")
    proc = cli(config, "image", "import", str(tarball), "--name", "exported", "--version", "1", check=False)
    assert proc.returncode == 1
    assert "has no kernel" in proc.stderr and "--kernel PATH" in proc.stderr
    assert json.loads(cli(config, "image", "list", "--json").stdout)["images"] == []

    proc = cli(config, "image", "import", str(tarball), "--name", "exported", "--version", "1",
               "--kernel", str(vmlinuz), "--json")
    manifest = json.loads(proc.stdout)
    assert manifest["source"]["kind"] == "import" and manifest["source"]["format"] == "tar"
    assert manifest["source"]["sha256"] == hashlib.sha256(tarball.read_bytes()).hexdigest()
    assert manifest["packages"] == {"base-files": "12.4+deb12u8"}
    assert manifest["kernel_version"] == vmlinuz.name.removeprefix("vmlinuz-")
    # The export has no modules; the kernel's own tree has them beside it.
    assert "virtio_net" in manifest["modules"] and "squashfs" in manifest["modules"]
    svc = service(config)
    files = listing(svc, manifest)
    assert files["/usr/bin/passwd"].startswith("-rwsr-xr-x 0/0")
    assert files["/bin/sh"].endswith("/bin/sh -> /usr/bin/passwd")
    assert files["/etc/owned-by-1000"].split()[1] == "1000/1000"
    assert cat(svc, manifest, "usr/bin/hardlink") == b"shared inode\n"
    assert cat(svc, manifest, "etc/os-release").startswith(b"ID=exported")
    assert "ok" in cli(config, "image", "verify", "exported@1").stdout
    # The kernel artifact is the named file, byte for byte.
    assert manifest["artifacts"]["kernel"]["sha256"] == hashlib.sha256(vmlinuz.read_bytes()).hexdigest()


def test_a_lone_kernel_needs_its_modules_named(tmp_path, kernel_tree, vmlinuz):
    config = make_state(tmp_path)
    tarball = docker_export(tmp_path / "export.tar")
    alone = tmp_path / "k" / vmlinuz.name
    alone.parent.mkdir()
    shutil.copyfile(vmlinuz, alone)
    proc = cli(config, "image", "import", str(tarball), "--name", "e", "--version", "1", "--kernel", str(alone),
               check=False)
    assert proc.returncode == 1 and "no modules for kernel" in proc.stderr and "--modules DIR" in proc.stderr
    assert "[2/4] rootfs" not in proc.stderr  # refused before packing
    kver = vmlinuz.name.removeprefix("vmlinuz-")
    manifest = json.loads(cli(config, "image", "import", str(tarball), "--name", "e", "--version", "1",
                              "--kernel", str(alone), "--modules", str(kernel_tree / "lib/modules" / kver),
                              "--json").stdout)
    assert "nvme" in manifest["modules"]
    # Importing the same source with the same kernel again is a no-op, found
    # before any packing.
    again = cli(config, "image", "import", str(tarball), "--name", "e", "--version", "1", "--kernel", str(alone),
                "--modules", str(kernel_tree / "lib/modules" / kver))
    assert "already published with the same content" in again.stdout and "[2/4]" not in again.stderr


def test_not_a_root_filesystem_is_refused(tmp_path, vmlinuz):
    config = make_state(tmp_path)
    wrapped = tmp_path / "wrapped.tar"
    with tarfile.open(wrapped, "w") as tar:
        add(tar, "rootfs", kind=tarfile.DIRTYPE, mode=0o755)
        add(tar, "rootfs/etc", kind=tarfile.DIRTYPE, mode=0o755)
        add(tar, "rootfs/etc/hostname", b"x\n")
    proc = cli(config, "image", "import", str(wrapped), "--name", "w", "--version", "1", "--kernel", str(vmlinuz),
               check=False)
    assert proc.returncode == 1
    assert "does not look like a root filesystem (top level: rootfs)" in proc.stderr
    assert "tar -C rootfs -c ." in proc.stderr
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "oci-layout").write_text("{}")
    proc = cli(config, "image", "import", str(layout), "--name", "w", "--version", "1", "--kernel", str(vmlinuz),
               check=False)
    assert proc.returncode == 1 and "OCI layout" in proc.stderr
    proc = cli(config, "image", "import", str(wrapped), "--name", "w", "--version", "1",
               "--kernel", "/usr/lib/ipxe/ipxe.lkrn", check=False)
    assert proc.returncode == 1 and "not an x86 Linux kernel" in proc.stderr


def test_a_file_dated_after_2106_is_imported(tmp_path, vmlinuz):
    config = make_state(tmp_path)
    tarball = tmp_path / "future.tar"
    with tarfile.open(tarball, "w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "etc", kind=tarfile.DIRTYPE, mode=0o755)
        add(tar, "etc/future", b"x", mtime=7258118400)  # 2200-01-01
    manifest = json.loads(cli(config, "image", "import", str(tarball), "--name", "f", "--version", "1",
                              "--kernel", str(vmlinuz), "--json").stdout)
    assert manifest["created"] == "2038-01-19T03:14:07Z"  # the latest time tar2sqfs accepts for the image
    svc = service(config)
    assert "etc/future" in " ".join(listing(svc, manifest))


def test_rootfs_with_its_own_kernel_gets_its_modules(tmp_path, kernel_tree):
    config = make_state(tmp_path)
    tarball = docker_export(tmp_path / "with-kernel.tar", kernel_tree)
    manifest = json.loads(cli(config, "image", "import", str(tarball), "--name", "withkernel",
                              "--version", "2.0", "--json").stdout)
    assert "virtio_net" in manifest["modules"] and "nvme" in manifest["modules"]
    assert manifest["artifacts"]["modules.cpio"]["size"] > 100_000


def test_two_layer_oci_archive_with_whiteouts(tmp_path, vmlinuz):
    config = make_state(tmp_path)
    archive = oci_archive(tmp_path / "image.oci.tar")
    manifest = json.loads(cli(config, "image", "import", str(archive), "--name", "app", "--version", "1.0.0",
                              "--kernel", str(vmlinuz), "--json").stdout)
    assert manifest["source"]["format"] == "oci"
    svc = service(config)
    files = listing(svc, manifest)
    paths = {p for p in files if p != "/"}
    assert paths == {"/etc", "/etc/keep", "/etc/added", "/opt", "/opt/app", "/opt/app/new"}
    assert cat(svc, manifest, "etc/keep") == b"replaced in layer 2\n"
    assert not any(".wh." in p for p in paths)


def test_republishing_other_content_is_refused_with_both_digests(tmp_path, vmlinuz):
    config = make_state(tmp_path)
    first = json.loads(cli(config, "image", "import", str(oci_archive(tmp_path / "a.tar")), "--name", "app",
                           "--version", "1.0.0", "--kernel", str(vmlinuz), "--json").stdout)
    other = docker_export(tmp_path / "b.tar")
    proc = cli(config, "image", "import", str(other), "--name", "app", "--version", "1.0.0",
               "--kernel", str(vmlinuz), check=False)
    assert proc.returncode == 1
    assert "app@1.0.0 is published already" in proc.stderr
    assert first["digest"] in proc.stderr and hashlib.sha256(other.read_bytes()).hexdigest() in proc.stderr
    # The same archive again is fine: same content, same digest.
    again = cli(config, "image", "import", str(tmp_path / "a.tar"), "--name", "app", "--version", "1.0.0",
                "--kernel", str(vmlinuz))
    assert "already published with the same content" in again.stdout


def test_directory_and_squashfs_imports(tmp_path, vmlinuz):
    config = make_state(tmp_path)
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("dir\n")
    d = json.loads(cli(config, "image", "import", str(root), "--name", "dir", "--version", "1",
                       "--kernel", str(vmlinuz), "--json").stdout)
    svc = service(config)
    assert cat(svc, d, "etc/hostname") == b"dir\n"
    squash = svc.image_store().path(d["artifacts"]["rootfs.squashfs"]["sha256"])
    s = json.loads(cli(config, "image", "import", str(squash), "--name", "sq", "--version", "1",
                       "--kernel", str(vmlinuz), "--json").stdout)
    assert s["artifacts"]["rootfs.squashfs"] == d["artifacts"]["rootfs.squashfs"]  # deduplicated
    bad = tmp_path / "bad.squashfs"
    bad.write_bytes(b"hsqs" + b"\0" * 100)
    proc = cli(config, "image", "import", str(bad), "--name", "bad", "--version", "1", "--kernel", str(vmlinuz),
               check=False)
    assert proc.returncode == 1 and "squashfs" in proc.stderr
    notakernel = tmp_path / "vmlinuz"
    notakernel.write_bytes(b"\0" * 4096)
    proc = cli(config, "image", "import", str(root), "--name", "dir", "--version", "2",
               "--kernel", str(notakernel), check=False)
    assert proc.returncode == 1 and "not an x86 Linux kernel" in proc.stderr


@pytest.mark.parametrize("data,why", [
    (b"this is not a tar archive at all" * 100, "not a readable tar archive"),
    (gzip.compress(b"x" * 10000)[:200], "tar"),
])
def test_garbage_is_refused_clearly(tmp_path, vmlinuz, data, why):
    config = make_state(tmp_path)
    path = tmp_path / "garbage.tar"
    path.write_bytes(data)
    proc = cli(config, "image", "import", str(path), "--name", "g", "--version", "1", "--kernel", str(vmlinuz),
               check=False)
    assert proc.returncode == 1, proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("provisioner: error:") and why in last and "Traceback" not in proc.stderr


# --- crash safety ---


def store_state(svc) -> tuple[set[str], set[str]]:
    store = svc.image_store()
    referenced = {r[0] for r in svc.db.execute("select digest from image_blobs")}
    return set(store.all_blobs()), referenced


@pytest.mark.parametrize("kill_when", ["rootfs", "late"])
def test_sigkill_in_the_middle_of_an_import_leaves_the_store_consistent(tmp_path, vmlinuz, kill_when):
    config = make_state(tmp_path)
    # Something published before, which must stay intact.
    cli(config, "image", "import", str(oci_archive(tmp_path / "small.tar")), "--name", "app", "--version", "1",
        "--kernel", str(vmlinuz))
    big = tmp_path / "big.tar"
    with tarfile.open(big, "w") as tar:
        add(tar, "etc", kind=tarfile.DIRTYPE, mode=0o755)
        for i in range(6):
            add(tar, f"data/blob-{i}", os.urandom(40 << 20))
    svc = service(config)
    staging = svc.image_store().tmp
    cmd = [sys.executable, "-m", "provisioner", "image", "import", str(big), "--name", "big", "--version", "1",
           "--kernel", str(vmlinuz), "--config", str(config)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    threshold = 30 << 20 if kill_when == "rootfs" else 200 << 20
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            size = sum(f.stat().st_size for f in staging.rglob("*") if f.is_file()) if staging.exists() else 0
            if size >= threshold:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the import finished before it could be killed: " + proc.stdout.read().decode()
        proc.send_signal(signal.SIGKILL)  # the import we started, by its PID
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    # Nothing of the killed import is visible, and what was there is intact.
    images = json.loads(cli(config, "image", "list", "--json").stdout)["images"]
    assert [f"{i['name']}@{i['version']}" for i in images] == ["app@1"]
    assert "ok" in cli(config, "image", "verify", "app@1").stdout
    on_disk, referenced = store_state(svc)
    assert referenced <= on_disk
    assert not [p for p in svc.image_store().blobs.iterdir() if not p.is_file()]

    # Nothing to clean by hand: the next import clears the dead staging and
    # succeeds; gc frees blobs a killed publish may have left.
    cli(config, "image", "import", str(big), "--name", "big", "--version", "1", "--kernel", str(vmlinuz))
    assert [p for p in staging.iterdir()] == []
    cli(config, "image", "gc")
    on_disk, referenced = store_state(svc)
    assert on_disk == referenced
    assert "ok" in cli(config, "image", "verify", "big@1").stdout


# --- serving by digest ---


@pytest.fixture
def served(tmp_path, vmlinuz):
    config = make_state(tmp_path)
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    (root / "etc").mkdir()
    for i in range(3):
        (root / f"data/r{i}").write_bytes(os.urandom(3 << 20))  # incompressible: a multi-MB squashfs
    manifest = json.loads(cli(config, "image", "import", str(root), "--name", "served", "--version", "1",
                              "--kernel", str(vmlinuz), "--json").stdout)
    svc = service(config)
    with serving(svc.settings) as port:
        yield f"http://127.0.0.1:{port}", svc, manifest, config


def curl(url: str, *args: str) -> tuple[int, dict[str, str], bytes]:
    proc = subprocess.run([CURL, "-s", "-D", "-", "-o", "/dev/stderr", *args, url], capture_output=True, timeout=60)
    head = proc.stdout.decode().split("\r\n")
    status = int(head[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if ":" in h)}
    return status, headers, proc.stderr


def test_range_requests_are_byte_exact(served):
    base, svc, manifest, _config = served
    digest = manifest["artifacts"]["rootfs.squashfs"]["sha256"]
    data = svc.image_store().read(digest)
    size = len(data)
    url = f"{base}/artifacts/sha256/{digest}"
    status, headers, body = curl(url)
    assert status == 200 and body == data
    assert headers["etag"] == f'"{digest}"'
    assert "immutable" in headers["cache-control"] and "max-age=31536000" in headers["cache-control"]
    assert headers["accept-ranges"] == "bytes"
    for rng, lo, hi in [
        ("0-0", 0, 1), ("0-99", 0, 100), (f"{size - 100}-", size - 100, size), ("-4096", size - 4096, size),
        (f"{size // 2}-{size // 2 + 65535}", size // 2, size // 2 + 65536), (f"1000-{size * 2}", 1000, size),
    ]:
        status, headers, body = curl(url, "-H", f"Range: bytes={rng}")
        assert status == 206, rng
        assert body == data[lo:hi], rng
        assert headers["content-range"] == f"bytes {lo}-{hi - 1}/{size}"
        assert headers["etag"] == f'"{digest}"'
    status, headers, body = curl(url, "-H", f"Range: bytes={size}-")
    assert status == 416 and headers["content-range"] == f"bytes */{size}"
    status, _h, body = curl(url, "-H", f'If-None-Match: "{digest}"')
    assert status == 304 and body == b""
    status, _h, body = curl(url, "-H", "Range: bytes=0-9", "-H", 'If-Range: "other"')
    assert status == 200 and body == data  # a stale If-Range gets the whole file
    # The manifest is served by its digest too, and is the image digest.
    mdigest = manifest["digest"].removeprefix("sha256:")
    status, _h, body = curl(f"{base}/artifacts/sha256/{mdigest}")
    assert status == 200 and hashlib.sha256(body).hexdigest() == mdigest
    for bad in ("0" * 64, "zz", "../../etc/passwd"):
        assert curl(f"{base}/artifacts/sha256/{bad}")[0] == 404


def test_a_corrupted_blob_is_never_served_as_valid(served, vmlinuz, tmp_path):
    base, svc, manifest, config = served
    digest = manifest["artifacts"]["rootfs.squashfs"]["sha256"]
    url = f"{base}/artifacts/sha256/{digest}"
    assert curl(url, "-H", "Range: bytes=0-9")[0] == 206  # verified and cached
    path = svc.image_store().path(digest)
    flip_bit(path, 12345, 0xFF)
    for args in ((), ("-H", "Range: bytes=0-9"), ("-I",)):
        status, _h, body = curl(url, *args)
        assert status == 500, args
        assert b"corrupt" in body or args == ("-I",)
    assert any(e.kind == "image.corrupt" for e in svc.events())
    # Re-importing the same content repairs the blob in place.
    cli(config, "image", "import", str(tmp_path / "root"), "--name", "served", "--version", "1",
        "--kernel", str(vmlinuz))
    status, _h, body = curl(url)
    assert status == 200 and hashlib.sha256(body).hexdigest() == digest
