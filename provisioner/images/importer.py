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


# Top-level names of which a root filesystem has at least one.
ROOT_MARKERS = frozenset({"etc", "usr", "bin", "sbin", "lib"})
MAX_TIME = (1 << 31) - 1  # tar2sqfs takes the image's time as a signed 32-bit number


def detect(path: Path) -> str:
    if path.is_dir():
        if (path / "oci-layout").exists() or (path / "manifest.json").exists() and (path / "blobs").is_dir():
            raise InvalidInput(
                f"{path} is an OCI layout or `docker save` directory, not a root filesystem; import it as an"
                f" archive: tar -C {path} -cf image.tar . (or `podman save --format oci-archive`)"
            )
        return "directory"
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file or directory")
    with open(path, "rb") as f:
        head = f.read(4)
    if head == SQUASHFS_MAGIC:
        return "squashfs"
    return "archive"


def check_root(names: set[str], what: str) -> None:
    """Refuse what is plainly not a root filesystem, typically a tarball of
    the folder that holds one (`tar -czf root.tgz rootfs/`)."""
    names = {n for n in names if n not in ("", ".")}
    if names & ROOT_MARKERS:
        return
    shown = ", ".join(sorted(names)[:6]) + (", ..." if len(names) > 6 else "") if names else "nothing"
    hint = ""
    if len(names) == 1:
        only = next(iter(names))
        hint = f"; if the root is the folder {only!r} inside it, archive that folder's contents: tar -C {only} -c ."
    raise InvalidInput(f"{what} does not look like a root filesystem (top level: {shown}){hint}")


def linux_kernel(path: Path, what: str) -> str:
    if path.is_dir():
        raise InvalidInput(f"{what} {path}: is a directory; name the kernel file (e.g. boot/vmlinuz-6.1.0-56-amd64)")
    if not path.is_file():
        raise InvalidInput(f"{what} {path}: no such file")
    kver = kernels.bzimage_version(path)
    if kver is None:
        raise kernels.KernelError(f"{what} {path}: not an x86 Linux kernel image (no bzImage header with a Linux"
                                  " version banner)")
    return kver


def _module_root(work: Path, kver: str, *candidates: Path) -> Path | None:
    """A root with lib/modules/KVER for write_modules_cpio, from the first
    candidate that has the modules of kver: a root, a lib/modules directory
    or lib/modules/KVER itself. The user's tree is never written to: it is
    linked when it has modules.dep and copied when depmod has to run."""
    for cand in candidates:
        for found in (kernels.modules_dir(cand, kver), cand / kver, cand):
            if found is None or found.name != kver or not found.is_dir() or not (found / "kernel").is_dir():
                continue
            root = work / "modroot"
            target = root / "lib/modules" / kver
            shutil.rmtree(root, ignore_errors=True)
            target.parent.mkdir(parents=True)
            if (found / "modules.dep").exists():
                target.symlink_to(found.resolve())
            else:
                shutil.copytree(found, target, symlinks=True)
            return root
    return None


def _same_import(service: "Service", name: str, version: str, source: dict[str, str],
                 kernel: Path | None) -> "Published | None":
    """The published image if name@version came from this very source (and
    kernel): importing it again then does nothing, even after an upgrade of
    the importer that would pack it differently."""
    from provisioner.db import images as image_rows
    from provisioner.images.catalog import Published

    row = image_rows.get(service.db, name, version)
    if row is None:
        return None
    manifest = service.image_manifest(row)
    if manifest.source.get("sha256") != source.get("sha256"):
        return None  # check_publishable refuses it
    if kernel is not None and sha256_file(kernel).sha256 != manifest.artifact("kernel").sha256:
        return None  # publish refuses it, naming both digests
    return Published(row, manifest, new=False)


def import_image(path: Path, service: "Service", *, name: str, version: str, kernel: Path | None = None,
                 modules: Path | None = None, progress: Progress | None = None,
                 actor: str = "cli") -> "Published":
    progress = progress or Progress(len(STEPS), prefix="image: ")
    check_image_name(name)
    check_version(version)
    path = Path(path)
    named_kver = linux_kernel(kernel, "--kernel") if kernel is not None else None
    if modules is not None and not modules.is_dir():
        raise InvalidInput(f"--modules {modules}: not a directory")

    progress.step("source")
    kind = detect(path)
    source: dict[str, str] = {"kind": "import", "format": kind}
    if kind != "directory":
        progress.detail(f"hashing {path.name} ({path.stat().st_size} bytes)")
        source["sha256"] = sha256_file(path).sha256
        service.check_publishable(name, version, source)
        same = _same_import(service, name, version, source, kernel)
        if same is not None:
            progress.detail(f"{name}@{version} was published from this same source")
            return same

    store = service.image_store()
    with store.staging() as staging:
        out = staging.path
        work = out / "work"
        side = work / "side"
        side.mkdir(parents=True)
        rootfs = out / "rootfs.squashfs"
        created_env = os.environ.get("SOURCE_DATE_EPOCH")

        # What the image holds besides its files (kernel, modules, package
        # list) is read first, so that a missing kernel is refused before
        # the long part.
        merged = None
        if kind == "directory":
            check_root({p.name for p in path.iterdir()}, str(path))
            created = int(created_env) if created_env else _newest_mtime(path)
            _copy_side(path, side)
        elif kind == "squashfs":
            squashfs.check(path)
            squashfs.extract(path, side, list(SIDE_PATHS))
            created = int(created_env) if created_env else int(path.stat().st_mtime)
        else:
            layers = tarmerge.open_layers(path, work / "layers")
            source["format"] = layers[0].format if layers else "tar"
            progress.detail(f"{source['format']}: {len(layers)} layer(s)")
            merged = tarmerge.merge(layers)
            check_root({p.split("/", 1)[0] for p in merged.paths()}, path.name)
            created = int(created_env) if created_env else tarmerge.created(merged)
            tarmerge.extract_subset(merged, side, tuple(p + ("" if p.endswith("status") else "/")
                                                        for p in SIDE_PATHS))
        created = max(0, min(created, MAX_TIME))

        if kernel is not None:
            kver, kpath = named_kver, kernel
            # Beside a kernel taken from a package or a root: ../lib/modules.
            beside = (kernel.resolve().parent.parent,)
        else:
            found = kernels.find_kernel(side)
            if found is None:
                raise kernels.KernelError(
                    f"{path.name} has no kernel (no /boot/vmlinuz-*), as container images usually don't;"
                    " name the kernel to boot it with: --kernel PATH (and its modules with --modules DIR"
                    " unless they are in the image or beside the kernel)"
                )
            kver, kpath = found
            beside = ()
        modroot = _module_root(work, kver, *((modules,) if modules else ()), side, *beside)
        if modroot is None:
            raise kernels.KernelError(
                f"no modules for kernel {kver} in the image{', beside the kernel' if beside else ''}"
                f"{' or in --modules' if modules else ''}; the agent needs that kernel's NIC, storage,"
                f" squashfs and overlay drivers: name them with --modules DIR (a lib/modules/{kver} directory)"
            )

        progress.step("rootfs")
        if kind == "directory":
            progress.detail(f"squashing {path} (all times set to {created})")
            squashfs.from_tree(path, rootfs, mtime=created)
            source["sha256"] = sha256_file(rootfs).sha256
            service.check_publishable(name, version, source)
        elif kind == "squashfs":
            progress.detail(f"copying {path.name}")
            shutil.copyfile(path, rootfs)
        else:
            assert merged is not None
            progress.detail(f"packing {merged.count} entries into rootfs.squashfs")
            squashfs.from_merged(merged, rootfs, mtime=None)
            shutil.rmtree(work / "layers", ignore_errors=True)
        progress.detail(f"rootfs.squashfs {rootfs.stat().st_size} bytes")

        progress.step("kernel")
        kernels.write_kernel(kpath, out / "kernel")
        chosen = kernels.write_modules_cpio(modroot, kver, out / "modules.cpio", work, mtime=created)
        progress.detail(f"kernel {kver}: {len(chosen)} early modules")

        progress.step("publish")
        from provisioner.images.bootstrap import installed_packages

        packages = installed_packages(side) if (side / "var/lib/dpkg/status").is_file() else {}
        manifest = ImageManifest(
            name=name, version=version, created=created, artifacts=(), kernel_version=kver,
            packages=tuple(sorted(packages.items())), modules=chosen, source=source,
        )
        shutil.rmtree(work, ignore_errors=True)
        files = {a: out / a for a in ("kernel", "rootfs.squashfs", "modules.cpio")}
        return service.publish_image(staging, manifest, files, actor=actor)


def _newest_mtime(root: Path) -> int:
    newest = 0  # clamped by the caller to what squashfs can hold
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
