"""Import what users already build: a root filesystem tarball (`docker
export`, `tar -C root -c .`), an OCI image archive or `docker save` output
(layers applied in order, whiteouts honoured), a directory, or a prebuilt
squashfs. Each becomes rootfs.squashfs + kernel + modules.cpio, published
like a built image.

An image has to boot, so one without a kernel is refused unless --kernel
names one. The kernel's early modules come from the image's own
lib/modules when it has them for that kernel.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from provisioner.core.imageref import check_image_name, check_version
from provisioner.errors import InvalidInput
from provisioner.images import kernel as kernels
from provisioner.images import squashfs, tarmerge
from provisioner.images.manifest import ImageManifest
from provisioner.images.progress import Progress
from provisioner.images.store import sha256_file

if TYPE_CHECKING:
    from provisioner.images.catalog import Published
    from provisioner.service import Service

STEPS = ("source", "rootfs", "kernel", "publish")
# What the importer needs to see of a root besides the squashfs itself.
SIDE_PATHS = ("boot", "lib/modules", "usr/lib/modules", "var/lib/dpkg/status")
SQUASHFS_MAGIC = b"hsqs"


def detect(path: Path) -> str:
    if path.is_dir():
        return "directory"
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file or directory")
    with open(path, "rb") as f:
        head = f.read(4)
    if head == SQUASHFS_MAGIC:
        return "squashfs"
    return "archive"


def import_image(path: Path, service: "Service", *, name: str, version: str, kernel: Path | None = None,
                 progress: Progress | None = None, actor: str = "cli") -> "Published":
    progress = progress or Progress(len(STEPS), prefix="image: ")
    check_image_name(name)
    check_version(version)
    path = Path(path)
    if kernel is not None and not kernel.is_file():
        raise InvalidInput(f"--kernel {kernel}: no such file")

    progress.step("source")
    kind = detect(path)
    source: dict[str, str] = {"kind": "import", "format": kind}
    if kind != "directory":
        progress.detail(f"hashing {path.name} ({path.stat().st_size} bytes)")
        source["sha256"] = sha256_file(path).sha256
        service.check_publishable(name, version, source)

    store = service.image_store()
    with store.staging() as staging:
        out = staging.path
        work = out / "work"
        side = work / "side"
        side.mkdir(parents=True)
        rootfs = out / "rootfs.squashfs"
        created_env = os.environ.get("SOURCE_DATE_EPOCH")

        progress.step("rootfs")
        if kind == "directory":
            created = int(created_env) if created_env else _newest_mtime(path)
            progress.detail(f"squashing {path} (all times set to {created})")
            squashfs.from_tree(path, rootfs, mtime=created)
            _copy_side(path, side)
            source["sha256"] = sha256_file(rootfs).sha256
            service.check_publishable(name, version, source)
        elif kind == "squashfs":
            squashfs.check(path)
            progress.detail(f"copying {path.name}")
            shutil.copyfile(path, rootfs)
            squashfs.extract(path, side, list(SIDE_PATHS))
            created = int(created_env) if created_env else int(path.stat().st_mtime)
        else:
            layers = tarmerge.open_layers(path, work / "layers")
            source["format"] = layers[0].format if layers else "tar"
            progress.detail(f"{source['format']}: {len(layers)} layer(s)")
            merged = tarmerge.merge(layers)
            created = int(created_env) if created_env else tarmerge.created(merged)
            tarmerge.extract_subset(merged, side, tuple(p + ("" if p.endswith("status") else "/")
                                                        for p in SIDE_PATHS))
            progress.detail(f"packing {merged.count} entries into rootfs.squashfs")
            squashfs.from_merged(merged, rootfs, mtime=None)
            shutil.rmtree(work / "layers", ignore_errors=True)
        progress.detail(f"rootfs.squashfs {rootfs.stat().st_size} bytes")

        progress.step("kernel")
        if kernel is not None:
            kver = kernels.bzimage_version(kernel)
            if kver is None:
                raise kernels.KernelError(f"--kernel {kernel}: not an x86 Linux kernel image (no bzImage header)")
            kernels.write_kernel(kernel, out / "kernel")
        else:
            found = kernels.find_kernel(side)
            if found is None:
                raise kernels.KernelError(
                    f"{path.name} has no kernel (no /boot/vmlinuz-*), as container images usually don't;"
                    " name the kernel to boot it with: --kernel PATH"
                )
            kver, kpath = found
            kernels.write_kernel(kpath, out / "kernel")
        modules = kernels.write_modules_cpio(side, kver, out / "modules.cpio", work, mtime=created)
        progress.detail(f"kernel {kver}: " + (f"{len(modules)} early modules from the image" if modules else
                                               "the image has no modules for it; modules.cpio is empty"))

        progress.step("publish")
        from provisioner.images.bootstrap import installed_packages

        packages = installed_packages(side) if (side / "var/lib/dpkg/status").is_file() else {}
        manifest = ImageManifest(
            name=name, version=version, created=created, artifacts=(), kernel_version=kver,
            packages=tuple(sorted(packages.items())), modules=modules, source=source,
        )
        shutil.rmtree(work, ignore_errors=True)
        files = {a: out / a for a in ("kernel", "rootfs.squashfs", "modules.cpio")}
        return service.publish_image(staging, manifest, files, actor=actor)


def _newest_mtime(root: Path) -> int:
    newest = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            try:
                newest = max(newest, int(os.lstat(os.path.join(dirpath, n)).st_mtime))
            except FileNotFoundError:
                pass
    return newest


def _copy_side(root: Path, side: Path) -> None:
    # Copies, never the user's tree: depmod may write modules.dep into it.
    for rel in SIDE_PATHS:
        src = root / rel
        if src.is_symlink() or not src.exists():
            continue
        dst = side / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=True)
        else:
            shutil.copy2(src, dst)
