"""Build an image from its definition: base root -> files overlay -> commands
in a chroot -> hooks -> cleanup -> kernel and modules.cpio ->
rootfs.squashfs -> publish.

Everything happens in a staging directory of the store; only `publish`
makes the result visible, so a failed or killed build leaves nothing behind
that anyone has to clean by hand.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from provisioner.agent.debs import DebCache, unpack
from provisioner.errors import ProvisionerError
from provisioner.images import kernel as kernels
from provisioner.images import squashfs
from provisioner.images.definition import Definition, load_definition, source_date_epoch
from provisioner.images.manifest import ImageManifest
from provisioner.images.process import stream
from provisioner.images.progress import Progress

if TYPE_CHECKING:
    from provisioner.images.catalog import Published
    from provisioner.service import Service

SKELETON = {"dev": 0o755, "proc": 0o555, "sys": 0o555, "run": 0o755, "tmp": 0o1777, "etc": 0o755,
            "root": 0o700, "mnt": 0o755, "var": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755}
STEPS = ("definition", "base", "files", "commands", "hooks", "cleanup", "kernel", "rootfs", "publish")


class BuildError(ProvisionerError):
    """A build step failed; the message says which and why."""


def build_image(directory: Path, service: "Service", *, cache_dir: Path, progress: Progress | None = None,
                actor: str = "cli") -> "Published":
    progress = progress or Progress(len(STEPS), prefix="image: ")
    progress.step("definition")
    defn = load_definition(directory)
    sde = source_date_epoch(defn)
    source = {"kind": "definition", "sha256": defn.digest}
    progress.detail(f"{defn.ref}: definition sha256:{defn.digest[:16]}, SOURCE_DATE_EPOCH={sde}")
    service.check_publishable(defn.name, defn.version, source)

    store = service.image_store()
    with store.staging() as staging:
        work = staging.path / "work"
        root = work / "root"
        root.mkdir(parents=True)
        root.chmod(0o755)
        out = staging.path

        progress.step(f"base ({defn.method})")
        packages, kernel_src, base_artifacts = _base(defn, service, root, work, cache_dir, sde, progress)

        progress.step("files")
        n = _overlay(defn.files_dir, root)
        progress.detail(f"{n} entries from {defn.files_dir}" if n else "no files/ overlay")
        _stamp(root, defn)

        progress.step("commands")
        env = _build_env(sde)
        for i, command in enumerate(defn.commands, 1):
            progress.detail(f"({i}/{len(defn.commands)}) {command}")
            _in_chroot(root, command, env, progress)

        progress.step("hooks")
        for hook in defn.hooks:
            progress.detail(hook.name)
            stream([str(hook)], env={**env, "ROOT": str(root)}, log=progress.detail, what=f"hook {hook.name}",
                   error=BuildError, cwd=defn.path)

        progress.step("cleanup")
        if defn.method == "mmdebstrap" or (root / "var/lib/dpkg/status").exists():
            from provisioner.images.bootstrap import clean_root, installed_packages

            clean_root(root, sde)
            packages = {**installed_packages(root), **packages}

        progress.step("kernel")
        kver, modules = _kernel(defn, root, kernel_src, base_artifacts, out, work, sde, progress)

        progress.step("rootfs")
        squashfs.from_tree(root, out / "rootfs.squashfs", mtime=sde)
        progress.detail(f"rootfs.squashfs {(out / 'rootfs.squashfs').stat().st_size} bytes")
        shutil.rmtree(work, ignore_errors=True)

        progress.step("publish")
        manifest = ImageManifest(
            name=defn.name, version=defn.version, created=sde, artifacts=(), kernel_version=kver,
            packages=tuple(sorted(packages.items())), modules=modules, source=source,
            description=defn.description,
        )
        files = {a: out / a for a in ("kernel", "rootfs.squashfs", "modules.cpio")}
        published = service.publish_image(staging, manifest, files, actor=actor)
    return published


def _base(defn: Definition, service: "Service", root: Path, work: Path, cache_dir: Path, sde: int,
          progress: Progress) -> tuple[dict[str, str], Path | None, dict[str, Path]]:
    """Lay the base into root. Returns the packages it installed (unpack
    method), the tree the kernel comes from, and the base image's artifacts
    to reuse when the definition names no kernel."""
    packages: dict[str, str] = {}
    kernel_src: Path | None = None
    base_artifacts: dict[str, Path] = {}
    if defn.method == "mmdebstrap":
        from provisioner.images.bootstrap import bootstrap

        bootstrap(root, suite=defn.suite, packages=[*defn.install, defn.kernel], variant=defn.variant,
                  mirror=defn.mirror, components=list(defn.components), sde=sde, cache_dir=cache_dir / "debs",
                  log=progress.detail, sources=defn.sources)
        return packages, root, base_artifacts

    if defn.method == "image":
        row = service.resolve_image(defn.base_image)
        manifest = service.image_manifest(row)
        store = service.image_store()
        progress.detail(f"unpacking {defn.base_image} (sha256:{row.digest[:16]})")
        squashfs.unpack(store.path(manifest.artifact("rootfs.squashfs").sha256), root)
        base_artifacts = {a.name: store.path(a.sha256) for a in manifest.artifacts}
        packages.update(dict(manifest.packages))
    else:
        for d, mode in SKELETON.items():
            (root / d).mkdir(exist_ok=True)
            (root / d).chmod(mode)

    cache = DebCache(cache_dir, progress.detail)
    wanted = list(defn.install) + ([defn.kernel] if defn.kernel else [])
    cache.prefetch(wanted)
    for name in defn.install:
        deb = cache.get(name)
        progress.detail(f"unpacking {deb.package} {deb.version}")
        unpack(deb, root)
        packages[deb.package] = deb.version
    if defn.kernel:
        real = cache.resolve_kernel(defn.kernel) if defn.kernel.startswith("linux-image-") else defn.kernel
        deb = cache.get(real)
        progress.detail(f"unpacking {deb.package} {deb.version}")
        kernel_src = work / "kernel"
        # Beside the root, not in it: the image keeps only the modules that
        # modules.cpio carries, which is what keeps it small.
        unpack(deb, kernel_src)
        packages[deb.package] = deb.version
    return packages, kernel_src, base_artifacts


def _overlay(files: Path, root: Path) -> int:
    """Copy files/ over the root, owned by root whoever checked it out;
    modes as in the definition."""
    if not files.is_dir():
        return 0
    count = 0
    for dirpath, dirnames, filenames in os.walk(files):
        rel = Path(dirpath).relative_to(files)
        for name in sorted(dirnames) + sorted(filenames):
            src, dst = Path(dirpath) / name, root / rel / name
            if src.is_symlink():
                if dst.is_symlink() or dst.exists():
                    _remove(dst)
                os.symlink(os.readlink(src), dst)
                os.lchown(dst, 0, 0)
            elif src.is_dir():
                if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
                    _remove(dst)
                dst.mkdir(exist_ok=True)
                os.chown(dst, 0, 0)
                dst.chmod(src.stat().st_mode & 0o7777)
            else:
                if dst.is_symlink() or dst.is_dir():
                    _remove(dst)
                shutil.copyfile(src, dst)
                os.chown(dst, 0, 0)
                dst.chmod(src.stat().st_mode & 0o7777)
            count += 1
    return count


def _stamp(root: Path, defn: Definition) -> None:
    # What the image is, readable from inside it (shell-sourceable).
    d = root / "etc/provisioner"
    d.mkdir(parents=True, exist_ok=True)
    (d / "image").write_text(f"NAME={defn.name}\nVERSION={defn.version}\nDEFINITION=sha256:{defn.digest}\n")
    (d / "image").chmod(0o644)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _build_env(sde: int) -> dict[str, str]:
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive", "SOURCE_DATE_EPOCH": str(sde),
        "HOME": "/root", "TZ": "UTC",
    }


# Run inside a private mount namespace: the mounts vanish with it, even when
# the build is killed, and never show up in the host's mount table.
_CHROOT = """set -e
mount -t proc proc "$ROOT/proc"
mount -t sysfs sysfs "$ROOT/sys"
mount --rbind /dev "$ROOT/dev"
exec chroot "$ROOT" /bin/sh -c "$COMMAND"
"""


def _in_chroot(root: Path, command: str, env: dict[str, str], progress: Progress) -> None:
    if not (root / "bin/sh").exists() and not (root / "bin/sh").is_symlink():
        raise BuildError(f"build.commands: the root has no /bin/sh to run {command!r} with")
    for d in ("proc", "sys", "dev"):
        (root / d).mkdir(exist_ok=True)
    stream(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", _CHROOT],
           env={**env, "ROOT": str(root), "COMMAND": command}, log=progress.detail, what=f"command {command!r}",
           error=BuildError)


def _kernel(defn: Definition, root: Path, kernel_src: Path | None, base_artifacts: dict[str, Path], out: Path,
            work: Path, sde: int, progress: Progress) -> tuple[str, tuple[str, ...]]:
    if kernel_src is None:
        if not base_artifacts:
            raise BuildError("no kernel: set packages.kernel")
        # The base image's kernel and early modules, as they are.
        shutil.copyfile(base_artifacts["kernel"], out / "kernel")
        shutil.copyfile(base_artifacts["modules.cpio"], out / "modules.cpio")
        kver = kernels.bzimage_version(out / "kernel") or "unknown"
        return kver, ()
    found = kernels.find_kernel(kernel_src)
    if found is None:
        raise BuildError(f"packages.kernel {defn.kernel}: no /boot/vmlinuz-* after installing it")
    kver, path = found
    kernels.write_kernel(path, out / "kernel")
    modules = kernels.write_modules_cpio(kernel_src, kver, out / "modules.cpio", work, mtime=sde, extra=defn.modules)
    progress.detail(f"kernel {kver}, {len(modules)} early modules")
    return kver, modules
