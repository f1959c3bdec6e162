"""Make a Debian root with mmdebstrap, and strip a root of what an image must not carry.

Every host boots the same image, so a root holds no identity of the machine
it was built on (hostname, resolv.conf, machine-id, SSH host keys) and no
leftovers that make two builds of the same package versions differ (logs,
apt caches, *-old backups, compiled Python). Times are not our concern here:
mksquashfs gives every file the same time.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from provisioner.errors import ProvisionerError
from provisioner.images.process import stream

Log = Callable[[str], None]

ETC_APT = Path("/etc/apt")


class BootstrapError(ProvisionerError):
    """Making or cleaning a root failed; the message is one line saying why."""


# --- the host's apt sources --------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One `deb` entry of an apt sources file (deb-src entries are dropped)."""

    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]


def parse_sources_list(text: str) -> list[Source]:
    """One-line format: `deb [opt=val ...] URI SUITE [COMPONENT ...]`."""
    sources = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        line = re.sub(r"\[[^\]]*\]", " ", line)  # options: arch=, signed-by=, ...
        fields = line.split()
        if len(fields) >= 3 and fields[0] == "deb":
            sources.append(Source(fields[1], (fields[2],), tuple(fields[3:])))
    return sources


def parse_deb822(text: str) -> list[Source]:
    """deb822 format (`*.sources`): stanzas of Types/URIs/Suites/Components."""
    sources = []
    for stanza in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1].isspace() and key:  # continuation (e.g. an inline Signed-By key)
                fields[key] += "\n" + line
                continue
            key, sep, value = line.partition(":")
            if not sep:
                key = None
                continue
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        suites, components = tuple(fields.get("suites", "").split()), tuple(fields.get("components", "").split())
        sources.extend(Source(uri, suites, components) for uri in fields.get("uris", "").split())
    return sources


def apt_sources(etc_apt: Path = ETC_APT) -> list[Source]:
    """The `deb` entries apt reads, in its order: sources.list, then
    sources.list.d/*.list and *.sources by name (other names apt ignores)."""
    files = [etc_apt / "sources.list"]
    parts = etc_apt / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    sources: list[Source] = []
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except (FileNotFoundError, IsADirectoryError):
            continue
        sources += parse_deb822(text) if path.suffix == ".sources" else parse_sources_list(text)
    return sources


def host_mirror(suite: str, etc_apt: Path = ETC_APT) -> str:
    """The URI of the first `deb` source of `suite` with component main.

    A host on another release lists other suites; any Debian archive serves
    every suite, so then the first main source whose URI ends in /debian
    (deb.debian.org/debian, a local mirror or an apt-cacher-ng path) is
    taken. -security, -updates and third-party archives never match."""
    sources = [s for s in apt_sources(etc_apt) if "main" in s.components]
    for s in sources:
        if suite in s.suites:
            return s.uri
    for s in sources:
        if s.uri.rstrip("/").endswith("/debian"):
            return s.uri
    raise BootstrapError(
        f"no Debian mirror for {suite} main in {etc_apt}/sources.list or sources.list.d; "
        "set [base] mirror in the image definition"
    )


# --- mmdebstrap --------------------------------------------------------------

# Names apt takes in --include: pkg, pkg=version, pkg/suite. Anything else
# (commas, spaces, apt patterns) would be split or read as a pattern.
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]*(:[a-z0-9-]+)?([=/][A-Za-z0-9.+~:-]+)?")


def _cache_hooks(cache_dir: Path) -> list[str]:
    """Hooks that keep the .debs between runs in cache_dir, flat and named
    as apt names them (the agent's DebCache directory can be shared).

    Cached files are copied in before the download step; apt checks each
    against the index hashes and downloads only what is missing or stale.
    --skip=essential/unlink keeps the essential set's .debs in the root until
    the customize hook copies new files back out; mmdebstrap's cleanup then
    empties /var/cache/apt/archives. A file is renamed into the cache only
    once complete, so a killed build leaves no truncated .deb there."""
    cache = shlex.quote(str(cache_dir))
    copy_in = (
        'mkdir -p "$1/var/cache/apt/archives/partial" && '
        f"find {cache} -maxdepth 1 -name '*.deb' -exec cp -t \"$1/var/cache/apt/archives/\" {{}} +"
    )
    copy_out = (
        'for f in "$1"/var/cache/apt/archives/*.deb; do '
        '[ -f "$f" ] || continue; b=$(basename "$f"); '
        f'[ -e {cache}/"$b" ] || {{ cp "$f" {cache}/".$b.tmp" && mv {cache}/".$b.tmp" {cache}/"$b"; }}; '
        "done"
    )
    return ["--skip=essential/unlink", f"--setup-hook={copy_in}", f"--customize-hook={copy_out}"]


def mmdebstrap_command(
    dest: Path,
    *,
    suite: str,
    packages: Sequence[str],
    variant: str,
    mirror: str,
    components: Sequence[str],
    cache_dir: Path | None,
    sources: Sequence[str] = (),
) -> list[str]:
    bad = [p for p in packages if not _PACKAGE.fullmatch(p)]
    if bad:
        raise BootstrapError(f"not a package name: {', '.join(map(repr, bad))}")
    # --verbose: apt's and dpkg's lines too, so that the minute spent
    # installing shows progress instead of one silent "I:" line.
    cmd = ["mmdebstrap", "--mode=root", "--verbose", f"--variant={variant}", f"--components={','.join(components)}"]
    if packages:
        cmd.append(f"--include={','.join(packages)}")
    if cache_dir is not None:
        cmd += _cache_hooks(cache_dir)
    # mmdebstrap copies the build host's hostname and resolv.conf in so that
    # maintainer scripts can resolve names; neither belongs in the image. A
    # resolv.conf symlink was put there by a package (systemd-resolved) and
    # stays.
    cmd.append(
        '--customize-hook=rm -f "$1/etc/hostname"; '
        '[ -L "$1/etc/resolv.conf" ] || rm -f "$1/etc/resolv.conf"'
    )
    # Further one-line sources (bookworm-updates, -security) go after the
    # main mirror; mmdebstrap writes them all into the root's sources.list.
    cmd += [suite, str(dest), mirror, *sources]
    return cmd


def bootstrap(
    dest: Path,
    *,
    suite: str,
    packages: list[str],
    variant: str = "apt",
    mirror: str | None = None,
    components: Sequence[str] = ("main",),
    sde: int,
    cache_dir: Path | None = None,
    log: Log = print,
    etc_apt: Path = ETC_APT,
    sources: Sequence[str] = (),
) -> None:
    """Install a Debian root into `dest` (empty or absent) with mmdebstrap.

    The mirror defaults to the build host's (host_mirror). mmdebstrap's
    output goes to `log` line by line as it comes. With SOURCE_DATE_EPOCH
    set, the same packages give the same tree up to clean_root's list. On
    failure `dest` is left as mmdebstrap left it, for the caller to remove."""
    dest = Path(dest)
    if shutil.which("mmdebstrap") is None:
        raise BootstrapError("mmdebstrap is not installed (Debian: apt-get install mmdebstrap)")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BootstrapError(f"{dest}: not an empty directory")
    dest.mkdir(parents=True, exist_ok=True)
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    cmd = mmdebstrap_command(
        dest,
        suite=suite,
        packages=packages,
        variant=variant,
        mirror=mirror or host_mirror(suite, etc_apt),
        components=components,
        cache_dir=cache_dir,
        sources=sources,
    )
    # Maintainer scripts inherit this environment: a fixed locale, zone and
    # umask keep what they write independent of the build host's settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG"))}
    env.update(SOURCE_DATE_EPOCH=str(int(sde)), LC_ALL="C.UTF-8", TZ="UTC")
    # The agent is every image's initrd. Without this the kernel's postinst
    # hook and then initramfs-tools' trigger each build one nobody boots:
    # two thirds of a debian-12 bootstrap's time.
    env["INITRD"] = "No"
    stream(cmd, env=env, log=log, what=f"mmdebstrap {suite}", error=BootstrapError)


# --- what an image must not carry ---------------------------------------------

# Removed outright (globs relative to the root). Each is per machine, per
# build, or a cache that is only ever valid for the build host's clock.
REMOVE = (
    "etc/ssh/ssh_host_*",  # host keys: every host would share them (sshd-keygen makes a host's own)
    "etc/hostname",  # the build host's name; a host gets its own from DHCP, cloud-init or its config layer
    "etc/passwd-", "etc/group-", "etc/shadow-", "etc/gshadow-", "etc/subuid-", "etc/subgid-",
    "var/lib/dpkg/*-old",
    "var/cache/debconf/*-old",
    "var/cache/apt/*.bin",
    "var/cache/apt/archives/*.deb",
    "var/cache/apt/archives/partial/*",
    "var/lib/apt/lists/*",
    "var/lib/apt/lists/partial/*",
    "var/cache/ldconfig/aux-cache",  # records the build's inode numbers and times
    "var/lib/systemd/random-seed",  # a shared seed is no seed
    "var/lib/systemd/credential.secret",  # the host key of systemd-creds
    "var/lib/cloud/*",  # cloud-init's instance state: it would think the build host's run was the host's
    "var/lib/dhcp/*.leases",
    # The agent boots the image's kernel with its own initrd: one in the root
    # is tens of MB nobody reads (bootstrap keeps initramfs-tools from making
    # one; a build command installing a kernel might).
    "boot/initrd.img-*",
    "tmp/*",
    "var/tmp/*",
    "run/*",  # a tmpfs at boot; what build commands left there only differs between builds
)

# Left (empty) by the globs above: apt's own directories, owned by _apt.
KEEP = frozenset({"var/lib/apt/lists/partial"})

# Emptied of files, keeping the directories (their modes and owners are set
# by packages, e.g. /var/log/journal for systemd-journal).
EMPTY = ("var/log",)

RESOLVED_STUB = "../run/systemd/resolve/stub-resolv.conf"
RESOLVED = ("usr/lib/systemd/systemd-resolved", "lib/systemd/systemd-resolved")


def _real_dir(root: Path, rel: str) -> Path | None:
    """root/rel if it is a directory reached without following a symlink.

    The root's symlinks point into the root once booted, but here an
    absolute one (var/tmp -> /tmp) would lead into the build host."""
    path = root
    for part in Path(rel).parts:
        path = path / part
        if path.is_symlink() or not path.is_dir():
            return None
    return path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _remove_entries(root: Path, pattern: str) -> None:
    parent, _, name = pattern.rpartition("/")
    directory = _real_dir(root, parent)
    if directory is None:
        return
    for entry in sorted(directory.iterdir()):
        if Path(entry.name).match(name) and f"{parent}/{entry.name}" not in KEEP:
            _remove(entry)


def _empty_tree(directory: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(directory):  # never follows symlinks
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            os.unlink(os.path.join(dirpath, name))


def _pycache_dirs(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, _files in os.walk(root):
        if "__pycache__" in dirnames:
            dirnames.remove("__pycache__")
            yield Path(dirpath, "__pycache__")


def _clamp_shadow(root: Path, sde: int) -> None:
    """Field 3 of /etc/shadow is the day of the last password change, written
    by useradd and friends from the clock; clamp it to SOURCE_DATE_EPOCH's
    day (0 and empty mean something else and are kept)."""
    shadow = root / "etc/shadow"
    if shadow.is_symlink() or not shadow.is_file():
        return
    day = sde // 86400
    lines = []
    for line in shadow.read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[2].isdigit() and int(fields[2]) > day:
            fields[2] = str(day)
        lines.append(":".join(fields))
    stat = shadow.stat()
    shadow.write_text("".join(line + "\n" for line in lines))
    os.chmod(shadow, stat.st_mode & 0o7777)


def clean_root(root: Path, sde: int) -> None:
    """Make `root` fit to be every host's image: no build host identity, no
    per-build state, nothing that differs between two builds of the same
    packages. Runs on the host, after the image's commands and hooks; nothing
    may be mounted in the root."""
    root = Path(root)
    if not (root / "etc").is_dir() or (root / "etc").is_symlink():
        raise BootstrapError(f"{root}: not a root filesystem (no etc/)")
    for pattern in REMOVE:
        _remove_entries(root, pattern)
    for rel in EMPTY:
        directory = _real_dir(root, rel)
        if directory is not None:
            _empty_tree(directory)

    # Compiled Python is dropped rather than kept: a .pyc records its
    # source's mtime, and mksquashfs gives every file one time, so Python
    # would find each stale and compile again at runtime anyway; and marshal
    # output is not promised to be byte-identical between runs. cloud-init's
    # first import writes fresh ones to the host's tmpfs.
    for pycache in list(_pycache_dirs(root)):
        shutil.rmtree(pycache)

    # Present and empty: systemd then makes one at boot (and treats the boot
    # as a first boot); a host that must keep one gets it from its config
    # layer. D-Bus reads the same file through the symlink Debian uses.
    machine_id = root / "etc/machine-id"
    if machine_id.is_symlink():
        machine_id.unlink()
    machine_id.write_bytes(b"")
    machine_id.chmod(0o444)
    dbus_id = root / "var/lib/dbus/machine-id"
    if _real_dir(root, "var/lib/dbus") is not None:
        dbus_id.unlink(missing_ok=True)
        dbus_id.symlink_to("/etc/machine-id")

    # DNS servers are runtime state. With systemd-resolved installed the
    # file is its stub, as its postinst links it (put back here in case a
    # build step copied the host's file in to resolve names); otherwise the
    # image's DHCP client writes it at boot, or its files/ overlay ships one.
    resolv = root / "etc/resolv.conf"
    if any((root / p).exists() for p in RESOLVED):
        resolv.unlink(missing_ok=True)
        resolv.symlink_to(RESOLVED_STUB)

    _clamp_shadow(root, sde)


# --- what is installed -----------------------------------------------------------


def parse_dpkg_status(text: str) -> dict[str, str]:
    """package -> version for each `Status: install ok installed` stanza."""
    packages: dict[str, str] = {}
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1].isspace():
                continue
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip().lower()] = value.strip()
        if fields.get("status") == "install ok installed" and "package" in fields and "version" in fields:
            packages[fields["package"]] = fields["version"]
    return dict(sorted(packages.items()))


def installed_packages(root: Path) -> dict[str, str]:
    """package -> version of what dpkg has installed in `root`, sorted by name."""
    status = Path(root) / "var/lib/dpkg/status"
    try:
        return parse_dpkg_status(status.read_text(errors="replace"))
    except FileNotFoundError:
        raise BootstrapError(f"{status}: no dpkg status (not a Debian root)") from None
