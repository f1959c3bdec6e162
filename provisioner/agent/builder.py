"""Build the discovery agent: kernel, agent.cpio, modules.cpio, manifest.json.

agent.cpio is kernel-agnostic (busybox, util-linux, e2fsprogs, kmod, their
libraries, the agent scripts); modules.cpio carries the early-boot drivers of
one kernel under /lib/modules/KVER. The kernel unpacks concatenated initrds
into one rootfs, so iPXE can pair the same agent.cpio with any modules.cpio.
"""

from __future__ import annotations

from provisioner.errors import ProvisionerError

import fcntl
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

from provisioner.agent import cpio, elf, kmods
from provisioner.agent.debs import Deb, DebCache, PackageError, deb_fields, unpack

Log = Callable[[str], None]

# Executables taken from each package, as paths inside the package. Symlinks
# (mkfs.ext4 -> mke2fs, modprobe -> /bin/kmod) are listed so they are kept.
TOOLS: dict[str, tuple[str, ...]] = {
    "busybox-static": ("bin/busybox",),
    "util-linux": ("bin/lsblk", "sbin/blkid", "sbin/wipefs", "sbin/blockdev"),
    "fdisk": ("sbin/sfdisk",),
    "e2fsprogs": (
        "sbin/mke2fs", "sbin/mkfs.ext4", "sbin/e2fsck", "sbin/fsck.ext4",
        "sbin/tune2fs", "sbin/e2label", "sbin/resize2fs", "sbin/dumpe2fs",
    ),
    "kmod": (
        "bin/kmod", "bin/lsmod", "sbin/modprobe", "sbin/insmod", "sbin/rmmod",
        "sbin/modinfo", "sbin/depmod",
    ),
}

# Libraries the tools above link against in Debian 12. Listed so a normal
# build fetches them in one go; should a new package version need more,
# missing sonames are looked for in the Depends of what was fetched.
LIBRARIES = (
    "libc6", "libblkid1", "libmount1", "libsmartcols1", "libudev1", "libselinux1",
    "libpcre2-8-0", "libuuid1", "libfdisk1", "libext2fs2", "libcom-err2",
    "libzstd1", "liblzma5", "libssl3", "libreadline8", "libtinfo6",
)

KERNEL_META = "linux-image-amd64"

# Files of this package installed into the initramfs: (resource, path, mode).
AGENT_FILES = (
    ("init", "init", 0o755),
    ("agent-lib.sh", "usr/lib/provisioner/agent-lib.sh", 0o644),
    ("udhcpc.script", "usr/share/udhcpc/default.script", 0o755),
)

SKELETON = ("dev", "proc", "sys", "run", "tmp", "etc", "root", "mnt", "var", "usr/lib/provisioner")

# Busybox applets never linked: /init is ours, linuxrc is for initrd images.
SKIP_APPLETS = frozenset({"init", "linuxrc"})

ARTIFACTS = ("kernel", "agent.cpio", "modules.cpio")


class BuildError(ProvisionerError):
    """The agent build failed; the message is one line saying why."""


@dataclass(frozen=True)
class Artifact:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class AgentManifest:
    kernel_version: str
    artifacts: tuple[Artifact, ...]
    compression: str
    packages: tuple[tuple[str, str], ...]  # (package, version), sorted
    modules: tuple[str, ...]
    source_date_epoch: int
    # Digest of what the build is made of: this package's code and files and
    # the Debian package versions. Equal inputs mean equal artifacts, so a
    # build with the same inputs is skipped.
    inputs: str = ""

    def artifact(self, name: str) -> Artifact:
        for a in self.artifacts:
            if a.name == name:
                return a
        raise KeyError(name)

    def to_json(self) -> dict:
        return {
            "kernel_version": self.kernel_version,
            "artifacts": {a.name: {"size": a.size, "sha256": a.sha256} for a in self.artifacts},
            "compression": self.compression,
            "packages": dict(self.packages),
            "modules": list(self.modules),
            "source_date_epoch": self.source_date_epoch,
            "inputs": self.inputs,
        }

    @classmethod
    def from_json(cls, doc: dict) -> "AgentManifest":
        return cls(
            kernel_version=doc["kernel_version"],
            # In build order (kernel first), whatever order the JSON keys have.
            artifacts=tuple(
                Artifact(n, a["size"], a["sha256"])
                for n, a in sorted(
                    doc["artifacts"].items(),
                    key=lambda item: (ARTIFACTS.index(item[0]) if item[0] in ARTIFACTS else len(ARTIFACTS), item[0]),
                )
            ),
            compression=doc["compression"],
            packages=tuple(sorted(doc["packages"].items())),
            modules=tuple(doc["modules"]),
            source_date_epoch=doc["source_date_epoch"],
            inputs=doc.get("inputs", ""),
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "0")
    try:
        return int(value)
    except ValueError:
        raise BuildError(f"SOURCE_DATE_EPOCH={value!r} is not an integer") from None


def _fetch_userland(cache: DebCache, sysroot: Path, log: Log) -> dict[str, Deb]:
    debs: dict[str, Deb] = {}
    cache.prefetch([*TOOLS, *LIBRARIES])
    for name in (*TOOLS, *LIBRARIES):
        debs[name] = cache.get(name)
        unpack(debs[name], sysroot)
    return debs


def _more_libraries(cache: DebCache, debs: dict[str, Deb], sysroot: Path, log: Log) -> bool:
    """Fetch library packages named in the Depends of what we have; True if
    anything new came in (the caller then retries the ELF copy)."""
    wanted: set[str] = set()
    for deb in debs.values():
        for alt in deb_fields(deb.path).get("Depends", "").split(","):
            name = alt.split("|")[0].split("(")[0].split(":")[0].strip()
            if name and name not in debs and (name.startswith("lib") or name.startswith("zlib")):
                wanted.add(name)
    for name in sorted(wanted):
        log(f"agent: fetching {name} for a missing library")
        try:
            debs[name] = cache.get(name)
        except PackageError as exc:
            log(f"agent: {exc}")
            continue
        unpack(debs[name], sysroot)
    return bool(wanted)


def _install_userland(cache: DebCache, debs: dict[str, Deb], sysroot: Path, root: Path, log: Log) -> None:
    paths = [p for tools in TOOLS.values() for p in tools]
    for _round in range(4):
        try:
            elf.copy_with_deps(sysroot, paths, root)
            break
        except elf.ElfError as exc:
            if "libraries not found" not in str(exc) or not _more_libraries(cache, debs, sysroot, log):
                raise BuildError(str(exc)) from None
    else:
        raise BuildError("libraries still missing after fetching the tools' dependencies")

    # Busybox applets, except where a real tool of the same name is shipped:
    # util-linux's blkid and kmod's modprobe understand more than busybox's.
    real = {Path(p).name for p in paths}
    listing = subprocess.run(
        [str(sysroot / "bin/busybox"), "--list-full"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in sorted(listing):
        name = Path(applet).name
        if name in real or name in SKIP_APPLETS or name == "busybox":
            continue
        link = root / applet
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink("/bin/busybox", link)


def _install_agent_files(root: Path) -> None:
    files = resources.files("provisioner.agent") / "files"
    for resource, rel, mode in AGENT_FILES:
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((files / resource).read_bytes())
        dest.chmod(mode)


def build_agent_tree(cache: DebCache, work: Path, log: Log) -> tuple[Path, dict[str, Deb]]:
    sysroot, root = work / "sysroot", work / "agent"
    sysroot.mkdir()
    root.mkdir()
    debs = _fetch_userland(cache, sysroot, log)
    for d in SKELETON:
        (root / d).mkdir(parents=True, exist_ok=True)
    _install_userland(cache, debs, sysroot, root, log)
    _install_agent_files(root)
    return root, debs


def _agent_entries(root: Path) -> list[cpio.Entry]:
    # The kernel opens /dev/console for init before anything can mount
    # devtmpfs, so the node has to be in the archive itself.
    console = cpio.Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    return [*cpio.entries_from_tree(root), console]


def build_inputs(cache: DebCache, kernel_pkg: str, sde: int, method: str) -> str:
    """What the artifacts depend on, as one digest: the code and files of
    provisioner.agent, the candidate versions of every package it takes, the
    timestamp and the compressor."""
    h = hashlib.sha256()
    here = resources.files("provisioner.agent")
    sources = sorted(
        [f"{p.name}" for p in here.iterdir() if p.name.endswith(".py")]
        + [f"files/{p.name}" for p in (here / "files").iterdir() if p.is_file()]
    )
    for rel in sources:
        h.update(rel.encode() + b"\0" + (here / rel).read_bytes() + b"\0")
    cache.prefetch([*TOOLS, *LIBRARIES, kernel_pkg])
    for package in sorted({*TOOLS, *LIBRARIES, kernel_pkg}):
        record = cache.candidate(package)
        version = record["Version"] if record else getattr(cache.newest_cached(package), "version", "?")
        h.update(f"{package}={version}\n".encode())
    h.update(f"sde={sde} compression={method}\n".encode())
    return h.hexdigest()


def up_to_date(out_dir: Path, inputs: str) -> AgentManifest | None:
    """The manifest in out_dir if it was built from `inputs` and its
    artifacts are there with the recorded digests."""
    try:
        manifest = read_manifest(out_dir)
    except (OSError, ValueError, KeyError):
        return None
    if manifest.inputs != inputs:
        return None
    for a in manifest.artifacts:
        path = out_dir / a.name
        if not path.is_file() or path.stat().st_size != a.size or _sha256(path) != a.sha256:
            return None
    return manifest


def _publish(staging: Path, out_dir: Path) -> None:
    """Move finished artifacts into place, manifest last: each rename is
    atomic, and a reader that trusts manifest.json sees a complete set."""
    for name in (*ARTIFACTS, "manifest.json"):
        os.replace(staging / name, out_dir / name)


# Host tools the build runs; checked first so a missing one is one clear line.
HOST_TOOLS = ("apt-get", "apt-cache", "dpkg-deb", "dpkg", "depmod")


def _check_host_tools() -> None:
    missing = [t for t in HOST_TOOLS if not shutil.which(t) and not Path("/sbin", t).exists()]
    if missing:
        raise BuildError("the agent build needs these tools (Debian: apt, dpkg, kmod): " + ", ".join(missing))


def build_agent(
    out_dir: Path, cache_dir: Path, log: Callable[[str], None] = print, *, force: bool = False
) -> AgentManifest:
    """Build kernel, agent.cpio and modules.cpio into out_dir from Debian
    packages (cached under cache_dir/debs) and write out_dir/manifest.json.

    Raises BuildError or PackageError with a one-line reason; out_dir keeps
    its previous artifacts when a build fails or is killed. When out_dir
    already holds a build of the same inputs (build_inputs), nothing is
    rebuilt unless `force`."""
    _check_host_tools()
    try:
        return _build(Path(out_dir), Path(cache_dir), log, force)
    except subprocess.CalledProcessError as exc:
        cmd = " ".join(str(c) for c in exc.cmd) if isinstance(exc.cmd, list) else str(exc.cmd)
        raise BuildError(f"{cmd} failed with status {exc.returncode}") from exc


def _build(out_dir: Path, cache_dir: Path, log: Log, force: bool = False) -> AgentManifest:
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    sde = _source_date_epoch()
    method = cpio.compressor()

    with open(out_dir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build per output directory
        for stale in out_dir.glob(".agent-tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed build
        for stale in cache_dir.glob(".agent-work-*"):
            shutil.rmtree(stale, ignore_errors=True)

        cache = DebCache(cache_dir, log)
        kernel_pkg = cache.resolve_kernel(KERNEL_META)
        inputs = build_inputs(cache, kernel_pkg, sde, method)
        current = None if force else up_to_date(out_dir, inputs)
        if current is not None:
            log(f"agent: {out_dir} is up to date (kernel {current.kernel_version}, inputs {inputs[:16]})")
            return current
        kernel_deb = cache.get(kernel_pkg)

        staging = Path(tempfile.mkdtemp(prefix=".agent-tmp-", dir=out_dir))
        try:
            with tempfile.TemporaryDirectory(prefix=".agent-work-", dir=cache_dir) as tmp:
                work = Path(tmp)
                log(f"agent: unpacking {kernel_deb.path.name}")
                kroot = work / "kernel"
                unpack(kernel_deb, kroot)
                kvers = sorted(p.name for p in (kroot / "lib/modules").iterdir())
                if len(kvers) != 1:
                    raise BuildError(f"{kernel_pkg}: expected one module tree, found {kvers}")
                kver = kvers[0]
                shutil.copyfile(kroot / "boot" / f"vmlinuz-{kver}", staging / "kernel")

                log("agent: assembling agent.cpio")
                agent_root, debs = build_agent_tree(cache, work, log)
                cpio.write_archive(_agent_entries(agent_root), staging / "agent.cpio", sde, method)

                log(f"agent: selecting modules of {kver}")
                mod_root = work / "modules"
                chosen = kmods.build_module_tree(kroot, kver, kmods.EARLY_MODULES, mod_root)
                if chosen.builtin:
                    log("agent: built into the kernel: " + ", ".join(chosen.builtin))
                if chosen.absent:
                    log("agent: not in this kernel: " + ", ".join(chosen.absent))
                cpio.write_archive(cpio.entries_from_tree(mod_root), staging / "modules.cpio", sde, method)

            packages = {d.package: d.version for d in debs.values()}
            packages[kernel_deb.package] = kernel_deb.version
            manifest = AgentManifest(
                kernel_version=kver,
                artifacts=tuple(
                    Artifact(n, (staging / n).stat().st_size, _sha256(staging / n)) for n in ARTIFACTS
                ),
                compression=method,
                packages=tuple(sorted(packages.items())),
                modules=chosen.modules,
                source_date_epoch=sde,
                inputs=inputs,
            )
            (staging / "manifest.json").write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n")
            _publish(staging, out_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    for a in manifest.artifacts:
        log(f"agent: {a.name} {a.size} bytes sha256 {a.sha256[:16]}")
    return manifest


def read_manifest(out_dir: Path) -> AgentManifest:
    return AgentManifest.from_json(json.loads((Path(out_dir) / "manifest.json").read_text()))
